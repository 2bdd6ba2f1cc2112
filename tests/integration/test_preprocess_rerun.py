"""Running `hali preprocess` twice on one slide and project duplicates nothing."""

from __future__ import annotations

import pytest
from hali_backend import preprocess_settings
from PIL import Image

from adapters.label_studio import LabelStudioGateway
from preprocess.layout import DataLayout
from preprocess.run import run_preprocess

pytestmark = pytest.mark.integration


def test_second_run_reuses_the_cell_table_and_imports_nothing(label_studio, ls_client, tmp_path):
    from skimage import data

    slide = tmp_path / "ihc.png"
    Image.fromarray(data.immunohistochemistry()).save(slide)
    settings = preprocess_settings(data_dir=tmp_path / "data", ls_files_root=label_studio.files_root,
                                   classes="Positive,Negative", cells_per_task=20, mpp=0.25)
    gateway = LabelStudioGateway.connect(label_studio.url, label_studio.api_key)
    first = run_preprocess(slide, "HALI rerun", settings, gateway)
    cells = DataLayout(settings.data_dir, settings.ls_files_root).cells_path(first.slide_id)
    made_at = cells.stat().st_mtime_ns
    second = run_preprocess(slide, "HALI rerun", settings, gateway)
    try:
        assert (second.project_id, second.n_tiles, second.n_imported) == (first.project_id, first.n_tiles, 0)
        assert cells.stat().st_mtime_ns == made_at, "the cell table must be reused, not recomputed"
        assert ls_client.projects.get(id=first.project_id).task_number == first.n_tiles
    finally:
        ls_client.projects.delete(id=first.project_id)
