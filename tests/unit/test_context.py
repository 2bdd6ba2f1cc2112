"""Spatial context: neighbours inside a group, density in micrometres, smoothing over neighbours."""

import numpy as np
import pytest

from ml_backend.model.context import context_features, local_density, smooth_proba, spatial_neighbours


def ring(n: int = 8, radius_px: float = 10.0) -> np.ndarray:
    """A centre cell (index 0) and ``n`` cells on a circle around it: (n + 1, 2) as (x, y)."""
    angle = np.arange(n) * 2 * np.pi / n
    return np.r_[[[0.0, 0.0]], radius_px * np.c_[np.cos(angle), np.sin(angle)]]


def test_the_centre_of_a_ring_has_the_ring_as_neighbours():
    nbrs = spatial_neighbours(ring(), k=8)
    assert sorted(nbrs[0].tolist()) == list(range(1, 9))
    assert all(i not in row for i, row in enumerate(nbrs))  # never itself when enough cells exist


def test_cells_of_another_group_are_never_neighbours_and_lone_cells_repeat_themselves():
    xy = np.r_[ring(), [[1.0, 1.0], [500.0, 500.0]]]
    groups = np.r_[np.zeros(9, int), [1, 2]]
    nbrs = spatial_neighbours(xy, groups, k=8)
    assert (nbrs[:9] < 9).all()  # the cell at (1, 1) is nearest to the centre but of group 1
    assert (nbrs[9] == 9).all() and (nbrs[10] == 10).all()


def test_density_counts_cells_within_the_radius_in_micrometres():
    xy = ring(radius_px=10.0)  # 10 px = 2.5 um at 0.25 mpp
    assert local_density(xy, mpp=0.25, radius_um=3.0)[0] == 8
    assert local_density(xy, mpp=0.25, radius_um=2.0)[0] == 0
    assert local_density(xy, mpp=0.5, radius_um=6.0)[0] == 8


def test_context_features_are_own_then_neighbour_mean_then_density():
    xy = ring()
    features = np.arange(9, dtype=np.float32)[:, None]
    nbrs = spatial_neighbours(xy, k=8)
    out = context_features(features, nbrs, np.full(9, 3.0))
    assert out.shape == (9, 3)
    assert out[0].tolist() == [0.0, 4.5, 3.0]  # mean of 1..8


def test_smoothing_flips_a_lone_dissenter_and_keeps_rows_normalised():
    proba = np.tile([0.9, 0.1], (9, 1)).astype(np.float32)
    proba[0] = [0.4, 0.6]
    smoothed = smooth_proba(proba, spatial_neighbours(ring(), k=8), alpha=0.5)
    assert smoothed[0].argmax() == 0
    np.testing.assert_allclose(smoothed.sum(axis=1), 1.0, atol=1e-6)
    np.testing.assert_array_equal(smooth_proba(proba, spatial_neighbours(ring()), alpha=1.0), proba)


def test_bad_shapes_are_refused():
    with pytest.raises(ValueError, match="xy_px"):
        spatial_neighbours(np.zeros((3, 3)))
    with pytest.raises(ValueError, match="alpha"):
        smooth_proba(np.ones((2, 2)) / 2, np.zeros((2, 1), int), alpha=1.5)


def test_a_slide_table_gives_context_from_level0_boxes_and_mpp():
    from ml_backend.model.context import slide_context_features

    centres = ring(radius_px=20.0)
    boxes = np.c_[centres - 3.0, np.full((9, 2), 6.0)]  # (x0, y0, w, h) around each centre
    features = np.arange(9, dtype=np.float32)[:, None]
    out, nbrs = slide_context_features(features, boxes, mpp=0.25, k=8, radius_um=6.0)  # 20 px = 5 um
    assert out.shape == (9, 3) and out[0].tolist() == [0.0, 4.5, 8.0]
    assert sorted(nbrs[0].tolist()) == list(range(1, 9))
