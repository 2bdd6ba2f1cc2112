"""``classify_project``: a project's latest model applied to every cell of its slides, written to files.

Per slide: ``<slide>.csv`` (every cell: level-0 centroid and box, um, class, probability, model version),
``<slide>-overlay.png`` (the thumbnail with a dot per cell in its class colour) and, with ``geojson``,
``<slide>.geojson`` (QuPath detections); for all slides ``summary.csv`` (per class: cells, share of nuclei,
nuclei per mm² of tissue). The features are the cell table's cached embeddings, so nothing is segmented or
embedded again.
"""

from __future__ import annotations

import csv
import io
import json
import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from adapters.atomic import write_atomic
from adapters.errors import AdapterError
from adapters.label_studio import LabelStudioGateway
from adapters.slide_reader import OpenSlideReader
from label_config import version_name
from ml_backend.classify.cells import SlideClasses, cells_csv, classify_cells, summary_rows, tissue_area_mm2
from ml_backend.classify.overlay import overlay_png
from ml_backend.export.formats import label_colours
from ml_backend.model.store import ModelStore
from ml_backend.settings import BackendSettings
from ml_backend.suggestions.context import CellFeatures, ContextSpec
from ml_backend.suggestions.embeddings import EmbeddingIndex, tables_storage
from preprocess.layout import DataLayout, read_slide_meta
from preprocess.nuclei.tissue import detect_tissue

log = logging.getLogger(__name__)
THUMBNAIL_PX = 2048


@dataclass(frozen=True)
class ClassifyReport:
    project_id: int
    model_version: str
    slides: tuple[SlideClasses, ...]
    files: tuple[Path, ...]


def classify_project(settings: BackendSettings, gateway: LabelStudioGateway, project_id: int, out: Path,
                     slide_ids: list[str] | None = None, geojson: bool = False) -> ClassifyReport:
    """Classify every cell of ``slide_ids`` (default: every slide of the project) with its latest model."""
    learner, meta = ModelStore(DataLayout(settings.data_dir, settings.ls_files_root).models_dir(project_id)).load()
    targets = tuple(meta.get("targets") or meta["classes"])
    model_version = str(meta.get("model_version") or version_name(int(meta["version"])))
    colours = label_colours(gateway.project_settings(project_id).label_config)
    storage = tables_storage(settings)
    features = CellFeatures(EmbeddingIndex(storage), storage, ContextSpec.from_meta(meta))
    results, files = [], []
    for slide_id in slide_ids or gateway.slide_ids(project_id):
        slide_meta = read_slide_meta(storage, slide_id)
        thumbnail, downsample, mpp = _thumbnail(slide_meta)
        area = None if thumbnail is None else tissue_area_mm2(detect_tissue(thumbnail), downsample, mpp)
        table = features.index.table(slide_id)
        proba = None if features.spec is None else features.proba(learner, slide_id, np.arange(len(table)), True)
        result = classify_cells(table, slide_id, learner, targets, model_version, mpp, area, proba)
        files.append(_write(out / f"{slide_id}.csv", cells_csv(result).encode()))
        if thumbnail is not None:
            files.append(_write(out / f"{slide_id}-overlay.png", overlay_png(thumbnail, downsample, result, colours)))
        if geojson:
            files.append(_write(out / f"{slide_id}.geojson", json.dumps(_geojson(result, colours)).encode()))
        log.info("slide %s: %d cells classified by %s", slide_id, len(result.cell_ids), model_version)
        results.append(result)
    files.append(_write(out / "summary.csv", _summary_csv(results).encode()))
    return ClassifyReport(project_id, model_version, tuple(results), tuple(files))


def _thumbnail(slide_meta: dict) -> tuple:
    """(thumbnail, downsample, mpp) of the slide preprocessing read; (None, 1.0, mpp) when it is gone."""
    mpp = slide_meta.get("mpp")
    try:
        with OpenSlideReader(Path(slide_meta["slide_path"]), mpp=mpp) as reader:
            thumbnail, downsample = reader.thumbnail(THUMBNAIL_PX)
            return thumbnail, downsample, reader.mpp
    except (AdapterError, KeyError) as exc:
        log.warning("slide %s is not readable (%s): no overlay and no tissue area", slide_meta.get("slide_path"), exc)
        return None, 1.0, mpp


def _geojson(result: SlideClasses, colours: dict) -> dict:
    features = []
    for i, (x0, y0, w, h) in enumerate(result.boxes.tolist()):
        label = str(result.labels[i])
        properties = {"objectType": "detection", "name": str(result.cell_ids[i]),
                      "classification": {"name": label, "color": list(colours.get(label, (128, 128, 128)))},
                      "measurements": {"probability": round(float(result.probability[i]), 4)}}
        ring = [[x0, y0], [x0 + w, y0], [x0 + w, y0 + h], [x0, y0 + h], [x0, y0]]
        features.append({"type": "Feature", "geometry": {"type": "Polygon", "coordinates": [ring]},
                         "properties": properties})
    return {"type": "FeatureCollection", "features": features}


def _summary_csv(results: list[SlideClasses]) -> str:
    out = io.StringIO()
    writer = csv.DictWriter(out, ["slide_id", "class", "cells", "share_of_nuclei", "per_mm2", "tissue_mm2",
                                  "model_version"], lineterminator="\n")
    writer.writeheader()
    for result in results:
        writer.writerows(summary_rows(result))
    return out.getvalue()


def _write(path: Path, data: bytes) -> Path:
    write_atomic(path, lambda f: f.write(data))
    return path
