"""`hali preprocess` against a real Label Studio that blinks, goes away mid-import, or refuses the key.

Label Studio sits behind :class:`flaky_proxy.FlakyProxy`, which lets some import requests through, then
forwards one more but loses its answer (Label Studio did import that batch), and then either recovers at
once or stays down. Imports go 2 tasks per request so a small slide makes several batches.
"""

from __future__ import annotations

import json
from collections import Counter
from urllib.parse import urlsplit

import pytest
from flaky_proxy import FlakyProxy
from PIL import Image

from ml_backend.cli import main
from preprocess.layout import DataLayout

pytestmark = pytest.mark.integration
PROJECT = "HALI flaky LS"
BATCH = 2


def _is_task_import(method: str, path: str) -> bool:
    return method == "POST" and path.split("?")[0].rstrip("/").endswith("/import")


@pytest.fixture
def slide(tmp_path):
    from skimage import data

    path = tmp_path / "ihc.png"
    Image.fromarray(data.immunohistochemistry()).save(path)
    return path


@pytest.fixture
def env(label_studio, tmp_path, monkeypatch):
    values = {
        "HALI_LS_API_KEY": label_studio.api_key, "HALI_LS_FILES_ROOT": str(label_studio.files_root),
        "HALI_DATA_DIR": str(tmp_path / "data"), "HALI_LS_IMPORT_BATCH_SIZE": str(BATCH),
        "HALI_LS_RETRY_TRIES": "3", "HALI_LS_RETRY_FIRST_DELAY_S": "0.2",
    }
    for key, value in values.items():
        monkeypatch.setenv(key, value)
    return tmp_path / "data"


@pytest.fixture
def proxy_to(label_studio, monkeypatch, ls_client):
    """``proxy_to(cut_after, outage)``: a FlakyProxy to Label Studio that HALI_LS_URL points at."""
    parts = urlsplit(label_studio.url)
    proxies: list[FlakyProxy] = []

    def make(cut_after: int, outage: bool, failure: str = "drop") -> FlakyProxy:
        proxy = FlakyProxy((parts.hostname, parts.port), cut_after, _is_task_import, outage=outage, failure=failure)
        proxies.append(proxy)
        monkeypatch.setenv("HALI_LS_URL", proxy.url)
        return proxy

    yield make
    for proxy in proxies:
        proxy.close()
    for project in ls_client.projects.list(title=PROJECT):
        ls_client.projects.delete(id=project.id)


def _preprocess(capsys, slide) -> tuple[int, str, str]:
    code = main(["preprocess", str(slide), "--project", PROJECT, "--classes", "Positive,Negative", "--mpp", "0.25",
                 "--no-progress"])
    out = capsys.readouterr()
    return code, out.out, out.err


def _tile_ids_in_project(ls_client) -> list[str]:
    (project,) = [p for p in ls_client.projects.list(title=PROJECT) if p.title == PROJECT]
    tasks = ls_client.tasks.list(project=project.id, fields="all", include="id,data", page_size=1000)
    return [t.data["tile_id"] for t in tasks]


def _tile_ids_of_slide(data_dir) -> list[str]:
    (tasks_json,) = data_dir.glob("slides/*/tasks.json")
    return [t["tile_id"] for t in json.loads(tasks_json.read_text())["tiles"]]


@pytest.mark.parametrize("failure", ["drop", "503"], ids=["answer-lost", "503"])
def test_blip_mid_import_is_retried_without_importing_twice(env, slide, proxy_to, ls_client, capsys, failure):
    # "drop": the 2nd batch is imported but its answer is lost; "503": it is refused before reaching LS
    proxy = proxy_to(cut_after=1, outage=False, failure=failure)
    code, out, err = _preprocess(capsys, slide)
    assert code == 0, err
    assert proxy.dropped == 1, "the proxy never cut a request: the test did not exercise a retry"
    tiles = _tile_ids_of_slide(env)
    assert len(tiles) > 3 * BATCH
    in_project = _tile_ids_in_project(ls_client)
    assert sorted(in_project) == sorted(tiles), "each tile must be in the project exactly once"
    assert f"({len(tiles)} new)" in out


def test_outage_mid_import_stops_with_a_resumable_error_and_a_rerun_completes(
    env, slide, proxy_to, ls_client, capsys
):
    proxy = proxy_to(cut_after=2, outage=True)  # 2 batches answered, the 3rd imported unanswered, then down
    code, out, err = _preprocess(capsys, slide)
    tiles = _tile_ids_of_slide(env)
    assert code == 2 and proxy.dropped == 1
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err
    assert f"at least {2 * BATCH} of {len(tiles)} tasks are in" in err
    assert "Re-run the same command" in err and "skipped" in err
    assert Counter(_tile_ids_in_project(ls_client)) == Counter(tiles[: 3 * BATCH]), \
        "the batch whose answer was lost is in Label Studio, once"
    cells = DataLayout(env, env).cells_path(slide_id=next(env.glob("slides/*")).name)
    made_at = cells.stat().st_mtime_ns

    proxy.heal()
    code, out, err = _preprocess(capsys, slide)
    assert code == 0, err
    assert f"({len(tiles) - 3 * BATCH} new)" in out
    assert sorted(_tile_ids_in_project(ls_client)) == sorted(tiles), "each tile must be in the project exactly once"
    assert cells.stat().st_mtime_ns == made_at, "the re-run must reuse the cell table, not segment again"


def test_server_that_stops_answering_mid_import_is_given_up_on(env, slide, proxy_to, ls_client, capsys, monkeypatch):
    monkeypatch.setenv("HALI_LS_TIMEOUT_S", "2")
    proxy = proxy_to(cut_after=1, outage=True, failure="hang")  # after one batch, requests are never answered
    code, _, err = _preprocess(capsys, slide)
    assert code == 2 and proxy.dropped == 1 and len(err.strip().splitlines()) == 1, err
    assert "ReadTimeout" in err and "3 tries" in err and f"at least {BATCH} of" in err and "Re-run" in err
    proxy.heal()
    assert Counter(_tile_ids_in_project(ls_client)) == Counter(_tile_ids_of_slide(env)[:BATCH])


# A legacy token, a word, and a JWT-shaped refresh token that this server never issued.
_JWT_LIKE = "eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9.eyJ0b2tlbl90eXBlIjoicmVmcmVzaCIsImV4cCI6NDEwMjQ0NDgwMH0.c2ln"


@pytest.mark.parametrize("key", ["f" * 40, "not-a-token", _JWT_LIKE], ids=["hex", "word", "jwt"])
def test_wrong_api_key_says_to_check_it(env, slide, label_studio, monkeypatch, capsys, key):
    monkeypatch.setenv("HALI_LS_URL", label_studio.url)
    monkeypatch.setenv("HALI_LS_API_KEY", key)
    code, _, err = _preprocess(capsys, slide)
    assert code == 2 and len(err.strip().splitlines()) == 1, err
    assert "401" in err and "check HALI_LS_API_KEY" in err
