"""Which superseded model versions keep their predictions for the grace (ml_backend/retrain/publish.py)."""

from __future__ import annotations

from ml_backend.model.store import ModelStore
from ml_backend.retrain.publish import _still_kept


def _saved(tmp_path, versions) -> ModelStore:
    store = ModelStore(tmp_path)
    for v in versions:
        store.sidecar_path(v).write_text("{}")
    return store


def test_superseded_versions_that_went_live_keep_their_grace(tmp_path):
    store = _saved(tmp_path, [1, 2, 3])
    assert _still_kept(store, live=3, keep_superseded_s=600) == {"hali-v0001", "hali-v0002"}
    assert _still_kept(store, live=3, keep_superseded_s=0) == set()


def test_a_saved_version_above_the_one_served_never_went_live_and_gets_no_grace(tmp_path):
    store = _saved(tmp_path, [1, 2, 3])  # v2's run was killed between its save and its switch: v1 was served
    assert _still_kept(store, live=3, keep_superseded_s=600, served=1) == {"hali-v0001"}
    assert _still_kept(store, live=3, keep_superseded_s=600, served=2) == {"hali-v0001", "hali-v0002"}
