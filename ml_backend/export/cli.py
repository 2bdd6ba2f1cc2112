"""``hali export``: a project's labels in slide coordinates, as CSV, QuPath GeoJSON or COCO."""

from __future__ import annotations

import argparse
from pathlib import Path

from adapters.label_studio import LabelStudioGateway
from adapters.settings import SharedSettings
from ml_backend.errors import BackendError
from ml_backend.export.run import FORMATS, export_project


def add_commands(sub: argparse._SubParsersAction) -> None:
    e = sub.add_parser("export", help="export a project's labelled cells in slide coordinates (csv, geojson, coco)")
    e.add_argument("--project", required=True, help="Label Studio project id or title")
    e.add_argument("--format", choices=FORMATS, default="csv")
    e.add_argument("--out", type=Path, required=True,
                   help="output file (csv, coco) or folder (geojson: one <slide id>.geojson per slide)")
    e.set_defaults(func=_export)


def _export(args: argparse.Namespace) -> int:
    settings = SharedSettings()
    gateway = LabelStudioGateway.connect(settings.ls_url, settings.ls_api_key.get_secret_value())
    report = export_project(gateway, project_id_of(gateway, args.project), args.format, args.out)
    print(f"project {report.project_id}: {report.n_cells} labelled cells from {report.n_tasks} tasks -> "
          + ", ".join(str(f) for f in report.files[:3]) + (" ..." if len(report.files) > 3 else ""))
    return 0


def project_id_of(gateway: LabelStudioGateway, project: str) -> int:
    """The id of the project named by ``project`` (an id, or an exact title)."""
    if project.isdigit():
        return int(project)
    found = gateway.find_project(project)
    if found is None:
        raise BackendError(f"no Label Studio project titled {project!r}; pass its id or exact title")
    return int(found.id)
