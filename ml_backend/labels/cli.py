"""``hali labels``: every annotator's label of every cell, the consensus, conflicts and agreement of a project.

Reads the backend's label mirror after an incremental reconcile (so labels whose webhook was lost are in), and
prints a summary: annotations, annotators, labelled cells, conflicts, what annotators did with the suggestions
(kept, changed, rejected, labelled, drawn), Fleiss' kappa overall and per class, Cohen's kappa per pair of
annotators. ``--out FILE`` writes one CSV row per cell and annotation (:class:`~ml_backend.labels.lineage.
CellLabel`) with the cell's consensus beside it; ``--json`` prints the summary as JSON.
"""

from __future__ import annotations

import argparse
import csv
import json
from dataclasses import asdict, fields
from pathlib import Path
from typing import Any

from adapters.label_studio import LabelStudioGateway
from label_config import parse_label_set
from ml_backend.export.cli import project_id_of
from ml_backend.labels.agreement import agreement_report
from ml_backend.labels.lineage import CellLabel, action_counts, cell_consensus, cell_labels
from ml_backend.labels.reconcile import reconcile_incremental
from ml_backend.labels.redis_store import RedisLabelStore
from ml_backend.settings import BackendSettings


def add_commands(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("labels", help="per-annotator labels with lineage, consensus, conflicts and agreement")
    p.add_argument("--project", required=True, help="Label Studio project id or title")
    p.add_argument("--out", type=Path, help="write one CSV row per cell and annotation, with the consensus")
    p.add_argument("--json", action="store_true", help="print the summary as JSON")
    p.set_defaults(func=_labels)


def _labels(args: argparse.Namespace) -> int:
    settings = BackendSettings()
    gateway = LabelStudioGateway.connect(settings.ls_url, settings.ls_api_key.get_secret_value())
    store = RedisLabelStore.from_url(settings.redis_url)
    project_id = project_id_of(gateway, args.project)
    label_set = parse_label_set(gateway.project_settings(project_id).label_config)
    reconcile_incremental(project_id, gateway, store, label_set, count_pending=True)
    records = store.records(project_id)
    rows = cell_labels(records)
    summary = label_summary(project_id, records, rows, list(label_set.targets))
    print(json.dumps(summary, indent=1) if args.json else format_summary(summary))
    if args.out:
        write_lineage_csv(args.out, rows, records)
        print(f"{len(rows)} cell labels -> {args.out}")
    return 0


def label_summary(project_id: int, records, rows: list[CellLabel], targets: list[str]) -> dict[str, Any]:
    consensus = cell_consensus(records)
    return {"project_id": project_id, "annotations": len(records),
            "annotators": len({r.completed_by for r in records.values()}),
            "labelled_cells": len(consensus), "conflicts": sum(c.conflict for c in consensus),
            "actions": action_counts(rows), "agreement": agreement_report(records, targets)}


def format_summary(s: dict[str, Any]) -> str:
    def k(v: float | None) -> str:
        return "n/a" if v is None else f"{v:.3f}"

    a = s["agreement"]
    lines = [(f"project {s['project_id']}: {s['annotations']} annotations by {s['annotators']} annotators, "
              f"{s['labelled_cells']} labelled cells, {s['conflicts']} in conflict"),
             "actions: " + ", ".join(f"{name} {n}" for name, n in s["actions"].items()),
             f"cells read by 2+ annotators: {a['cells']}; Fleiss' kappa {k(a['fleiss_kappa'])}",
             "per class: " + ", ".join(f"{c} {k(v)}" for c, v in a["fleiss_kappa_per_class"].items())]
    lines += [f"Cohen's kappa, annotators {p['a']} and {p['b']}: {k(p['kappa'])} on {p['cells']} cells"
              for p in a["cohen_kappa_per_pair"]]
    return "\n".join(lines)


def write_lineage_csv(path: Path, rows: list[CellLabel], records) -> None:
    consensus = {c.cell_id: c for c in cell_consensus(records)}
    names = [f.name for f in fields(CellLabel)] + ["consensus", "agreement", "conflict"]
    with open(path, "w", newline="") as f:
        out = csv.writer(f)
        out.writerow(names)
        for row in rows:
            c = consensus.get(row.cell_id)
            out.writerow([*asdict(row).values(), *((c.label, f"{c.agreement:.3f}", c.conflict) if c else ("", "", ""))])
