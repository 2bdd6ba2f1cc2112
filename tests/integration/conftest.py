"""Real services for integration tests, on free loopback ports, started once per session.

Fixtures:

- ``redis_url`` (session): ``redis://127.0.0.1:<port>/0`` of a real ``redis-server`` in a tmp dir.
- ``redis_conn`` (function): a ``redis.Redis`` on it, flushed before and after the test.
- ``label_studio`` (session): a :class:`LabelStudioServer` from ``.venv-ls`` with a tmp data dir and
  files root, an admin user and a legacy API token.
- ``ls_client`` (session): ``label_studio_sdk.LabelStudio`` logged in as that admin.
- ``fresh_project`` (function): ``fresh_project(label_config=RECT_CONFIG, title=None, **kwargs)``
  creates a project (deleted after the test) and returns the SDK's project.
- ``new_annotator`` (function): ``new_annotator(email=None, password=None) -> Annotator``, a new
  non-admin user logged in as the UI does (see ``annotator.py``).
- ``s3_server`` (session): :class:`S3Server`, moto's threaded S3 server on loopback with one IAM user whose
  keys it accepts. It checks credentials only inside ``s3_server.checking_credentials()`` (moto's IAM
  checks cannot verify presigned URLs, which Label Studio hands to browsers).
- ``s3_bucket`` (function): a new, empty bucket on it.

A missing service (no ``redis-server``, no ``.venv-ls``) skips with a reason, and fails when
``CI=true``. A migrated, empty Label Studio data dir is cached under ``.state/test-cache`` (keyed
on the ``label-studio`` executable) so later sessions start in seconds instead of about a minute.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import time
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from annotator import Annotator, make_annotator
from hali_backend import hali_env

from scripts import services

RECT_CONFIG = """<View>
  <Image name="image" value="$image" zoom="true"/>
  <RectangleLabels name="label" toName="image">
    <Label value="Positive" background="#d62728" hotkey="1"/>
    <Label value="Negative" background="#1f77b4" hotkey="2"/>
  </RectangleLabels>
</View>"""

# Loopback-only throwaway server: fixed credentials let the cached data dir be reused.
ADMIN_EMAIL = "admin@hali.test"
ADMIN_PASSWORD = "hali-test-admin"
ADMIN_TOKEN = hashlib.sha1(b"hali integration tests").hexdigest()  # 40 hex chars
TEST_CACHE_DIR = services.REPO_ROOT / ".state" / "test-cache"
_STARTUP_KEY = pytest.StashKey[str]()


@dataclass(frozen=True)
class LabelStudioServer:
    """A running Label Studio: where it listens, who the admin is, where its files live."""

    url: str
    api_key: str
    username: str
    password: str
    data_dir: Path
    files_root: Path
    ls_bin: Path


def unavailable(reason: str) -> None:
    """Skip the test for a missing service, or fail it under CI, where nothing may be missing."""
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(f"{reason} (CI=true: missing services fail instead of skipping)")
    pytest.skip(reason)


@pytest.fixture(scope="session")
def redis_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    port = services.free_port()
    try:
        proc = services.start_redis(port, tmp_path_factory.mktemp("redis"))
    except services.ServiceUnavailable as exc:
        unavailable(str(exc))
    yield f"redis://{services.LOOPBACK}:{port}/0"
    services.stop_process(proc)


@pytest.fixture
def redis_conn(redis_url: str):
    import redis

    conn = redis.Redis.from_url(redis_url)
    conn.flushall()
    yield conn
    conn.flushall()
    conn.close()


def _template_dir(ls_bin: Path) -> Path:
    """The cache entry for this Label Studio install (reinstalling rewrites the executable)."""
    key = hashlib.sha1(f"{ls_bin.resolve()}:{ls_bin.stat().st_mtime_ns}".encode()).hexdigest()[:12]
    return TEST_CACHE_DIR / f"label-studio-{key}"


def _build_template(ls_bin: Path, template: Path, files_root: Path) -> None:
    """Start Label Studio once on an empty data dir (migrations, admin user, token), stop it, and
    move the data dir into the cache atomically."""
    building = template.with_name(f"{template.name}.{uuid.uuid4().hex[:8]}.tmp")
    proc = services.start_label_studio(services.free_port(), building, files_root, ADMIN_EMAIL,
                                    ADMIN_PASSWORD, ADMIN_TOKEN, ls_bin)
    services.stop_process(proc)
    (building / "label-studio.log").unlink(missing_ok=True)
    try:
        building.rename(template)
    except OSError:  # another session built it first
        shutil.rmtree(building, ignore_errors=True)


@pytest.fixture(scope="session")
def label_studio(tmp_path_factory: pytest.TempPathFactory,
                 pytestconfig: pytest.Config) -> Iterator[LabelStudioServer]:
    try:
        ls_bin = services.find_label_studio()
    except services.ServiceUnavailable as exc:
        unavailable(str(exc))
    root = tmp_path_factory.mktemp("label-studio")
    data_dir, files_root = root / "data", root / "files"
    template = _template_dir(ls_bin)
    start = time.monotonic()
    cold = not template.exists()
    if cold:
        TEST_CACHE_DIR.mkdir(parents=True, exist_ok=True)
        _build_template(ls_bin, template, files_root)
    shutil.copytree(template, data_dir)
    port = services.free_port()
    proc = services.start_label_studio(port, data_dir, files_root, ADMIN_EMAIL, ADMIN_PASSWORD,
                                    ADMIN_TOKEN, ls_bin)
    pytestconfig.stash[_STARTUP_KEY] = (
        f"Label Studio ready in {time.monotonic() - start:.1f} s "
        f"({'cold: migrations, then a restart' if cold else 'from the cached data dir'}), "
        f"log {data_dir / 'label-studio.log'}")
    yield LabelStudioServer(url=f"http://{services.LOOPBACK}:{port}", api_key=ADMIN_TOKEN,
                            username=ADMIN_EMAIL, password=ADMIN_PASSWORD, data_dir=data_dir,
                            files_root=files_root, ls_bin=ls_bin)
    services.stop_process(proc)


def pytest_terminal_summary(terminalreporter, exitstatus, config: pytest.Config) -> None:
    if _STARTUP_KEY in config.stash:
        terminalreporter.write_line(config.stash[_STARTUP_KEY])


@pytest.fixture(scope="session")
def ls_client(label_studio: LabelStudioServer):
    from label_studio_sdk import LabelStudio

    return LabelStudio(base_url=label_studio.url, api_key=label_studio.api_key)


@pytest.fixture
def fresh_project(ls_client, request: pytest.FixtureRequest) -> Iterator[Callable[..., object]]:
    created: list[int] = []

    def create(label_config: str = RECT_CONFIG, title: str | None = None, **kwargs):
        title = title or f"{request.node.name[:40]} {len(created)}"  # LS caps titles at 50
        project = ls_client.projects.create(title=title, label_config=label_config, **kwargs)
        created.append(project.id)
        return project

    yield create
    for project_id in created:
        ls_client.projects.delete(id=project_id)


@pytest.fixture
def hali_environ(label_studio: LabelStudioServer, redis_url: str, redis_conn, tmp_path: Path,
                 monkeypatch: pytest.MonkeyPatch) -> Path:
    """The HALI_* variables of this test's Label Studio, Redis (flushed) and a fresh data dir, set for the test
    (as `hali preprocess`, `hali serve` and the jobs read them); returns the data dir."""
    for key, value in hali_env(label_studio, redis_url, tmp_path / "data").items():
        monkeypatch.setenv(key, value)
    return tmp_path / "data"


@pytest.fixture
def new_annotator(label_studio: LabelStudioServer) -> Callable[..., Annotator]:
    def create(email: str | None = None, password: str | None = None) -> Annotator:
        email = email or f"annotator-{uuid.uuid4().hex[:8]}@hali.test"
        return make_annotator(label_studio, email, password or uuid.uuid4().hex)

    return create


@dataclass(frozen=True)
class S3Server:
    """moto's S3 on loopback: its endpoint and the keys of the one IAM user allowed to use it."""

    endpoint_url: str
    access_key_id: str
    secret_access_key: str = field(repr=False)
    region: str = "us-east-1"

    def client(self, **overrides):
        import boto3

        kwargs = dict(endpoint_url=self.endpoint_url, region_name=self.region, aws_access_key_id=self.access_key_id,
                      aws_secret_access_key=self.secret_access_key)
        return boto3.client("s3", **{**kwargs, **overrides})

    def aws_env(self) -> dict[str, str]:
        """The standard AWS variables that make boto3's default chain pick these keys and nothing else."""
        return {"AWS_ACCESS_KEY_ID": self.access_key_id, "AWS_SECRET_ACCESS_KEY": self.secret_access_key,
                "AWS_DEFAULT_REGION": self.region, "AWS_CONFIG_FILE": os.devnull,
                "AWS_SHARED_CREDENTIALS_FILE": os.devnull}

    @contextmanager
    def checking_credentials(self) -> Iterator[None]:
        """Make moto refuse unknown keys and wrong secrets (as AWS does) until the block ends."""
        _moto_auth(self.endpoint_url, "0")
        try:
            yield
        finally:
            _moto_auth(self.endpoint_url, "inf")


