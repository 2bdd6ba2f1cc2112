"""What a retrain gathers with array operations (ml_backend/retrain/cells.py), what a worker keeps between
retrains (the cell layout, the project's tiles), and the ranked pool of a large project."""

from __future__ import annotations

import json

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from adapters.storage import LocalStorage
from label_config import CellBox, TileTask
from ml_backend.labels import mirror
from ml_backend.model.context import smooth_proba, smooth_rows, spatial_neighbours
from ml_backend.retrain.cells import CellLayout, LayoutCache, first_rows, gather_cells, sample_open_tasks
from ml_backend.suggestions.context import CellFeatures
from ml_backend.suggestions.embeddings import EmbeddingIndex
from preprocess.layout import write_cell_table, write_slide_meta, write_task_map
from preprocess.tiles.cells import CellTable

TARGETS = ["Tumor", "Other", "Not a nucleus"]


def _tiles(n_tiles: int, per_tile: int, slide: str = "s1") -> dict[int, TileTask]:
    """Task ``10 + i`` holds cells ``{slide}-{i}-{j}``, laid out on a row per tile."""
    return {10 + i: TileTask(f"{slide}-t{i}", slide, "/x.png", 0, 100 * i, 100, 100, 1.0, 0.25,
                             tuple(CellBox(f"{slide}-{i}-{j}", 10 * j, 100 * i, 8, 8) for j in range(per_tile)))
            for i in range(n_tiles)}


def _table(tiles: dict[int, TileTask]) -> CellTable:
    """The tiles' cells in reverse order (a table's rows need not follow the tiles), feature 0 = the row."""
    cells = [(c, t.tile_id) for t in tiles.values() for c in t.cells][::-1]
    features = np.stack([np.arange(len(cells)), np.ones(len(cells))], axis=1).astype(np.float32)
    return CellTable(np.array([c.cell_id for c, _ in cells]), np.array([[c.x0, c.y0, c.w, c.h] for c, _ in cells]),
                     np.array([t for _, t in cells]), features)


def _features(tmp_path, tiles: dict[int, TileTask]) -> CellFeatures:
    storage = LocalStorage(tmp_path)
    write_cell_table(storage, "s1", _table(tiles))
    return CellFeatures(EmbeddingIndex(storage), storage, None)


def test_gather_keeps_every_open_cell_and_only_the_labelled_cells_of_closed_tasks(tmp_path):
    tiles = _tiles(4, 3)
    features = _features(tmp_path, tiles)
    labels = {"s1-0-1": "Tumor", "s1-2-0": "Other", "s1-2-2": "Not a nucleus"}
    cells = gather_cells(CellLayout.build(tiles, features), tiles, [11, 13], {10, 12}, labels, TARGETS, features)
    ids = [tiles[int(t)].cells[0].cell_id.rsplit("-", 1)[0] for t in cells.task_ids]
    assert ids == ["s1-0", "s1-1", "s1-1", "s1-1", "s1-2", "s1-2", "s1-3", "s1-3", "s1-3"]
    assert cells.y.tolist() == [0, -1, -1, -1, 1, 2, -1, -1, -1]
    table = features.index.table("s1")
    assert [table.cell_ids[int(r)] for r in cells.features[:, 0]] == \
        ["s1-0-1", "s1-1-0", "s1-1-1", "s1-1-2", "s1-2-0", "s1-2-2", "s1-3-0", "s1-3-1", "s1-3-2"]
    assert cells.rows.tolist() == cells.features[:, 0].astype(int).tolist()
    assert set(cells.slides.tolist()) == {"s1"}
    assert first_rows(cells) == {10: 0, 11: 1, 12: 4, 13: 6}


def test_the_layout_is_kept_until_the_tiles_or_the_cell_table_change(tmp_path):
    tiles = _tiles(3, 2)
    features = _features(tmp_path, tiles)
    cache = LayoutCache(max_projects=1)
    first = cache.get(1, tiles, features)
    assert cache.get(1, tiles, features) is first
    assert cache.get(1, dict(tiles), features) is first  # equal tiles (a copy without deleted tasks)
    assert cache.get(1, {10: tiles[10]}, features) is not first
    cache.get(2, tiles, features)
    assert cache.get(1, tiles, features) is not first  # one project kept: project 2 pushed it out


def test_project_tiles_are_parsed_once_until_a_file_changes(tmp_path):
    storage = LocalStorage(tmp_path)
    tiles = _tiles(2, 2)
    write_slide_meta(storage, "s1", {"slide_id": "s1", "tiles": [t.to_task_data() for t in tiles.values()]})
    write_task_map(storage, 7, "s1", {t.tile_id: task for task, t in tiles.items()})
    first = mirror.project_tiles(7, None, storage)
    assert first == tiles
    assert mirror.project_tiles(7, None, storage) is first
    path = tmp_path / "slides" / "s1" / "tasks.json"
    meta = json.loads(path.read_text())
    meta["tiles"] = meta["tiles"][:1]
    path.write_text(json.dumps(meta) + " ")  # another size: a new version even within the mtime's resolution
    assert set(mirror.project_tiles(7, None, storage)) == {10}


def test_a_small_project_ranks_every_open_task_and_a_large_one_a_seeded_sample():
    tiles = _tiles(100, 20)
    open_ids = sorted(tiles)[5:]
    assert sample_open_tasks(open_ids, [], tiles, 0, seed=1) == open_ids
    assert sample_open_tasks(open_ids, [], tiles, 20 * len(open_ids), seed=1) == open_ids
    pool = sample_open_tasks(open_ids, [20], tiles, 400, seed=1)
    assert pool == sorted(pool) and set(pool) <= set(open_ids) and 20 in pool
    assert 20 <= len(pool) <= 21
    assert pool == sample_open_tasks(open_ids, [20], tiles, 400, seed=1)
    assert pool != sample_open_tasks(open_ids, [20], tiles, 400, seed=2)


@settings(max_examples=30, deadline=None)
@given(st.integers(20, 200), st.floats(0.0, 0.99), st.integers(0, 2**31 - 1))
def test_smoothing_many_rows_over_the_whole_slide_equals_smoothing_them_alone(n, share, seed):
    rng = np.random.default_rng(seed)
    xy = rng.uniform(0, 1000, (n, 2))
    proba = rng.dirichlet(np.ones(3), n).astype(np.float32)
    nbrs = spatial_neighbours(xy, k=4)
    rows = np.sort(rng.choice(n, size=max(1, int(share * n)), replace=False))
    np.testing.assert_allclose(smooth_rows(lambda idx: proba[idx], nbrs, rows, 0.4),
                               smooth_proba(proba, nbrs, 0.4)[rows], rtol=1e-5, atol=1e-7)
