"""Writing :class:`~ml_backend.export.rows.CellRow` lists as CSV, QuPath GeoJSON and COCO (pure: text out).

- CSV: one row per labelled cell; level-0 px and um (when the slide's mpp is known).
- GeoJSON: one FeatureCollection per slide, as QuPath writes and reads detections (File > Import objects):
  a rectangle ``Polygon`` in level-0 px, ``properties.objectType = "detection"``,
  ``properties.classification = {"name", "color": [r, g, b]}``, numeric ``measurements``.
- COCO: one document; images are the task tiles, boxes in each tile image's own pixels.
"""

from __future__ import annotations

import csv
import io
import uuid
import xml.etree.ElementTree as ET
from collections.abc import Sequence
from typing import Any

from label_config import FROM_NAME
from ml_backend.export.rows import CellRow

CSV_COLUMNS = (
    "slide_id", "cell_id", "task_id", "tile_id", "centroid_x_px", "centroid_y_px", "x0_px", "y0_px", "w_px", "h_px",
    "mpp", "centroid_x_um", "centroid_y_um", "x0_um", "y0_um", "w_um", "h_um", "class", "agreement",
    "n_annotators", "annotators", "model_version", "suggestion", "kept", "seconds",
)
_DEFAULT_RGB = (128, 128, 128)
_UUID_NAMESPACE = uuid.UUID("5d3b8f0e-3c0f-4b43-9d59-2f3a0c6e7a11")  # HALI's: stable feature ids per cell


def to_csv(rows: Sequence[CellRow]) -> str:
    out = io.StringIO()
    writer = csv.DictWriter(out, CSV_COLUMNS, lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow(_csv_record(row))
    return out.getvalue()


def _csv_record(row: CellRow) -> dict[str, Any]:
    cx, cy = row.centroid_xy
    x0, y0, w, h = row.box
    latest = row.latest
    um = (lambda v: round(v * row.mpp, 3)) if row.mpp else (lambda v: "")
    return {
        "slide_id": row.slide_id, "cell_id": row.cell_id, "task_id": row.task_id, "tile_id": row.tile_id,
        "centroid_x_px": round(cx, 3), "centroid_y_px": round(cy, 3), "x0_px": round(x0, 3), "y0_px": round(y0, 3),
        "w_px": round(w, 3), "h_px": round(h, 3), "mpp": row.mpp or "", "centroid_x_um": um(cx),
        "centroid_y_um": um(cy), "x0_um": um(x0), "y0_um": um(y0), "w_um": um(w), "h_um": um(h),
        "class": row.label, "agreement": round(row.agreement, 3), "n_annotators": len(row.votes),
        "annotators": ";".join(f"{v.annotator}:{v.label}" for v in row.votes),
        "model_version": latest.model_version or "", "suggestion": latest.suggestion or "",
        "kept": "" if latest.kept is None else str(latest.kept).lower(),
        "seconds": round(sum(v.seconds for v in row.votes), 3),
    }


def label_colours(config_xml: str) -> dict[str, tuple[int, int, int]]:
    """Class name -> (r, g, b) from the labeling config's ``background`` colours."""
    block = ET.fromstring(config_xml).find(f".//RectangleLabels[@name='{FROM_NAME}']")
    colours = {}
    for label in [] if block is None else block.findall("Label"):
        colours[label.get("value", "")] = _rgb(label.get("background", ""))
    return colours


def _rgb(hex_colour: str) -> tuple[int, int, int]:
    value = hex_colour.lstrip("#")
    if len(value) != 6:
        return _DEFAULT_RGB
    try:
        return tuple(int(value[i : i + 2], 16) for i in (0, 2, 4))  # type: ignore[return-value]
    except ValueError:
        return _DEFAULT_RGB


def to_geojson(rows: Sequence[CellRow], colours: dict[str, tuple[int, int, int]]) -> dict[str, dict[str, Any]]:
    """Slide id -> a QuPath FeatureCollection of that slide's labelled cells."""
    slides: dict[str, list[dict[str, Any]]] = {}
    for row in rows:
        slides.setdefault(row.slide_id, []).append(_feature(row, colours))
    return {slide: {"type": "FeatureCollection", "features": feats} for slide, feats in slides.items()}


def _feature(row: CellRow, colours: dict[str, tuple[int, int, int]]) -> dict[str, Any]:
    x0, y0, w, h = row.box
    ring = [[x0, y0], [x0 + w, y0], [x0 + w, y0 + h], [x0, y0 + h], [x0, y0]]
    return {
        "type": "Feature",
        "id": str(uuid.uuid5(_UUID_NAMESPACE, f"{row.slide_id}/{row.cell_id}")),
        "geometry": {"type": "Polygon", "coordinates": [[[round(x, 3), round(y, 3)] for x, y in ring]]},
        "properties": {
            "objectType": "detection",
            "name": row.cell_id,
            "classification": {"name": row.label, "color": list(colours.get(row.label, _DEFAULT_RGB))},
            "measurements": {"agreement": round(row.agreement, 3), "annotators": len(row.votes),
                             "seconds": round(sum(v.seconds for v in row.votes), 3)},
        },
    }


def to_coco(rows: Sequence[CellRow], tasks: Sequence[dict[str, Any]], classes: Sequence[str]) -> dict[str, Any]:
    """COCO detection document: tiles as images, labelled cells as boxes in each tile image's pixels."""
    categories = [{"id": i + 1, "name": name} for i, name in enumerate(classes)]
    category_id = {c["name"]: c["id"] for c in categories}
    by_tile: dict[str, dict[str, Any]] = {}
    for task in tasks:
        data = task["data"]
        by_tile[data["tile_id"]] = {
            "id": len(by_tile) + 1, "file_name": data["image"], "width": data["width"], "height": data["height"],
            "hali_task_id": task["id"], "slide_id": data["slide_id"], "x0": data["x0"], "y0": data["y0"],
            "downsample": data.get("downsample", 1.0)}
    annotations = []
    for row in rows:
        img = by_tile.get(row.tile_id)
        if row.label not in category_id or img is None:
            continue
        x0, y0, w, h = row.box
        d = float(img["downsample"])
        bbox = [round((x0 - img["x0"]) / d, 3), round((y0 - img["y0"]) / d, 3), round(w / d, 3), round(h / d, 3)]
        annotations.append({"id": len(annotations) + 1, "image_id": img["id"], "category_id": category_id[row.label],
                            "bbox": bbox, "area": round(bbox[2] * bbox[3], 3), "iscrowd": 0,
                            "hali_cell_id": row.cell_id})
    return {"images": list(by_tile.values()), "annotations": annotations, "categories": categories}
