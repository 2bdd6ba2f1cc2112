"""DrawnCellEmbedder: features for boxes an annotator drew by hand (region ids HALI did not make).

Such a cell has no row in the slide's cell table. It is embedded the way preprocessing embedded every
other cell of its slide: the same slide file, patch size and featurizer, read from the slide's
``tasks.json`` (written by ``hali preprocess``, read from the same output storage as the cell tables). A
slide file that has moved away, or a ``tasks.json`` that cannot be read, is logged and skipped; the label
itself stays in Label Studio and in the label mirror.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from adapters.errors import AdapterError
from adapters.slide_reader import OpenSlideReader
from adapters.storage import Storage
from preprocess.errors import PreprocessError
from preprocess.features.featurize import cell_patch_px, extract_patches, make_featurizer, patch_um_of
from preprocess.layout import read_slide_meta, skip_tile

log = logging.getLogger(__name__)


class DrawnCellEmbedder:
    def __init__(self, storage: Storage) -> None:
        self._storage = storage

    def embed(self, slide_id: str, boxes: Sequence[Sequence[int]]) -> np.ndarray | None:
        """float32 (len(boxes), D) features of level-0 boxes ``(x0, y0, w, h)``; None when the slide is gone."""
        try:
            meta = read_slide_meta(self._storage, slide_id, skip_tile)
        except (PreprocessError, AdapterError) as exc:
            log.warning("slide %s: hand-drawn cells skipped: %s", slide_id, exc)
            return None
        recipe = meta.get("recipe", {})
        centroids = np.array([[x0 + w / 2.0, y0 + h / 2.0] for x0, y0, w, h in boxes], dtype=np.float64)
        try:
            patch_um = float(recipe.get("patch_um", 20.0))
            featurizer = make_featurizer(meta.get("featurizer", "resnet18"), recipe.get("checkpoint") or None,
                                         patch_um=patch_um, encoder=recipe.get("encoder"),
                                         encoder_input_px=int(recipe.get("encoder_input_px", 224)))
            with OpenSlideReader(Path(meta["slide_path"]), mpp=meta.get("mpp")) as reader:
                patch_px = cell_patch_px(reader.mpp, patch_um_of(featurizer, patch_um))
                patches = extract_patches(reader, centroids, patch_px, featurizer.patch_out_px)
            return featurizer.embed(patches).astype(np.float32)
        except (PreprocessError, AdapterError) as exc:
            log.warning("slide %s: hand-drawn cells skipped: %s", slide_id, exc)
            return None
