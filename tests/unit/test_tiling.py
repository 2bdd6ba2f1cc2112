"""Tile planning: every cell in exactly one tile, about ``cells_per_task`` cells per tile, reading order."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from preprocess.tiles.tiling import TilePlan, plan_tiles


def _uniform_cells(n: int, width: int, height: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return rng.random((n, 2)) * (width, height)


def _clustered_cells(seed: int = 0) -> np.ndarray:
    """Three dense blobs of different sizes on an otherwise empty 20000 x 15000 slide."""
    rng = np.random.default_rng(seed)
    centres = np.array([[3000, 3000], [12000, 5000], [8000, 12000]])
    blobs = zip(centres, (400, 900, 250), (3000, 5000, 800))
    return np.concatenate([c + rng.normal(0, sd, (n, 2)) for c, sd, n in blobs])


def _assert_partition(plan: TilePlan, xy: np.ndarray) -> None:
    assert plan.tile_index.shape == (len(xy),)
    assert (plan.tile_index >= 0).all() and (plan.tile_index < len(plan)).all()
    np.testing.assert_array_equal(plan.tile_origins, plan.grid * plan.tile_px)
    origin = plan.tile_origins[plan.tile_index]
    # A cell lies in its tile's square, or in a neighbouring square whose few cells were merged into it.
    assert ((xy >= origin - plan.tile_px) & (xy < origin + 2 * plan.tile_px)).all()
    assert (np.bincount(plan.tile_index, minlength=len(plan)) > 0).all(), "an empty tile was kept"


@pytest.mark.parametrize("cells_per_task", [10, 30, 80])
def test_uniform_cells_get_about_the_target_per_tile(cells_per_task: int) -> None:
    xy = _uniform_cells(6000, 8000, 6000)
    plan = plan_tiles(xy, cells_per_task)
    _assert_partition(plan, xy)
    assert cells_per_task / 1.5 <= len(xy) / len(plan) <= cells_per_task * 1.5


def test_clustered_cells_get_about_the_target_per_non_empty_tile() -> None:
    xy = _clustered_cells()
    plan = plan_tiles(xy, 40)
    _assert_partition(plan, xy)
    assert 40 / 1.5 <= len(xy) / len(plan) <= 40 * 1.5
    # Dense squares (a blob's core) are split, so no tile exceeds 1.5x the target and the median stays near it.
    counts = np.bincount(plan.tile_index)
    assert counts.max() <= 60 and 40 / 1.5 <= np.median(counts) <= 40


def test_tiles_are_in_reading_order() -> None:
    plan = plan_tiles(_clustered_cells(), 25)
    keys = [(row, col, part) for (col, row), part in zip(plan.grid, plan.part)]
    assert keys == sorted(keys)
    assert len(set(keys)) == len(keys)


def test_tile_side_is_clamped_to_the_bounds() -> None:
    sparse = _uniform_cells(20, 100_000, 100_000)
    dense = _uniform_cells(5000, 300, 300)
    assert plan_tiles(sparse, 50, min_tile_px=96, max_tile_px=1024).tile_px == 1024
    assert plan_tiles(dense, 5, min_tile_px=96, max_tile_px=1024).tile_px == 96


def test_same_cells_give_the_same_plan() -> None:
    xy = _clustered_cells()
    a, b = plan_tiles(xy, 30), plan_tiles(xy.copy(), 30)
    assert a.tile_px == b.tile_px
    np.testing.assert_array_equal(a.tile_index, b.tile_index)


def test_no_cells_give_an_empty_plan() -> None:
    plan = plan_tiles(np.zeros((0, 2)), 30)
    assert len(plan) == 0 and plan.tile_index.shape == (0,) and plan.grid.shape == (0, 2)


@pytest.mark.parametrize("bad", [0, -3])
def test_cells_per_task_below_one_is_rejected(bad: int) -> None:
    with pytest.raises(ValueError, match="cells_per_task"):
        plan_tiles(_uniform_cells(10, 100, 100), bad)


@settings(max_examples=40, deadline=None)
@given(
    xy=arrays(np.float64, st.tuples(st.integers(1, 300), st.just(2)), elements=st.floats(0, 50_000)),
    cells_per_task=st.integers(1, 200),
)
def test_every_cell_lies_in_exactly_one_non_empty_tile(xy: np.ndarray, cells_per_task: int) -> None:
    plan = plan_tiles(xy, cells_per_task)
    _assert_partition(plan, xy)
    assert 96 <= plan.tile_px <= 1024


def test_edge_tile_with_one_cell_joins_its_full_neighbour():
    rng = np.random.default_rng(0)
    full = rng.uniform(5, 95, size=(30, 2))  # grid square (0, 0) at 100 px
    straggler = np.array([[105.0, 50.0]])  # alone in square (1, 0)
    plan = plan_tiles(np.vstack([full, straggler]), cells_per_task=30, min_tile_px=100, max_tile_px=100)
    assert len(plan) == 1
    assert (plan.tile_index == 0).all()
