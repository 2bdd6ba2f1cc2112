"""Slide-scale preprocessing: regions cover every window once, region parts merge into what one pass gives,
and a part on disk is never made again."""

import shutil

import numpy as np
import pytest
from PIL import Image

from adapters.slide_reader import OpenSlideReader
from preprocess.features.featurize import cell_patch_px, extract_patches, make_featurizer
from preprocess.layout import DataLayout
from preprocess.nuclei.segment import segment_slide, tissue_windows
from preprocess.settings import PreprocessSettings
from preprocess.stages import merge_parts, plan_slide, process_region, recipe_key
from preprocess.tiles.regions import RegionCells, build_cell_table, merge_region_cells, plan_regions

MPP = 0.25


@pytest.fixture(scope="module")
def slide_path(tmp_path_factory):
    """A 1280 x 1024 slide: scikit-image's IHC image mirrored 2.5 x 2 times, so nuclei straddle window borders."""
    from skimage import data

    ihc = data.immunohistochemistry()
    row = np.concatenate([ihc, ihc[:, ::-1], ihc[:, :256]], axis=1)
    path = tmp_path_factory.mktemp("slide") / "mirrored-ihc.png"
    Image.fromarray(np.concatenate([row, row[::-1]], axis=0)).save(path)
    return path


def _settings(tmp_path, **overrides) -> PreprocessSettings:
    values = dict(data_dir=tmp_path / "data", ls_files_root=tmp_path / "files", mpp=MPP, window_px=256,
                  region_windows=2, featurizer="handcrafted", progress=False)
    return PreprocessSettings(**{**values, **overrides})


def _run_regions(reader, settings):
    layout = DataLayout(settings.data_dir, settings.ls_files_root)
    plan = plan_slide(reader, settings, layout)
    stats = [process_region(reader, plan, region, settings) for region in plan.regions]
    return plan, stats


@pytest.fixture(scope="module")
def processed(slide_path, tmp_path_factory):
    """The slide processed region by region once: (settings, plan, stats of each region)."""
    settings = _settings(tmp_path_factory.mktemp("processed"))
    with OpenSlideReader(slide_path, mpp=MPP) as reader:
        plan, stats = _run_regions(reader, settings)
    return settings, plan, stats


def test_regions_hold_every_window_once_with_ids_from_the_grid():
    windows = [(x, y, 100, 100) for y in range(0, 500, 100) for x in range(0, 300, 100) if (x, y) != (100, 200)]
    regions = plan_regions(windows, window_px=100, region_windows=2)
    held = [w for r in regions for w in r.windows]
    assert sorted(held) == sorted(windows) and len(held) == len(set(held))
    assert [r.region_id for r in regions] == ["c0-r0", "c1-r0", "c0-r1", "c1-r1", "c0-r2", "c1-r2"]
    assert regions[0].windows == ((0, 0, 100, 100), (100, 0, 100, 100), (0, 100, 100, 100), (100, 100, 100, 100))
    assert plan_regions(list(reversed(windows)), 100, 2) == regions, "ids and order must not depend on input order"


def test_a_window_off_the_grid_is_refused():
    with pytest.raises(ValueError, match="window grid"):
        plan_regions([(50, 0, 100, 100)], window_px=100, region_windows=2)


def test_merge_sorts_cells_by_row_then_column_and_refuses_mixed_feature_sizes():
    a = RegionCells([[5.0, 9.0], [1.0, 1.0]], [[5, 9, 2, 2], [1, 1, 2, 2]], [[0.0], [1.0]])
    b = RegionCells([[3.0, 1.0]], [[3, 1, 2, 2]], [[2.0]])
    merged = merge_region_cells([a, b])
    assert merged.centroids_xy.tolist() == [[1.0, 1.0], [3.0, 1.0], [5.0, 9.0]]
    assert merged.features[:, 0].tolist() == [1.0, 2.0, 0.0] and merged.boxes[:, 0].tolist() == [1, 3, 5]
    with pytest.raises(ValueError, match="feature sizes"):
        merge_region_cells([a, RegionCells([[0.0, 0.0]], [[0, 0, 1, 1]], [[0.0, 0.0]])])


def test_merged_regions_equal_a_single_pass_over_the_slide(slide_path, processed):
    settings, plan, _ = processed
    with OpenSlideReader(slide_path, mpp=MPP) as reader:
        merged = merge_parts(reader, plan)
        nuclei = segment_slide(reader, plan.tissue_mask, plan.mask_downsample, window_px=256, progress=False)
        patches = extract_patches(reader, nuclei.centroids_xy, cell_patch_px(MPP, settings.patch_um))
        features = make_featurizer("handcrafted", patch_um=settings.patch_um).embed(patches)
    assert len(plan.regions) == 6 and len(merged) == len(nuclei) > 300
    np.testing.assert_array_equal(merged.centroids_xy, nuclei.centroids_xy)
    np.testing.assert_array_equal(merged.boxes, nuclei.boxes)
    np.testing.assert_allclose(merged.features, features, rtol=1e-5, atol=1e-6)


