"""A snapshot's headline figures as flat numbers (pure): the JSON of ``/metrics`` and its Prometheus text.

Prometheus text goes through ``prometheus_client``'s exposition (label values such as annotators' e-mails and
class names are escaped as the format wants, and scrapers parse it as they parse any exporter).
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Mapping
from typing import Any

from prometheus_client.core import CollectorRegistry, GaugeMetricFamily
from prometheus_client.exposition import generate_latest

from label_config import parse_version_name


def summary(snapshot: Mapping[str, Any], pending: int | None = None) -> dict[str, Any]:
    """The headline figures of one project's snapshot (``pending``: labels since the last retrain, live)."""
    total = (snapshot.get("progress") or {}).get("total") or {}
    curve = snapshot.get("learning_curve") or [{}]
    version = snapshot.get("model_version")
    return {
        "project_id": snapshot.get("project_id"),
        "model_version": version,
        "version": parse_version_name(version) if version else 0,
        "labels": snapshot.get("n_labels", 0),
        "nuclei_labelled": snapshot.get("n_nuclei", 0),
        "labels_pending": pending,
        "annotations": snapshot.get("n_annotations", 0),
        "tasks": total.get("tasks", 0),
        "tasks_done": total.get("tasks_done", 0),
        "cells": total.get("cells", 0),
        "cells_labelled": total.get("cells_labelled", 0),
        "labels_by_class": dict(total.get("per_class") or {}),
        "suggestions_kept_share": snapshot.get("kept_share"),
        "gold_cells": curve[-1].get("gold_n", 0),
        "gold_accuracy": curve[-1].get("accuracy"),
        "gold_balanced_accuracy": curve[-1].get("balanced_accuracy"),
        "agreement_kappa": (snapshot.get("agreement") or {}).get("kappa"),
        "agreement_cells": (snapshot.get("agreement") or {}).get("cells", 0),
        "annotators": {name: {"labels": row["labels"], "labels_per_hour": row["labels_per_hour"]}
                       for name, row in (snapshot.get("annotators") or {}).items()},
        "snapshot_at": snapshot.get("generated_at"),
        "snapshot_age_s": round(time.time() - float(snapshot.get("generated_at") or 0), 1),
    }


_PROJECT_GAUGES = {  # summary key -> (metric name, help)
    "version": ("hali_model_version", "number of the model version the project serves (hali-vNNNN)"),
    "labels": ("hali_labels", "labelled cells (classes and Not a nucleus)"),
    "nuclei_labelled": ("hali_nuclei_labelled", "labelled cells that are nuclei"),
    "labels_pending": ("hali_labels_pending", "new cell labels since the last retrain started"),
    "annotations": ("hali_annotations", "submitted annotations (skips left out)"),
    "tasks": ("hali_tasks", "tasks of the project"),
    "tasks_done": ("hali_tasks_done", "tasks with at least one submitted annotation"),
    "cells": ("hali_cells", "cells marked in the project's tasks"),
    "cells_labelled": ("hali_cells_labelled", "cells of annotated tasks that carry a label"),
    "suggestions_kept_share": ("hali_suggestions_kept_ratio", "share of the model's suggestions kept, all versions"),
    "gold_cells": ("hali_gold_cells", "labelled cells held out of training"),
    "gold_accuracy": ("hali_gold_accuracy", "the latest version's accuracy on the gold cells"),
    "gold_balanced_accuracy": ("hali_gold_balanced_accuracy", "its balanced accuracy (mean recall per class)"),
    "agreement_kappa": ("hali_agreement_kappa", "Cohen's kappa over cells two annotators labelled"),
    "agreement_cells": ("hali_agreement_cells", "cells labelled by two or more annotators"),
    "snapshot_age_s": ("hali_snapshot_age_seconds", "seconds since the worker wrote the metrics snapshot"),
}


class _SnapshotCollector:
    def __init__(self, summaries: Iterable[Mapping[str, Any]]) -> None:
        self._summaries = list(summaries)

    def collect(self):
        for key, (name, doc) in _PROJECT_GAUGES.items():
            gauge = GaugeMetricFamily(name, doc, labels=["project"])
            for s in self._summaries:
                if s.get(key) is not None:
                    gauge.add_metric([str(s["project_id"])], float(s[key]))
            yield gauge
        by_class = GaugeMetricFamily("hali_labels_by_class", "labelled cells per class", labels=["project", "class"])
        per_hour = GaugeMetricFamily("hali_annotator_labels_per_hour", "cell labels per hour of labelling time",
                                     labels=["project", "annotator"])
        labels = GaugeMetricFamily("hali_annotator_labels", "cell labels per annotator", labels=["project", "annotator"])
        for s in self._summaries:
            project = str(s["project_id"])
            for cls, n in s["labels_by_class"].items():
                by_class.add_metric([project, cls], float(n))
            for who, row in s["annotators"].items():
                labels.add_metric([project, who], float(row["labels"]))
                if row["labels_per_hour"] is not None:
                    per_hour.add_metric([project, who], float(row["labels_per_hour"]))
        yield from (by_class, labels, per_hour)


def prometheus_text(summaries: Iterable[Mapping[str, Any]]) -> bytes:
    """Prometheus text exposition (format 0.0.4) of the projects' summaries."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(_SnapshotCollector(summaries))
    return generate_latest(registry)
