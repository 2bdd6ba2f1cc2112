"""``hali classify``: every cell of a project's slides classified by its latest model, with densities."""

from __future__ import annotations

import argparse
from pathlib import Path

from adapters.label_studio import LabelStudioGateway
from ml_backend.classify.cells import summary_rows
from ml_backend.classify.run import classify_project
from ml_backend.export.cli import project_id_of
from ml_backend.settings import BackendSettings


def add_commands(sub: argparse._SubParsersAction) -> None:
    c = sub.add_parser("classify", help="classify every cell of a project's slides with its latest model")
    c.add_argument("--project", required=True, help="Label Studio project id or title")
    c.add_argument("--slide", action="append", help="slide id (repeat); default: every slide of the project")
    c.add_argument("--out", type=Path, required=True, help="folder for <slide>.csv, overlays and summary.csv")
    c.add_argument("--geojson", action="store_true", help="also <slide>.geojson of QuPath detections")
    c.set_defaults(func=_classify)


def _classify(args: argparse.Namespace) -> int:
    settings = BackendSettings()
    gateway = LabelStudioGateway.connect(settings.ls_url, settings.ls_api_key.get_secret_value())
    report = classify_project(settings, gateway, project_id_of(gateway, args.project), args.out, args.slide,
                              args.geojson)
    print(f"project {report.project_id}, model {report.model_version}: {len(report.slides)} slide(s) -> {args.out}")
    for result in report.slides:
        area = f"{result.tissue_mm2:.2f} mm² of tissue" if result.tissue_mm2 else "no tissue area (no mpp)"
        print(f"  slide {result.slide_id}: {len(result.cell_ids)} cells, {area}")
        for row in summary_rows(result):
            density = f"{row['per_mm2']:.0f}/mm²" if row["per_mm2"] is not None else "-"
            print(f"    {row['class']:<16} {row['cells']:>8}  {density}")
    return 0
