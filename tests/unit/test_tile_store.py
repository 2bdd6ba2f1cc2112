"""A worker's tiles kept as arrays (ml_backend/labels/tile_store.py) read as the dict of tiles they replace."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from adapters.storage import LocalStorage
from label_config import CellBox, TileTask
from ml_backend.dashboard.coverage import task_spans
from ml_backend.labels.tile_store import PackedTile, TileStore, cell_counts, slide_ids, without
from preprocess.layout import read_slide_meta, skip_tile, write_slide_meta


def _tile(i: int, n_cells: int, slide: str = "s1") -> TileTask:
    return TileTask(f"{slide}-t{i}", slide, f"/x/{i}.png", 100 * i, 7, 64, 48, 2.0, 0.25,
                    tuple(CellBox(f"{slide}-{i}-{j}-é", 1000 * i + j, 2 * j, 8 + j, 9) for j in range(n_cells)),
                    "keypoint" if i % 2 else "rectangle")


def _tiles(sizes: list[int]) -> dict[int, TileTask]:
    return {100 - i: _tile(i, n, slide=f"s{i % 2}") for i, n in enumerate(sizes)}


@given(st.lists(st.integers(0, 6), max_size=12))
def test_a_store_reads_as_the_dict_of_its_tiles(sizes):
    tiles = _tiles(sizes)
    store = TileStore.from_tiles(tiles.items())
    assert list(store) == list(tiles) and len(store) == len(tiles)
    assert all(store[t] == tile for t, tile in tiles.items())
    assert store == tiles and dict(store.items()) == tiles
    assert slide_ids(store) == slide_ids(tiles) == [t.slide_id for t in tiles.values()]
    assert cell_counts(store, tiles).tolist() == cell_counts(tiles, tiles).tolist() == sizes


def test_an_unknown_task_is_a_key_error_and_not_in_the_store():
    store = TileStore.from_tiles(_tiles([2]).items())
    assert 7 not in store and 100 in store
    with pytest.raises(KeyError):
        store[7]


def test_without_drops_the_tasks_and_their_cells_only():
    tiles = _tiles([3, 1, 4, 2])
    store = TileStore.from_tiles(tiles.items())
    kept = without(store, {99, 12345})
    assert isinstance(kept, TileStore)
    assert kept == {t: tile for t, tile in tiles.items() if t != 99}
    assert cell_counts(kept, kept).tolist() == [3, 4, 2]
    assert without(store, []) is store
    assert without(tiles, {99}) == {t: tile for t, tile in tiles.items() if t != 99}


def test_stores_of_the_same_tiles_are_equal_and_of_others_not():
    tiles = _tiles([3, 1])
    assert TileStore.from_tiles(tiles.items()) == TileStore.from_tiles(tiles.items())
    assert TileStore.from_tiles(tiles.items()) != TileStore.from_tiles(_tiles([3, 2]).items())



def test_tiles_packed_as_their_task_data_is_parsed_make_the_same_store(tmp_path):
    tiles = _tiles([3, 0, 2])
    storage = LocalStorage(tmp_path)
    write_slide_meta(storage, "s", {"slide_id": "s", "mpp": 0.5, "tiles": [t.to_task_data() for t in tiles.values()]})
    meta = read_slide_meta(storage, "s", PackedTile.from_task_data)
    assert meta["mpp"] == 0.5 and all(isinstance(p, PackedTile) for p in meta["tiles"])
    assert TileStore.from_tiles(zip(tiles, meta["tiles"])) == tiles
    assert read_slide_meta(storage, "s", skip_tile) == {"slide_id": "s", "mpp": 0.5, "tiles": [None] * 3}


def test_the_spans_of_a_stores_tasks_are_those_of_their_tiles():
    tiles = _tiles([3, 0, 1, 5])
    store = TileStore.from_tiles(tiles.items())
    ids = [97, 100, 98, 99, 100]
    np.testing.assert_array_equal(task_spans(store, ids), task_spans(tiles, ids))
    assert task_spans(store, [99])[0].tolist() == [100.0, 7.0, 100 + 64 * 2.0, 7 + 48 * 2.0]  # no cell: its window
