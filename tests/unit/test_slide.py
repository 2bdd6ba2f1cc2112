"""OpenSlideReader on synthetic PNG/TIFF files, broken files, and the real CMU-1 slide."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import tifffile
from PIL import Image

from adapters.errors import SlideError
from adapters.slide_reader import OpenSlideReader

CMU_SLIDE = Path(__file__).resolve().parents[3] / "shared" / "data" / "wsi" / "CMU-1-Small-Region.svs"


def _gradient_rgb(rows: int, cols: int) -> np.ndarray:
    r, c = np.indices((rows, cols))
    return np.stack([r % 256, c % 256, (r + c) % 256], axis=-1).astype(np.uint8)


@pytest.fixture
def png_slide(tmp_path: Path) -> tuple[Path, np.ndarray]:
    rgb = _gradient_rgb(300, 400)
    path = tmp_path / "slide.png"
    Image.fromarray(rgb).save(path)
    return path, rgb


@pytest.fixture
def tiff_slide(tmp_path: Path) -> tuple[Path, np.ndarray]:
    """A two-level tiled TIFF at 0.5 um/px (resolution in pixels per centimetre)."""
    rgb = _gradient_rgb(512, 640)
    path = tmp_path / "slide.tiff"
    with tifffile.TiffWriter(path) as tif:
        tif.write(rgb, tile=(256, 256), photometric="rgb", resolution=(2e4, 2e4), resolutionunit="CENTIMETER")
        tif.write(rgb[::2, ::2], tile=(256, 256), photometric="rgb", subfiletype=1)
    return path, rgb


def test_missing_file_raises_slide_error_naming_the_path(tmp_path: Path) -> None:
    missing = tmp_path / "nope.svs"
    with pytest.raises(SlideError, match="nope.svs"):
        OpenSlideReader(missing)


def test_garbage_bytes_raise_slide_error_that_suggests_converting(tmp_path: Path) -> None:
    path = tmp_path / "broken.svs"
    path.write_bytes(b"\x00not a slide" * 200)
    with pytest.raises(SlideError, match="convert it to a pyramidal TIFF"):
        OpenSlideReader(path)


def test_png_opens_as_one_level_slide_without_mpp(png_slide) -> None:
    path, rgb = png_slide
    with OpenSlideReader(path) as reader:
        assert reader.dimensions == (400, 300)
        assert reader.mpp is None
        with pytest.raises(SlideError, match="pass --mpp"):
            reader.require_mpp()


def test_mpp_override_wins_and_must_be_positive(png_slide) -> None:
    path, _ = png_slide
    with OpenSlideReader(path, mpp=0.25) as reader:
        assert reader.require_mpp() == 0.25
    with pytest.raises(SlideError, match="must be > 0"):
        OpenSlideReader(path, mpp=0.0)


def test_tiled_tiff_reports_mpp_from_its_resolution_tags(tiff_slide) -> None:
    path, _ = tiff_slide
    with OpenSlideReader(path) as reader:
        assert reader.dimensions == (640, 512)
        assert reader.mpp == pytest.approx(0.5)


def test_read_region_returns_level0_rgb_pixels(tiff_slide) -> None:
    path, rgb = tiff_slide
    with OpenSlideReader(path) as reader:
        region = reader.read_region(100, 50, 300, 200)
    assert region.dtype == np.uint8 and region.shape == (200, 300, 3)
    np.testing.assert_array_equal(region, rgb[50:250, 100:400])


def test_read_region_pads_outside_the_slide_with_white(png_slide) -> None:
    path, rgb = png_slide
    with OpenSlideReader(path) as reader:
        region = reader.read_region(-10, 290, 30, 20)
    assert region.shape == (20, 30, 3)
    assert (region[:, :10] == 255).all() and (region[10:] == 255).all()
    np.testing.assert_array_equal(region[:10, 10:], rgb[290:300, 0:20])


def test_thumbnail_fits_max_side_and_reports_downsample(tiff_slide) -> None:
    path, _ = tiff_slide
    with OpenSlideReader(path) as reader:
        thumb, downsample = reader.thumbnail(160)
    assert thumb.dtype == np.uint8 and max(thumb.shape[:2]) == 160 and thumb.shape[2] == 3
    assert downsample == pytest.approx(4.0, rel=0.02)


def test_slide_id_is_stable_and_follows_content(tmp_path: Path, png_slide) -> None:
    path, rgb = png_slide
    copy = tmp_path / "copy.png"
    copy.write_bytes(path.read_bytes())
    other = tmp_path / "other.png"
    Image.fromarray(255 - rgb).save(other)
    with OpenSlideReader(path) as a, OpenSlideReader(copy) as b, OpenSlideReader(other) as c:
        assert a.slide_id == b.slide_id
        assert a.slide_id != c.slide_id
        assert len(a.slide_id) == 16 and int(a.slide_id, 16) >= 0


@pytest.mark.skipif(not CMU_SLIDE.is_file(), reason=f"real slide not found at {CMU_SLIDE}")
def test_real_svs_has_known_size_and_mpp() -> None:
    with OpenSlideReader(CMU_SLIDE) as reader:
        assert reader.dimensions == (2220, 2967)
        assert reader.mpp == pytest.approx(0.499, abs=1e-3)
        assert reader.read_region(1000, 1000, 64, 64).shape == (64, 64, 3)


# --- slides broken as copies and scanners break them -----------------------------------------------------

@pytest.fixture
def demo_tiff(tmp_path: Path) -> Path:
    """The demo slide: a 3-level pyramidal tiled TIFF at 0.25 um/px that OpenSlide opens as generic-tiff."""
    from tests.broken_slides import ihc_image, write_slide

    return write_slide(tmp_path / "demo.tiff", ihc_image())


def test_directory_is_refused_with_a_hint(tmp_path: Path) -> None:
    folder = tmp_path / "slide.svs"
    folder.mkdir()
    with pytest.raises(SlideError, match=r"slide\.svs is a directory; pass the slide file itself"):
        OpenSlideReader(folder)


def test_empty_file_says_the_copy_did_not_finish(tmp_path: Path) -> None:
    path = tmp_path / "empty.svs"
    path.touch()
    with pytest.raises(SlideError, match=r"empty\.svs is empty \(0 bytes\).*copy it again"):
        OpenSlideReader(path)


@pytest.mark.parametrize("fraction", [0.5, 0.9])
def test_truncated_pyramidal_tiff_is_refused_at_open(demo_tiff: Path, tmp_path: Path, fraction: float) -> None:
    from tests.broken_slides import truncated_copy

    cut = truncated_copy(demo_tiff, tmp_path / "cut.tiff", fraction)
    with pytest.raises(SlideError, match=r"cut\.tiff .*truncated or corrupt.*copy it again"):
        OpenSlideReader(cut)


@pytest.mark.parametrize("name", ["random.svs", "random.ndpi", "random.tiff"])
def test_random_bytes_with_a_slide_extension_are_called_corrupt(tmp_path: Path, name: str) -> None:
    path = tmp_path / name
    path.write_bytes(np.random.default_rng(0).integers(0, 256, 50_000, dtype=np.uint8).tobytes())
    with pytest.raises(SlideError, match="corrupt.*copy it again") as info:
        OpenSlideReader(path)
    assert name in str(info.value)


def test_unknown_format_names_its_extension_and_what_is_accepted(tmp_path: Path) -> None:
    path = tmp_path / "notes.txt"
    path.write_text("patient 17, block B\n" * 50)
    with pytest.raises(SlideError, match=r"extension '\.txt'.*pass an SVS/NDPI/MRXS/pyramidal TIFF slide"):
        OpenSlideReader(path)


def test_plain_jpeg_opens_as_a_one_level_image(tmp_path: Path) -> None:
    path = tmp_path / "field.jpg"
    Image.fromarray(_gradient_rgb(120, 160)).save(path, quality=95)
    with OpenSlideReader(path, mpp=0.5) as reader:
        assert reader.dimensions == (160, 120) and reader.read_region(0, 0, 16, 16).shape == (16, 16, 3)
    with OpenSlideReader(path) as reader, pytest.raises(SlideError, match="read as a plain image.*pass --mpp"):
        reader.require_mpp()


def test_truncated_png_is_refused_at_open_not_mid_run(png_slide, tmp_path: Path) -> None:
    path, _ = png_slide
    cut = tmp_path / "cut.png"
    cut.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    with pytest.raises(SlideError, match=r"cut\.png is a PNG image 400x300 px that cannot be decoded.*truncated"):
        OpenSlideReader(cut)


def test_plain_image_too_large_to_hold_suggests_a_pyramidal_tiff(png_slide, monkeypatch) -> None:
    path, _ = png_slide
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)  # Pillow's guard, as a 100k x 100k PNG would trip it
    with pytest.raises(SlideError, match="too large to hold in memory.*pyramidal TIFF"):
        OpenSlideReader(path)


def test_tile_that_fails_to_decode_deep_inside_names_the_slide_and_region(tmp_path: Path) -> None:
    from tests.broken_slides import corrupt_level0_tile, ihc_image, write_slide

    path = write_slide(tmp_path / "deep.tiff", ihc_image(repeat=4))  # 2048 px
    tx, ty, tw, th = corrupt_level0_tile(path, 1100, 700)
    with OpenSlideReader(path) as reader:
        thumb, downsample = reader.thumbnail(1024)  # opening and the thumbnail (from level 1) still work
        assert thumb.shape == (1024, 1024, 3) and downsample == pytest.approx(2.0)
        assert reader.read_region(0, 0, 512, 512).shape == (512, 512, 3)
        with pytest.raises(SlideError) as info:
            reader.read_region(tx - 10, ty - 10, 64, 64)
    message = str(info.value)
    assert "deep.tiff" in message and f"x0={tx - 10} y0={ty - 10} 64x64" in message
    assert "truncated or corrupt" in message and "\n" not in message
