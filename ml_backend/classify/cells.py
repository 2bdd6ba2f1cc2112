"""Every cell of a slide classified by a project's model, with counts and densities per class (pure).

Densities are cells per mm² of tissue (the tissue mask of the slide's thumbnail, as preprocessing finds it).
Cells the model calls "Not a nucleus" are counted apart and left out of the densities.
"""

from __future__ import annotations

import csv
import io
from dataclasses import dataclass

import numpy as np

from label_config import NOT_NUCLEUS_LABEL
from ml_backend.model.learners import Learner
from preprocess.tiles.cells import CellTable

_PREDICT_CHUNK = 65_536  # rows per call: bounds the memory of a million-cell slide


@dataclass(frozen=True, eq=False)
class SlideClasses:
    """The model's class for every cell of one slide.

    ``boxes``: int32 (N, 4) level-0 (x0, y0, w, h); ``labels``: str (N,); ``probability``: float32 (N,) of
    that class; ``mpp``: um per level-0 px (None when unknown); ``tissue_mm2``: tissue area (None without mpp).
    """

    slide_id: str
    model_version: str
    cell_ids: np.ndarray
    boxes: np.ndarray
    labels: np.ndarray
    probability: np.ndarray
    targets: tuple[str, ...]
    mpp: float | None
    tissue_mm2: float | None

    @property
    def centroids_xy(self) -> np.ndarray:
        """float64 (N, 2) level-0 (x, y) box centres."""
        return self.boxes[:, :2] + self.boxes[:, 2:] / 2.0

    def counts(self) -> dict[str, int]:
        """Cells per class, every target included (zero when none)."""
        return {t: int(np.sum(self.labels == t)) for t in self.targets}

    def densities_per_mm2(self) -> dict[str, float | None]:
        """Nuclei per mm² of tissue, per class ("Not a nucleus" left out); None without an area."""
        area = self.tissue_mm2
        return {t: (n / area if area else None) for t, n in self.counts().items() if t != NOT_NUCLEUS_LABEL}


def classify_cells(table: CellTable, slide_id: str, learner: Learner, targets: tuple[str, ...],
                   model_version: str, mpp: float | None, tissue_mm2: float | None,
                   proba_all: np.ndarray | None = None) -> SlideClasses:
    """Classify every cell of ``table`` with ``learner`` (suggestion probabilities, as Label Studio shows).

    ``proba_all`` (N, K) float32: those probabilities already computed (a model with spatial context:
    :meth:`ml_backend.suggestions.context.CellFeatures.proba`); None: from the table's features.
    """
    index = np.empty(len(table.cell_ids), np.int64)
    probability = np.empty(len(table.cell_ids), np.float32)
    for start in range(0, len(index), _PREDICT_CHUNK):
        chunk = slice(start, start + _PREDICT_CHUNK)
        proba = learner.suggest_proba(table.features[chunk]) if proba_all is None else proba_all[chunk]
        index[start : start + len(proba)] = proba.argmax(axis=1)
        probability[start : start + len(proba)] = proba.max(axis=1)
    labels = np.asarray(targets, dtype=str)[index] if len(index) else np.empty(0, dtype=str)
    return SlideClasses(slide_id, model_version, table.cell_ids, table.boxes, labels, probability, tuple(targets),
                        mpp, tissue_mm2)


def tissue_area_mm2(tissue_mask: np.ndarray, downsample: float, mpp: float | None) -> float | None:
    """Area in mm² of a thumbnail's tissue mask whose pixels are ``downsample`` level-0 px a side."""
    if mpp is None:
        return None
    return float(tissue_mask.sum()) * (downsample * mpp) ** 2 / 1e6


def cells_csv(result: SlideClasses) -> str:
    """One row per cell: ids, level-0 centroid and box (px, and um with an mpp), class, probability, model."""
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(["slide_id", "cell_id", "centroid_x_px", "centroid_y_px", "x0_px", "y0_px", "w_px", "h_px",
                     "centroid_x_um", "centroid_y_um", "class", "probability", "model_version"])
    xy = result.centroids_xy
    um = xy * result.mpp if result.mpp else None
    for i in range(len(result.cell_ids)):
        x0, y0, w, h = (int(v) for v in result.boxes[i])
        um_cols = [f"{um[i, 0]:.3f}", f"{um[i, 1]:.3f}"] if um is not None else ["", ""]
        writer.writerow([result.slide_id, result.cell_ids[i], f"{xy[i, 0]:.1f}", f"{xy[i, 1]:.1f}", x0, y0, w, h,
                         *um_cols, result.labels[i], f"{result.probability[i]:.4f}", result.model_version])
    return out.getvalue()


def summary_rows(result: SlideClasses) -> list[dict[str, object]]:
    """Per class: count, share of nuclei, and nuclei per mm² of tissue."""
    counts = result.counts()
    nuclei = sum(n for t, n in counts.items() if t != NOT_NUCLEUS_LABEL)
    density = result.densities_per_mm2()
    return [{"slide_id": result.slide_id, "class": t, "cells": n,
             "share_of_nuclei": (n / nuclei if nuclei and t != NOT_NUCLEUS_LABEL else None),
             "per_mm2": density.get(t), "tissue_mm2": result.tissue_mm2, "model_version": result.model_version}
            for t, n in counts.items()]
