"""``export_project``: a project's labels from Label Studio to CSV, QuPath GeoJSON or COCO files."""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from adapters.atomic import write_atomic
from adapters.label_studio import LabelStudioGateway
from label_config import NOT_NUCLEUS_LABEL, parse_classes
from ml_backend.export.formats import label_colours, to_coco, to_csv, to_geojson
from ml_backend.export.rows import cell_rows

log = logging.getLogger(__name__)
ExportFormat = Literal["csv", "geojson", "coco"]
FORMATS: tuple[ExportFormat, ...] = ("csv", "geojson", "coco")


@dataclass(frozen=True)
class ExportReport:
    project_id: int
    n_tasks: int
    n_cells: int
    files: tuple[Path, ...]


def export_project(gateway: LabelStudioGateway, project_id: int, fmt: ExportFormat, out: Path,
                   excluded: tuple[str, ...] = (NOT_NUCLEUS_LABEL,)) -> ExportReport:
    """Write the labelled cells of ``project_id`` to ``out`` (a file; for GeoJSON a folder, one file per slide).

    Cells whose consensus is one of ``excluded`` (by default "Not a nucleus") are left out.
    """
    config = gateway.project_settings(project_id).label_config
    tasks = [t for t in gateway.export_tasks(project_id) if t.get("data", {}).get("tile_id")]
    rows = cell_rows(tasks, excluded)
    if fmt == "csv":
        files = (_write(out, to_csv(rows)),)
    elif fmt == "coco":
        files = (_write(out, json.dumps(to_coco(rows, tasks, parse_classes(config)))),)
    else:
        files = tuple(_write(out / f"{slide}.geojson", json.dumps(doc))
                      for slide, doc in to_geojson(rows, label_colours(config)).items())
    log.info("project %s: %d labelled cells of %d tasks exported as %s to %s", project_id, len(rows), len(tasks),
             fmt, out)
    return ExportReport(project_id, len(tasks), len(rows), files)


def _write(path: Path, text: str) -> Path:
    data = text.encode()
    write_atomic(path, lambda f: f.write(data))
    return path