def _moto_auth(endpoint_url: str, unauthenticated_calls: str) -> None:
    # a raw body: with urllib's default form content type moto finds no data and answers 500
    request = urllib.request.Request(f"{endpoint_url}/moto-api/reset-auth", data=unauthenticated_calls.encode(),
                                     headers={"Content-Type": "text/plain"}, method="POST")
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))  # loopback: never via a proxy
    with opener.open(request, timeout=10) as response:
        response.read()


@pytest.fixture(scope="session")
def s3_server() -> Iterator[S3Server]:
    try:
        import boto3
        from moto.server import ThreadedMotoServer
    except ImportError as exc:
        unavailable(f"moto[server] or boto3 is not installed ({exc}); install the test extras: "
                    "pip install -e '.[test]'")
    port = services.free_port()
    server = ThreadedMotoServer(ip_address=services.LOOPBACK, port=port, verbose=False)
    server.start()
    url = f"http://{services.LOOPBACK}:{port}"
    iam = boto3.client("iam", endpoint_url=url, region_name="us-east-1", aws_access_key_id="bootstrap",
                       aws_secret_access_key="bootstrap")
    iam.create_user(UserName="hali")
    policy = {"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Action": "s3:*", "Resource": "*"}]}
    iam.put_user_policy(UserName="hali", PolicyName="s3", PolicyDocument=json.dumps(policy))
    key = iam.create_access_key(UserName="hali")["AccessKey"]
    yield S3Server(url, key["AccessKeyId"], key["SecretAccessKey"])
    server.stop()


@pytest.fixture
def s3_bucket(s3_server: S3Server) -> str:
    name = f"hali-test-{uuid.uuid4().hex[:12]}"
    s3_server.client().create_bucket(Bucket=name)
    return name


@pytest.fixture
def ihc_slide(tmp_path: Path) -> Path:
    """scikit-image's IHC image (ships in the wheel) as a one-level PNG slide with no mpp: tests pass
    ``mpp=0.25`` (40x), so its tiles are downsampled 2x to the default ``tile_mpp``."""
    from PIL import Image
    from skimage import data

    path = tmp_path / "ihc.png"
    Image.fromarray(data.immunohistochemistry()).save(path)
    return path
