"""``make up``'s Label Studio on PostgreSQL under gunicorn: it migrates a new cluster, serves the API, the UI's
assets and scripted annotators, keeps two annotators on different tasks, and a second start keeps the cluster.

Skipped with a reason where PostgreSQL is not installed (fails under CI=true, where it must be)."""

from __future__ import annotations

import secrets
import shutil
import tempfile
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import requests
from annotator import create_user, login
from conftest import ADMIN_EMAIL, ADMIN_PASSWORD, ADMIN_TOKEN, RECT_CONFIG, unavailable

from scripts import postgres, services

pytestmark = pytest.mark.integration


@dataclass(frozen=True)
class PostgresLabelStudio:
    url: str
    api_key: str
    data_dir: Path
    files_root: Path
    ls_bin: Path
    database: dict
    pg_pid: int


@pytest.fixture(scope="module")
def pg_label_studio() -> Iterator[PostgresLabelStudio]:
    try:
        binaries, ls_bin = postgres.find_postgres(), services.find_label_studio()
    except services.ServiceUnavailable as exc:
        unavailable(str(exc))
    root = Path(tempfile.mkdtemp(prefix="hali-pg-test-"))  # not pytest's tmp: the postgres user must reach it
    root.chmod(0o755)
    pg_port, password = services.free_port(), secrets.token_urlsafe(12)
    pg = postgres.start_postgres(binaries, pg_port, root / "pg" / "data", password)
    database = postgres.label_studio_db_env(pg_port, password)
    port = services.free_port()
    try:
        ls = services.start_label_studio(port, root / "ls", root / "files", ADMIN_EMAIL, ADMIN_PASSWORD,
                                         ADMIN_TOKEN, ls_bin, database=database, gunicorn_workers=2)
    except BaseException:
        postgres.stop_postgres(pg.pid)
        raise
    yield PostgresLabelStudio(f"http://{services.LOOPBACK}:{port}", ADMIN_TOKEN, root / "ls", root / "files",
                              ls_bin, database, pg.pid)
    services.stop_process(ls)
    postgres.stop_postgres(pg.pid)
    shutil.rmtree(root, ignore_errors=True)


def _api(server: PostgresLabelStudio) -> requests.Session:
    session = requests.Session()
    session.trust_env = False
    session.headers["Authorization"] = f"Token {server.api_key}"
    return session


def _annotator(server: PostgresLabelStudio) -> requests.Session:
    email, password = f"reader-{secrets.token_hex(4)}@hali.test", secrets.token_urlsafe(12)
    create_user(server, email)
    services.reset_label_studio_password(server.data_dir, server.files_root, email, password, server.ls_bin,
                                         database=server.database)
    return login(server.url, email, password)


def test_label_studio_runs_under_gunicorn_on_postgresql(pg_label_studio):
    cmdline = Path(f"/proc/{pg_label_studio.pg_pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
    assert "postgres" in cmdline
    api = _api(pg_label_studio)
    project = api.post(f"{pg_label_studio.url}/api/projects/", json={"title": "on pg", "label_config": RECT_CONFIG})
    assert project.status_code == 201, project.text
    assert api.get(f"{pg_label_studio.url}/api/projects/{project.json()['id']}/").json()["title"] == "on pg"


def test_the_ui_pages_and_their_assets_load_under_gunicorn(pg_label_studio):
    page = requests.get(f"{pg_label_studio.url}/user/login/", timeout=30)
    assert page.status_code == 200
    assets = [a for a in page.text.split('"') if a.startswith("/static/") and a.endswith((".css", ".js"))]
    assert assets, "the login page links no static CSS or JS"
    for asset in assets:
        response = requests.get(f"{pg_label_studio.url}{asset}", timeout=30)
        assert response.status_code == 200 and len(response.content) > 100, asset


def test_two_annotators_taking_tasks_at_once_get_different_tasks(pg_label_studio):
    api = _api(pg_label_studio)
    pid = api.post(f"{pg_label_studio.url}/api/projects/",
                   json={"title": "pg locks", "label_config": RECT_CONFIG}).json()["id"]
    api.post(f"{pg_label_studio.url}/api/projects/{pid}/import",
             json=[{"image": f"/static/t{i}.png"} for i in range(8)]).raise_for_status()
    readers = [_annotator(pg_label_studio) for _ in range(4)]
    served: list[int] = []
    barrier = threading.Barrier(len(readers))

    def take(session: requests.Session) -> None:
        barrier.wait()
        response = session.get(f"{pg_label_studio.url}/api/projects/{pid}/next", timeout=60)
        served.append(response.json()["id"])

    threads = [threading.Thread(target=take, args=(r,)) for r in readers]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(served) == 4 and len(set(served)) == 4, f"one task went to two annotators: {served}"


def test_a_second_start_keeps_the_cluster_and_refuses_a_taken_port(pg_label_studio):
    api = _api(pg_label_studio)
    api.post(f"{pg_label_studio.url}/api/projects/", json={"title": "kept", "label_config": RECT_CONFIG})
    port = int(pg_label_studio.database["POSTGRE_PORT"])
    data_dir = pg_label_studio.data_dir.parent / "pg" / "data"
    assert not postgres.init_cluster(postgres.find_postgres(), data_dir, "unused"), "an existing cluster is kept"
    with pytest.raises(services.StackError, match=f"port {port} is taken"):
        postgres.start_postgres(postgres.find_postgres(), port, data_dir, "unused")
    titles = [p["title"] for p in api.get(f"{pg_label_studio.url}/api/projects/").json()["results"]]
    assert "kept" in titles
