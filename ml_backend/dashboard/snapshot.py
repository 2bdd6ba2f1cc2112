"""A project's metrics snapshot: every figure of the dashboard and of ``/metrics``, as one JSON-able dict (pure).

The worker builds it after each retrain (Label Studio's annotations are in memory then) and the server only
reads it, so the page costs the same for ten cells or a million. Its size grows with slides, annotators and
model versions, never with cells. Keys::

    project_id, generated_at (Unix s), seconds (to build), model_version, targets, colours {target: "#rrggbb"}
    n_labels, n_nuclei, n_annotations, pending (filled in live by the server)
    progress      {"slides": {slide: {tasks, tasks_done, cells, cells_labelled, per_class}}, "total": {...}}
    annotators    {name: {labels, annotations, hours, labels_per_hour}}
    labels_over_time {name: [[Unix s, cumulative labels], ...]}
    acceptance    {model_version: {annotations, kept, changed, kept_share}};  kept_share: over all versions
    learning_curve [{model_version, created_at, n_labels, n_train, gold_n, accuracy, balanced_accuracy}]
    agreement     {cells, kappa, pairs: [{a, b, cells, kappa, agree}]}
    gold_share    the share of labelled cells held out of training
    coverage      [slide ids with a coverage map]
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from label_config import TileTask, nuclei_only
from ml_backend.dashboard.metrics import (
    AnnotationFact,
    acceptance_by_version,
    agreement,
    annotation_versions,
    iso_seconds,
    kept_share,
    labels_over_time,
    labels_per_hour,
    progress,
)

STATUS_MARK = "HALI status:"  # the description line the worker owns; the rest of the description is the user's


def learning_curve(sidecars: Iterable[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """One point per saved model version (sidecar dicts of :class:`ml_backend.model.store.ModelStore`), in
    version order: labels it saw, labels it trained on, and its scores on the gold set."""
    points = []
    for meta in sorted(sidecars, key=lambda m: int(m.get("version", 0))):
        metrics = meta.get("metrics") or {}
        gold = metrics.get("gold") or {}
        points.append({"model_version": meta.get("model_version"), "created_at": meta.get("created_at"),
                       "n_labels": metrics.get("n_labels"), "n_train": metrics.get("n_train", metrics.get("n_labels")),
                       "gold_n": gold.get("n", 0), "accuracy": gold.get("accuracy"),
                       "balanced_accuracy": gold.get("balanced_accuracy")})
    return points


def version_times(curve: Sequence[Mapping[str, Any]]) -> list[tuple[float, str]]:
    """(created Unix s, model version) of each version, sorted by time."""
    return sorted((iso_seconds(p["created_at"]), str(p["model_version"])) for p in curve if p.get("created_at"))


def build_snapshot(project_id: int, facts: Sequence[AnnotationFact], tiles: Mapping[int, TileTask],
                   labels: Mapping[str, str], targets: Sequence[str], sidecars: Iterable[Mapping[str, Any]],
                   prediction_versions: Mapping[int, str], colours: Mapping[str, tuple[int, int, int]],
                   gold_share: float) -> dict[str, Any]:
    """The snapshot dict (module docstring) of one project. ``labels``: merged cell id -> target."""
    t0 = time.perf_counter()
    curve = learning_curve(sidecars)
    versions = annotation_versions(facts, prediction_versions, version_times(curve))
    acceptance = acceptance_by_version(facts, versions)
    return {
        "project_id": project_id,
        "generated_at": time.time(),
        "model_version": curve[-1]["model_version"] if curve else None,
        "targets": list(targets),
        "colours": {t: "#{:02x}{:02x}{:02x}".format(*colours.get(t, (128, 128, 128))) for t in targets},
        "n_labels": len(labels),
        "n_nuclei": len(nuclei_only(labels)),
        "n_annotations": len(facts),
        "progress": progress(tiles, {f.task_id for f in facts}, labels, targets),
        "annotators": labels_per_hour(facts),
        "labels_over_time": labels_over_time(facts),
        "acceptance": acceptance,
        "kept_share": kept_share(acceptance),
        "learning_curve": curve,
        "agreement": agreement(facts),
        "gold_share": gold_share,
        "coverage": [],
        "seconds": round(time.perf_counter() - t0, 3),
    }


def status_line(snapshot: Mapping[str, Any], dashboard_url: str) -> str:
    """The one line the worker keeps in the project's description: labels, version, suggestions kept, link."""
    share = snapshot.get("kept_share")
    kept = "no suggestion judged yet" if share is None else f"{share:.0%} of suggestions kept"
    parts = [f"{snapshot.get('n_labels', 0):,} labels", f"model {snapshot.get('model_version') or 'none yet'}", kept]
    return f"{STATUS_MARK} " + " · ".join(parts) + (f" · dashboard {dashboard_url}" if dashboard_url else "")


def with_status_line(description: str | None, line: str) -> str:
    """``description`` with its HALI status line replaced by ``line`` (appended when it has none); every other
    line, the user's own text, is kept as it was."""
    lines = (description or "").splitlines()
    kept = [text for text in lines if not text.startswith(STATUS_MARK)]
    while kept and not kept[-1].strip():
        kept.pop()
    return "\n".join([*kept, line]) if kept else line