def test_every_cell_is_in_exactly_one_region_and_one_tile(slide_path, processed):
    _, plan, stats = processed
    with OpenSlideReader(slide_path, mpp=MPP) as reader:
        table = build_cell_table(reader.slide_id, merge_parts(reader, plan), cells_per_task=20)
    for region in plan.regions:
        with np.load(plan.part_path(region.region_id)) as part:
            x, y = part["centroids_xy"].T
        inside = np.zeros(len(x), int)
        for x0, y0, w, h in region.windows:
            inside += (x >= x0) & (x < x0 + w) & (y >= y0) & (y < y0 + h)
        assert (inside == 1).all(), f"region {region.region_id} holds a cell outside its windows"
    assert sum(s.n_cells for s in stats) == len(table)
    assert len(set(table.cell_ids.tolist())) == len(table), "a cell on a region border came out twice"
    assert len(table.tile_ids) == len(table) and len(np.unique(table.tile_ids)) > 1


def test_a_part_on_disk_is_not_made_again(slide_path, processed, tmp_path):
    settings, done, first = processed
    shutil.copytree(settings.data_dir, tmp_path / "data")
    settings = settings.model_copy(update={"data_dir": tmp_path / "data"})
    with OpenSlideReader(slide_path, mpp=MPP) as reader:
        plan = plan_slide(reader, settings, DataLayout(settings.data_dir, settings.ls_files_root))
        assert plan.parts_dir != done.parts_dir and plan.missing() == []
        made_at = {r.region_id: plan.part_path(r.region_id).stat().st_mtime_ns for r in plan.regions}
        before = merge_parts(reader, plan)
        plan.part_path("c1-r0").unlink()  # as if the run was killed while on this region
        assert plan.missing() == ["c1-r0"]
        again = [process_region(reader, plan, region, settings) for region in plan.regions]
        after = merge_parts(reader, plan)
    assert not any(s.skipped for s in first)
    assert [s.region_id for s in again if not s.skipped] == ["c1-r0"]
    for region_id, mtime in made_at.items():
        if region_id != "c1-r0":
            assert plan.part_path(region_id).stat().st_mtime_ns == mtime
    np.testing.assert_array_equal(after.centroids_xy, before.centroids_xy)
    np.testing.assert_array_equal(after.features, before.features)


def test_parts_are_keyed_by_the_recipe_but_not_by_the_task_size(tmp_path):
    base = _settings(tmp_path)
    assert recipe_key(base) == recipe_key(_settings(tmp_path, cells_per_task=50))
    assert recipe_key(base) != recipe_key(_settings(tmp_path, patch_um=30.0))
    assert recipe_key(base) != recipe_key(_settings(tmp_path, region_windows=3))
    assert recipe_key(base) != recipe_key(_settings(tmp_path, max_blur=1.0))  # focus check off: other cells


def test_merging_with_a_region_missing_names_it(slide_path, tmp_path):
    from preprocess.errors import PreprocessError

    settings = _settings(tmp_path)
    with OpenSlideReader(slide_path, mpp=MPP) as reader:
        plan = plan_slide(reader, settings, DataLayout(settings.data_dir, settings.ls_files_root))
        process_region(reader, plan, plan.regions[0], settings)
        with pytest.raises(PreprocessError, match=f"5 of 6 regions.*{plan.regions[1].region_id}"):
            merge_parts(reader, plan)


def test_tissue_windows_are_on_the_window_grid():
    mask = np.zeros((10, 10), bool)
    mask[2:4, 5:9] = True
    windows = list(tissue_windows(mask, 100.0, (1000, 1000), 256))
    assert windows and all(x % 256 == 0 and y % 256 == 0 for x, y, _, _ in windows)


def test_queued_jobs_carry_every_setting_that_decides_a_part(tmp_path):
    from preprocess.queue.jobs import job_settings
    from preprocess.stages import part_recipe

    settings = _settings(tmp_path, patch_um=25.0, region_windows=3, max_blur=0.7)
    rebuilt = PreprocessSettings(**job_settings(settings), data_dir=tmp_path / "elsewhere")
    assert part_recipe(rebuilt) == part_recipe(settings) and recipe_key(rebuilt) == recipe_key(settings)


def test_a_pluggable_encoder_embeds_every_cell_of_a_region_and_keys_its_parts(slide_path, tmp_path, processed):
    import torch
    import torchvision

    weights = tmp_path / "mnv3.pt"
    torch.save(torchvision.models.mobilenet_v3_small().state_dict(), weights)
    settings = _settings(tmp_path, featurizer="encoder", encoder="torchvision:mobilenet_v3_small",
                         checkpoint=weights, encoder_input_px=32)
    with OpenSlideReader(slide_path, mpp=MPP) as reader:
        layout = DataLayout(settings.data_dir, settings.ls_files_root)
        plan = plan_slide(reader, settings, layout)
        process_region(reader, plan, plan.regions[0], settings)
        part = np.load(plan.part_path(plan.regions[0].region_id))
    assert part["features"].shape == (len(part["centroids_xy"]), 1024) and len(part["centroids_xy"]) > 0
    assert recipe_key(settings) != recipe_key(processed[0])  # parts of another featurizer are never reused
