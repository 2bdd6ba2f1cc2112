"""`hali preprocess` on slides that open fine but fail to decode part way, against a real Label Studio.

The message names the slide and the level-0 region, and what was finished before the failure stays: the
cell table and the tile images written so far are reused by the next run, which imports every tile once.
"""

from __future__ import annotations

import json
import re
import shutil

import openslide
import pytest

from adapters.slide_reader import OpenSlideReader
from ml_backend.cli import main
from preprocess.layout import DataLayout
from tests.broken_slides import corrupt_level0_tile, ihc_image, write_slide

pytestmark = pytest.mark.integration
PROJECT = "HALI bad slides"


@pytest.fixture
def env(label_studio, ls_client, tmp_path, monkeypatch):
    for key, value in {"HALI_LS_URL": label_studio.url, "HALI_LS_API_KEY": label_studio.api_key,
                       "HALI_LS_FILES_ROOT": str(label_studio.files_root),
                       "HALI_DATA_DIR": str(tmp_path / "data")}.items():
        monkeypatch.setenv(key, value)
    yield tmp_path / "data"
    for project in ls_client.projects.list(title=PROJECT):
        ls_client.projects.delete(id=project.id)


def _preprocess(capsys, slide) -> tuple[int, str, str]:
    code = main(["preprocess", str(slide), "--project", PROJECT, "--classes", "Positive,Negative", "--no-progress"])
    out = capsys.readouterr()
    return code, out.out, out.err


def _task_count(ls_client) -> int:
    (project,) = [p for p in ls_client.projects.list(title=PROJECT) if p.title == PROJECT]
    return ls_client.projects.get(id=project.id).task_number


def test_tile_that_fails_to_decode_mid_run_names_the_slide_and_region(env, tmp_path, capsys):
    slide = write_slide(tmp_path / "deep.tiff", ihc_image(repeat=8))  # 4096 px; the thumbnail reads level 1
    tx, ty, _, _ = corrupt_level0_tile(slide, 1100, 700)
    code, _, err = _preprocess(capsys, slide)
    assert code == 2 and len(err.strip().splitlines()) == 1 and "Traceback" not in err, err
    assert "deep.tiff failed to decode the level-0 region x0=" in err
    assert "truncated or corrupt" in err and "copy it again" in err


def test_read_failure_after_the_cell_table_keeps_it_and_the_tiles_written(env, tmp_path, label_studio, ls_client,
                                                                         capsys, monkeypatch):
    slide = write_slide(tmp_path / "flaky.tiff", ihc_image())
    with OpenSlideReader(slide) as reader:
        slide_id = reader.slide_id
    layout = DataLayout(env, label_studio.files_root)
    shutil.rmtree(layout.tiles_root / slide_id, ignore_errors=True)  # tiles of this slide from earlier tests
    real_read = openslide.OpenSlide.read_region
    reads_after_table: list[tuple[int, int]] = []

    def flaky_read(self, location, level, size):
        # A network share that starts failing once the cells are saved: two more reads work, the third fails.
        if layout.cells_path(slide_id).exists():
            reads_after_table.append(location)
            if len(reads_after_table) == 3:
                raise openslide.OpenSlideError("TIFFReadEncodedTile() failed: Input/output error")
        return real_read(self, location, level, size)

    monkeypatch.setattr(openslide.OpenSlide, "read_region", flaky_read)
    code, _, err = _preprocess(capsys, slide)
    assert code == 2 and len(err.strip().splitlines()) == 1, err
    x, y = reads_after_table[2]
    # tiles are rendered at HALI_TILE_MPP, so the failing read may be from a coarser pyramid level
    assert re.search(rf"flaky\.tiff failed to decode the level-\d+ region x0={x} y0={y} ", err), err
    assert "Input/output error" in err
    cells, tasks = layout.cells_path(slide_id), layout.tasks_path(slide_id)
    assert cells.is_file() and tasks.is_file(), "the finished cell table must stay"
    written = {p: p.stat().st_mtime_ns for p in (layout.tiles_root / slide_id).iterdir()}
    assert len(written) == 2 and all(p.suffix == ".png" and ".tmp" not in p.name for p in written), written
    table_made_at = cells.stat().st_mtime_ns

    monkeypatch.setattr(openslide.OpenSlide, "read_region", real_read)  # the share is back
    code, out, err = _preprocess(capsys, slide)
    n_tiles = len(json.loads(tasks.read_text())["tiles"])
    assert code == 0, err
    assert f"in {n_tiles} tasks ({n_tiles} new)" in out and _task_count(ls_client) == n_tiles
    assert cells.stat().st_mtime_ns == table_made_at, "the re-run must reuse the cell table"
    assert all(p.stat().st_mtime_ns == t for p, t in written.items()), "tiles written before must not be redone"
    assert len(list((layout.tiles_root / slide_id).glob("*.png"))) == n_tiles
