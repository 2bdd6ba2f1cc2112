"""Agreement between annotators on the cells several of them labelled (pure: numpy and scikit-learn).

- :func:`pairwise_cohen`: Cohen's kappa (``sklearn.metrics.cohen_kappa_score``) for every pair of annotators
  over the cells both labelled.
- :func:`fleiss_kappa`: Fleiss' kappa for any number of readers per cell (Fleiss 1971; a cell read by ``n_i``
  readers contributes ``(sum_j n_ij^2 - n_i) / (n_i (n_i - 1))``, the usual generalisation when ``n_i`` varies).
- :func:`agreement_report`: both, overall and per class (the class against all others), from the mirror.

A kappa is None where it is undefined (fewer than two cells, or a single label used by everyone).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from itertools import combinations
from typing import Any

import numpy as np
from sklearn.metrics import cohen_kappa_score

from ml_backend.labels.records import AnnotationRecord


def ratings(records: Mapping[int, AnnotationRecord]) -> dict[str, dict[int, str]]:
    """Cell id -> (annotator id -> label) for the cells at least two annotators labelled (the latest save of
    an annotator who labelled a cell twice)."""
    by_cell: dict[str, dict[int, str]] = {}
    for _, rec in sorted(records.items(), key=lambda kv: (kv[1].updated_at, kv[0])):
        who = rec.completed_by if rec.completed_by is not None else -1
        for cell, label in rec.labels.items():
            by_cell.setdefault(cell, {})[who] = label
    return {c: r for c, r in by_cell.items() if len(r) >= 2}


def fleiss_kappa(counts: np.ndarray) -> float | None:
    """Fleiss' kappa of ``counts``: int (cells, categories), how many readers gave each category to each cell
    (at least two readers per cell). None when undefined."""
    counts = np.asarray(counts, dtype=np.float64)
    n = counts.sum(axis=1)
    if counts.shape[0] < 2 or (n < 2).any():
        return None
    p_cat = counts.sum(axis=0) / n.sum()
    p_cell = ((counts**2).sum(axis=1) - n) / (n * (n - 1))
    p_bar, p_e = p_cell.mean(), float((p_cat**2).sum())
    return None if p_e >= 1.0 else float((p_bar - p_e) / (1.0 - p_e))


def pairwise_cohen(table: Mapping[str, Mapping[int, str]]) -> list[dict[str, Any]]:
    """For every pair of annotators with at least two cells in common: ``{"a", "b", "cells", "kappa"}``."""
    annotators = sorted({a for r in table.values() for a in r})
    out = []
    for a, b in combinations(annotators, 2):
        both = [(r[a], r[b]) for r in table.values() if a in r and b in r]
        if len(both) < 2:
            continue
        x, y = zip(*both)
        kappa = cohen_kappa_score(x, y) if len(set(x) | set(y)) > 1 else None
        out.append({"a": a, "b": b, "cells": len(both),
                    "kappa": None if kappa is None or np.isnan(kappa) else float(kappa)})
    return out


def agreement_report(records: Mapping[int, AnnotationRecord], classes: Sequence[str]) -> dict[str, Any]:
    """Cells read twice or more, Fleiss' kappa overall and per class (one against the rest), Cohen's per pair."""
    table = ratings(records)
    labels = sorted({lab for r in table.values() for lab in r.values()} | set(classes))
    counts = np.array([[sum(v == lab for v in r.values()) for lab in labels] for r in table.values()]).reshape(-1, len(labels))
    per_class = {}
    for j, lab in enumerate(labels):
        binary = np.stack([counts[:, j], counts.sum(axis=1) - counts[:, j]], axis=1) if len(counts) else counts
        per_class[lab] = fleiss_kappa(binary) if len(counts) else None
    return {"cells": len(table), "fleiss_kappa": fleiss_kappa(counts) if len(counts) else None,
            "fleiss_kappa_per_class": per_class, "cohen_kappa_per_pair": pairwise_cohen(table)}
