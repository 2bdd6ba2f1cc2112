"""Fuzzed requests (hypothesis) on every route of the backend app, on a real redis-server, with basic auth and the
webhook secret on: never a 5xx, never a secret or a filesystem path in a body. ``bench/bench_fuzz.py`` sends 10,000
of the same requests to a served backend and watches its memory; this sends 300 on every CI run."""

from __future__ import annotations

import base64

import pytest
from hypothesis import HealthCheck, given, settings
from pydantic import SecretStr

from bench.fuzzing import FuzzRequest, build_world, problems, requests_on, route_rules
from ml_backend.http.app import create_app
from ml_backend.settings import BackendSettings

pytestmark = pytest.mark.integration
PASSWORD, SECRET, LS_KEY = "fuzz-test-pw-41c2", "fuzz-test-hook-8e1f", "fuzzlskey" + "1" * 31
AUTH = {"Authorization": "Basic " + base64.b64encode(f"hali:{PASSWORD}".encode()).decode()}


@pytest.fixture
def world_and_client(redis_url, redis_conn, tmp_path):
    settings = BackendSettings(data_dir=tmp_path / "data", ls_files_root=tmp_path / "files", redis_url=redis_url,
                               queue_name="hali-fuzz", ls_url="http://127.0.0.1:9", ls_api_key=LS_KEY,
                               backend_password=SecretStr(PASSWORD), webhook_secret=SecretStr(SECRET))
    world = build_world(settings.data_dir, settings.ls_files_root, (LS_KEY, redis_url), PASSWORD, SECRET)
    app = create_app(settings)
    return world, app.test_client(), route_rules(app.url_map)


def test_every_route_is_fuzzed(world_and_client):
    _, _, rules = world_and_client
    assert {rule for rule, _ in rules} >= {"/health", "/setup", "/predict", "/webhook", "/versions", "/metrics",
                                           "/status/<int:project_id>", "/dashboard/<int:project_id>"}


def test_fuzzed_requests_get_no_5xx_and_show_no_secret_or_path(world_and_client):
    world, client, rules = world_and_client

    @settings(max_examples=300, deadline=None, derandomize=True, database=None,
              suppress_health_check=list(HealthCheck))
    @given(requests_on(world, rules))
    def one(req: FuzzRequest) -> None:
        r = client.open(req.path, method=req.method, query_string=req.query, headers=req.headers, data=req.body)
        assert not problems(req, r.status_code, r.get_data(), world), r.get_data(as_text=True)[:500]

    one()


@pytest.mark.parametrize("body", [{"tasks": [1]}, {"tasks": [None, {}]}, {"tasks": [], "label_config": ["x"]},
                                  {"tasks": [], "label_config": {"a": 1}}, {"tasks": [], "label_config": 5}],
                         ids=["task-int", "task-null", "config-list", "config-object", "config-int"])
def test_predict_with_a_task_or_a_label_config_of_the_wrong_type_is_a_400(world_and_client, body):
    """Found by bench/bench_fuzz.py: these were 500s (AttributeError, TypeError in the XML parser)."""
    _, client, _ = world_and_client
    r = client.post("/predict", json={"project": "7.1", **body}, headers=AUTH)
    assert r.status_code == 400 and ("tasks" in r.get_json()["error"] or "label_config" in r.get_json()["error"])


def test_a_coverage_map_with_a_slide_id_too_long_for_a_file_name_is_a_404(world_and_client):
    """Found by bench/bench_fuzz.py: a 300-character slide id was a 500 (OSError: file name too long)."""
    _, client, _ = world_and_client
    r = client.get(f"/dashboard/7/coverage/{'x' * 300}.png", headers=AUTH)
    assert r.status_code == 404 and "no coverage map" in r.get_json()["error"]
