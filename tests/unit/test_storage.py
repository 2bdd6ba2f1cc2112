"""Output storage: keys, URIs, local round trips, and one clear message per S3 failure."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from botocore.exceptions import ClientError, EndpointConnectionError, NoCredentialsError

from adapters.errors import StorageError
from adapters.storage import LocalStorage, S3Storage, describe_s3_error, open_output_storage, parse_s3_url
from label_config import CellBox, TileTask
from preprocess.layout import (
    DataLayout,
    cells_key,
    read_cell_table,
    read_slide_meta,
    tasks_key,
    tile_key,
    write_cell_table,
    write_slide_meta,
)
from preprocess.tiles.cells import CellTable


def _tile(**changes) -> TileTask:
    base = dict(tile_id="abc-t1-2", slide_id="s" * 16, image="", x0=100, y0=200, width=300, height=150,
                downsample=1.0, mpp=0.25, cells=(CellBox("c1", 120, 210, 10, 12),))
    return TileTask(**{**base, **changes})


def _table(n: int = 5) -> CellTable:
    return CellTable(np.array([f"c{i}" for i in range(n)]), np.arange(4 * n).reshape(n, 4),
                     np.array(["t0"] * n), np.random.default_rng(0).normal(size=(n, 8)))


def test_keys_lay_out_one_tree_per_slide():
    assert cells_key("s1") == "slides/s1/cells.npz"
    assert tasks_key("s1") == "slides/s1/tasks.json"
    key = tile_key(_tile())
    assert key.startswith(f"hali/{'s' * 16}/abc-t1-2-") and key.endswith(".png")


def test_tile_key_changes_with_the_rendered_geometry_only():
    assert tile_key(_tile()) == tile_key(_tile(image="elsewhere", cells=()))
    assert tile_key(_tile()) != tile_key(_tile(width=150, height=75, downsample=2.0))
    assert tile_key(_tile()) != tile_key(_tile(x0=101))


def test_local_and_s3_keys_give_the_same_relative_layout():
    key = tile_key(_tile())
    local = LocalStorage("/srv/ls-files")
    s3 = S3Storage("bucket", "/runs/2026/", client=None)
    assert local.location(key) == f"/srv/ls-files/{key}"
    assert local.task_uri(key) == f"/data/local-files/?d={key}"
    assert s3.location(key) == s3.task_uri(key) == f"s3://bucket/runs/2026/{key}"
    assert S3Storage("bucket", "", client=None).task_uri(key) == f"s3://bucket/{key}"


@pytest.mark.parametrize("bad", ["", "/abs/key", "a/../b", "a//b", "./a"])
def test_keys_that_escape_the_root_are_refused(bad):
    with pytest.raises(ValueError, match="storage key"):
        LocalStorage("/tmp").path(bad)


def test_local_storage_round_trips_bytes_and_versions_change_on_rewrite(tmp_path: Path):
    store = LocalStorage(tmp_path)
    assert not store.exists("a/b.bin") and store.version("a/b.bin") is None
    store.put_bytes("a/b.bin", b"one")
    first = store.version("a/b.bin")
    store.put_bytes("a/b.bin", b"three")
    assert store.get_bytes("a/b.bin") == b"three" and store.version("a/b.bin") != first
    store.put_bytes("a/c.bin", b"x")
    store.put_bytes("other/d.bin", b"y")
    assert store.keys("a/") == {"a/b.bin", "a/c.bin"}
    assert not list(tmp_path.rglob("*.tmp")), "writes go through a temporary file that is renamed into place"


def test_missing_local_object_is_a_storage_error_naming_the_path(tmp_path: Path):
    with pytest.raises(StorageError, match="cells.npz"):
        read_cell_table(LocalStorage(tmp_path), "nope")


def test_cell_table_and_meta_round_trip_through_a_storage(tmp_path: Path):
    store = LocalStorage(tmp_path)
    table = _table()
    write_cell_table(store, "s1", table)
    write_slide_meta(store, "s1", {"mpp": 0.25, "tiles": []})
    back = read_cell_table(store, "s1")
    assert back.cell_ids.tolist() == table.cell_ids.tolist()
    np.testing.assert_array_equal(back.features, table.features)
    assert read_slide_meta(store, "s1") == {"mpp": 0.25, "tiles": []}
    # the default local layout is where DataLayout says, so older code paths still find the table
    assert (tmp_path / "slides/s1/cells.npz") == DataLayout(tmp_path, tmp_path).cells_path("s1")


def test_a_file_that_is_not_a_cell_table_is_a_storage_error(tmp_path: Path):
    store = LocalStorage(tmp_path)
    store.put_bytes(cells_key("s1"), b"not an npz")
    with pytest.raises(StorageError, match="re-run `hali preprocess`"):
        read_cell_table(store, "s1")


def test_storage_url_parses_bucket_and_prefix():
    assert parse_s3_url("s3://bucket/a/b/") == ("bucket", "a/b")
    assert parse_s3_url("s3://bucket") == ("bucket", "")
    for bad in ("http://bucket/x", "s3:///x", "/data/tiles"):
        with pytest.raises(StorageError, match="HALI_STORAGE_URL"):
            parse_s3_url(bad)


def test_no_storage_url_keeps_todays_local_layout(tmp_path: Path):
    storage = open_output_storage(None, tmp_path / "data", tmp_path / "files")
    assert isinstance(storage.tables, LocalStorage) and storage.tables.root == tmp_path / "data"
    assert isinstance(storage.tiles, LocalStorage) and storage.tiles.root == tmp_path / "files"
    assert storage.s3 is None
    storage.check()  # nothing to check locally


def test_s3_storage_url_builds_one_bucket_for_tables_and_tiles(tmp_path: Path, monkeypatch):
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "AKIDEXAMPLE")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "secret")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "eu-west-1")
    storage = open_output_storage("s3://slides/hali", tmp_path, tmp_path, "http://127.0.0.1:9000")
    assert storage.s3 is storage.tables is storage.tiles
    assert (storage.s3.bucket, storage.s3.prefix) == ("slides", "hali")
    access = storage.s3_access
    assert (access.endpoint_url, access.region, access.access_key_id) == ("http://127.0.0.1:9000", "eu-west-1",
                                                                         "AKIDEXAMPLE")
    assert "secret" not in repr(access)


def test_s3_failures_name_the_setting_to_fix():
    def msg(exc):
        return describe_s3_error(exc, "could not write s3://b/k", "b", "http://127.0.0.1:9000")

    denied = ClientError({"Error": {"Code": "InvalidAccessKeyId", "Message": "no such key"}}, "PutObject")
    assert "AWS_ACCESS_KEY_ID" in msg(denied) and "refused" in msg(denied)
    assert "AWS_ACCESS_KEY_ID" in msg(NoCredentialsError())
    missing = ClientError({"Error": {"Code": "NoSuchBucket"}}, "PutObject")
    assert "'b' does not exist" in msg(missing) and "HALI_STORAGE_URL" in msg(missing)
    down = EndpointConnectionError(endpoint_url="http://127.0.0.1:9000")
    assert "unreachable" in msg(down) and "HALI_S3_ENDPOINT_URL" in msg(down)
    head_404 = ClientError({"Error": {"Code": "404"}}, "HeadBucket")
    assert "does not exist" in describe_s3_error(head_404, "could not reach bucket s3://b", "b", "AWS S3", True)
    assert "no such object" in describe_s3_error(head_404, "could not read s3://b/k", "b", "AWS S3")
