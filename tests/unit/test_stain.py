"""Which stain a slide shows decides the segmenter under HALI_SEGMENTER=auto."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from skimage import data

from preprocess.nuclei.learned import segment_nuclei_learned
from preprocess.nuclei.segment import segment_nuclei
from preprocess.nuclei.stain import dab_share, detect_stain
from preprocess.settings import PreprocessSettings
from preprocess.stages import pick_segmenter

SHARED = Path(__file__).resolve().parents[3] / "shared" / "data"


def _he_like(seed: int = 0) -> np.ndarray:
    """Pink stroma with purple nuclei: eosin and haematoxylin colours, no brown."""
    rng = np.random.default_rng(seed)
    img = np.full((128, 128, 3), (236, 170, 200), np.uint8)
    for _ in range(30):
        r, c = rng.integers(5, 123, size=2)
        img[r - 3 : r + 3, c - 3 : c + 3] = (90, 60, 150)
    return img


def test_ihc_brown_is_told_from_h_and_e():
    assert detect_stain(data.immunohistochemistry()) == "ihc"
    assert detect_stain(_he_like()) == "he"
    assert dab_share(np.full((8, 8, 3), 255, np.uint8)) == 0.0  # all glass


@pytest.mark.skipif(not (SHARED / "deepliif_ki67_samples" / "ihc").is_dir(), reason="../shared/data is absent")
def test_the_shared_slides_get_their_own_stain():
    import openslide
    from PIL import Image

    with openslide.OpenSlide(str(SHARED / "wsi" / "CMU-1-Small-Region.svs")) as slide:
        assert detect_stain(np.asarray(slide.get_thumbnail((1024, 1024)))) == "he"
    for tile in sorted((SHARED / "deepliif_ki67_samples" / "ihc").iterdir()):
        assert detect_stain(np.asarray(Image.open(tile).convert("RGB"))) == "ihc", tile.name
    for patch in sorted((SHARED / "consep_patches" / "images").glob("test_*"))[::20]:
        assert detect_stain(np.asarray(Image.open(patch).convert("RGB"))) == "he", patch.name


@pytest.mark.parametrize("setting, stain, expected", [
    ("auto", "he", segment_nuclei_learned), ("auto", "ihc", segment_nuclei),
    ("learned", "ihc", segment_nuclei_learned), ("classical", "he", segment_nuclei),
])
def test_the_segmenter_follows_the_setting_and_the_stain(setting, stain, expected):
    assert pick_segmenter(PreprocessSettings(segmenter=setting), stain).__wrapped__ is expected  # focus-checked
    assert pick_segmenter(PreprocessSettings(segmenter=setting, max_blur=1.0), stain) is expected
