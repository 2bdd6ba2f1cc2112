"""CellTable round trips, id lookup, and deterministic cell and tile ids."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from preprocess.tiles.cells import CellTable, make_cell_id, make_tile_id

SLIDE_ID = "0123456789abcdef"


def _table(n: int = 5, dim: int = 8) -> CellTable:
    rng = np.random.default_rng(0)
    xy = rng.integers(0, 5000, (n, 2))
    return CellTable(
        cell_ids=np.array([make_cell_id(SLIDE_ID, x, y) for x, y in xy]),
        boxes=np.column_stack([xy - 6, np.full((n, 2), 12)]),
        tile_ids=np.array([make_tile_id(SLIDE_ID, i % 2, 0) for i in range(n)]),
        features=rng.normal(size=(n, dim)),
    )


def test_ids_are_deterministic_and_readable() -> None:
    assert make_cell_id(SLIDE_ID, 1030.4, 2050.6) == "0123456789-1030-2051"
    assert make_cell_id(SLIDE_ID, 1030.4, 2050.6) == make_cell_id(SLIDE_ID, 1030.0, 2051.0)
    assert make_tile_id(SLIDE_ID, 3, 7) == "0123456789-t3-7"


def test_fields_are_normalised_to_their_dtypes() -> None:
    table = _table()
    assert table.boxes.dtype == np.int32 and table.features.dtype == np.float32
    assert table.cell_ids.dtype.kind == "U" and len(table) == 5


def test_save_then_load_round_trips(tmp_path: Path) -> None:
    table = _table()
    path = tmp_path / "cells.npz"
    table.save(path)
    loaded = CellTable.load(path)
    for name in ("cell_ids", "boxes", "tile_ids", "features"):
        np.testing.assert_array_equal(getattr(loaded, name), getattr(table, name))
    assert [p.name for p in tmp_path.iterdir()] == ["cells.npz"], "a temporary file was left behind"


def test_save_replaces_an_existing_table(tmp_path: Path) -> None:
    path = tmp_path / "cells.npz"
    _table(n=5).save(path)
    _table(n=3).save(path)
    assert len(CellTable.load(path)) == 3


def test_index_of_finds_rows_in_the_order_asked() -> None:
    table = _table()
    ids = [table.cell_ids[3], table.cell_ids[0], table.cell_ids[3]]
    np.testing.assert_array_equal(table.index_of(ids), [3, 0, 3])


def test_index_of_an_unknown_id_names_it() -> None:
    with pytest.raises(KeyError, match="no-such-cell"):
        _table().index_of([_table().cell_ids[0], "no-such-cell"])


def test_index_of_tells_an_id_from_its_prefix_and_its_extensions() -> None:
    table = CellTable(["s-1-10", "s-1-1", "s-10-1"], np.zeros((3, 4)), ["t"] * 3, np.zeros((3, 2)))
    np.testing.assert_array_equal(table.index_of(["s-1-1", "s-10-1", "s-1-10"]), [1, 2, 0])
    for unknown in ("s-1-", "s-1-100", "a", "z"):
        with pytest.raises(KeyError, match=unknown):
            table.index_of([unknown])


def test_index_of_nothing_is_empty_and_an_empty_table_knows_no_id() -> None:
    empty = CellTable(np.array([], str), np.zeros((0, 4)), np.array([], str), np.zeros((0, 2)))
    assert _table().index_of([]).dtype == np.int64 and len(empty.index_of([])) == 0
    with pytest.raises(KeyError, match="c-0"):
        empty.index_of(["c-0"])


@given(st.lists(st.text("ab-019", min_size=1, max_size=6), min_size=1, max_size=30, unique=True), st.data())
def test_index_of_finds_every_row_of_any_table(ids: list[str], data) -> None:
    table = CellTable(ids, np.zeros((len(ids), 4)), ["t"] * len(ids), np.zeros((len(ids), 1)))
    asked = data.draw(st.lists(st.integers(0, len(ids) - 1), max_size=40))
    np.testing.assert_array_equal(table.index_of([ids[i] for i in asked]), np.array(asked, np.int64))


def test_fields_of_different_lengths_are_rejected() -> None:
    t = _table()
    with pytest.raises(ValueError, match="different lengths"):
        CellTable(t.cell_ids, t.boxes[:2], t.tile_ids, t.features)


def test_load_of_a_file_that_is_not_a_cell_table_says_so(tmp_path: Path) -> None:
    path = tmp_path / "other.npz"
    np.savez(path, something=np.zeros(3))
    with pytest.raises(ValueError, match="not a cell table"):
        CellTable.load(path)
