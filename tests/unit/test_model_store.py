"""ModelStore: versioned heads with JSON sidecars and an atomic latest pointer."""

import json

import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from ml_backend.model.head import HeadClassifier
from ml_backend.model.store import ModelStore, ModelStoreError, parse_version_name, version_name


@pytest.fixture(scope="module")
def data() -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    return rng.normal(size=(60, 16)).astype(np.float32), np.arange(60) % 3


@pytest.fixture(scope="module")
def head(data) -> HeadClassifier:
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    fitted = HeadClassifier(n_classes=4, max_epochs=5).fit(*data)
    torch.set_num_threads(threads)
    return fitted


def test_save_then_load_round_trips_head_and_metadata(tmp_path, head, data):
    store = ModelStore(tmp_path)
    path = store.save(1, head, {"metrics": {"accuracy": 0.5}, "label_hash": "abc", "backbone": "resnet18"})
    assert path == tmp_path / "v0001.pt"
    loaded, meta = store.load(1)
    np.testing.assert_allclose(loaded.predict_proba(data[0]), head.predict_proba(data[0]), rtol=0, atol=1e-7)
    assert meta["version"] == 1 and meta["model_version"] == "hali-v0001"
    assert meta["metrics"] == {"accuracy": 0.5} and meta["backbone"] == "resnet18"
    assert meta["hyper_parameters"]["n_classes"] == 4 and meta["classes_seen"] == [0, 1, 2]
    assert "created_at" in meta


def test_empty_store_has_version_zero_and_no_model(tmp_path):
    store = ModelStore(tmp_path / "project")
    assert store.latest_version() == 0 and store.next_version() == 1
    with pytest.raises(ModelStoreError, match="no model saved"):
        store.load()


def test_latest_pointer_follows_the_last_save(tmp_path, head):
    store = ModelStore(tmp_path)
    store.save(store.next_version(), head, {})
    store.save(store.next_version(), head, {})
    assert store.latest_version() == 2
    assert json.loads((tmp_path / "latest.json").read_text()) == {"version": 2}
    assert store.load()[1]["version"] == 2


def test_next_version_skips_weights_left_without_a_sidecar(tmp_path, head):
    store = ModelStore(tmp_path)
    store.save(1, head, {})
    (tmp_path / "v0002.pt").write_bytes(b"interrupted save")
    assert store.latest_version() == 1
    assert store.next_version() == 3


def test_saving_at_or_below_the_latest_version_is_refused(tmp_path, head):
    store = ModelStore(tmp_path)
    store.save(2, head, {})
    for version in (1, 2):
        with pytest.raises(ModelStoreError, match="not above the latest"):
            store.save(version, head, {})


def test_saving_over_leftover_weights_is_refused(tmp_path, head):
    (tmp_path / "v0001.pt").write_bytes(b"interrupted save")
    with pytest.raises(ModelStoreError, match="v0001.pt exists"):
        ModelStore(tmp_path).save(1, head, {})


def test_corrupt_sidecar_raises_model_store_error_naming_the_path(tmp_path, head):
    store = ModelStore(tmp_path)
    store.save(1, head, {})
    (tmp_path / "v0001.json").write_text("{not json")
    with pytest.raises(ModelStoreError, match="v0001.json"):
        store.load(1)


def test_corrupt_weights_raise_model_store_error_naming_the_path(tmp_path, head):
    store = ModelStore(tmp_path)
    store.save(1, head, {})
    (tmp_path / "v0001.pt").write_bytes(b"\x00garbage")
    with pytest.raises(ModelStoreError, match="v0001.pt"):
        store.load(1)


def test_missing_weights_raise_model_store_error(tmp_path, head):
    store = ModelStore(tmp_path)
    store.save(1, head, {})
    (tmp_path / "v0001.pt").unlink()
    with pytest.raises(ModelStoreError, match="v0001.pt is missing"):
        store.load()


def test_corrupt_latest_pointer_raises_model_store_error(tmp_path):
    tmp_path.joinpath("latest.json").write_text('{"version": "two"}')
    with pytest.raises(ModelStoreError, match="latest.json"):
        ModelStore(tmp_path).latest_version()


def test_metadata_that_is_not_json_is_refused_before_anything_is_written(tmp_path, head):
    store = ModelStore(tmp_path)
    with pytest.raises(ModelStoreError, match="JSON"):
        store.save(1, head, {"when": object()})
    assert list(tmp_path.iterdir()) == []


def test_saving_leaves_no_temporary_files(tmp_path, head):
    ModelStore(tmp_path).save(1, head, {})
    assert sorted(p.name for p in tmp_path.iterdir()) == ["latest.json", "v0001.json", "v0001.pt"]


@given(st.integers(1, 10**6))
def test_version_name_parses_back(version):
    assert parse_version_name(version_name(version)) == version


def test_version_name_is_zero_padded_and_foreign_names_parse_to_none():
    assert version_name(7) == "hali-v0007"
    assert parse_version_name("INITIAL") is None and parse_version_name("hali-v7") is None


def test_a_reserved_version_is_never_handed_out_again_even_unsaved(tmp_path, head):
    store = ModelStore(tmp_path)
    first, second = store.reserve_version(), ModelStore(tmp_path).reserve_version()  # two workers
    assert (first, second) == (1, 2)
    assert store.reserve_version() == 3, "version 1 and 2 failed unsaved: their names stay taken"
    store.save(3, head, {})
    assert not (tmp_path / "v0003.reserved").exists() and store.reserve_version() == 4


def test_a_reservation_lands_above_the_versions_label_studio_knows(tmp_path):
    store = ModelStore(tmp_path)
    assert store.reserve_version(above=7) == 8
    assert store.reserve_version(above=2) == 9
