"""Screenshots of the dashboard of a project labelled through Label Studio, for docs/dashboard.md.

    HALI_LS_BIN=.venv-ls/bin/label-studio .venv/bin/python bench/shoot_dashboard.py [--rounds 8] [--out docs/img]

Starts its own Redis and Label Studio (from the integration tests' cached data dir when there is one) on free
ports, serves the backend in a thread behind a password, preprocesses the demo slide into a project, and lets
three scripted annotators label it through Label Studio's API for ``--rounds`` rounds with a retrain after
each. Their "truth" is a rule the model can learn (a cell's class is its box area's quartile), which they
give with a chance of 95, 90 and 85 %, keeping a suggestion when it is what they meant; the third labels
tasks the first has done (an overlap, for kappa). Lead times are 7-12 min a task, about what a pathologist
spends on 20 cells. Then headless Chromium (Debian's ``/usr/bin/chromium``,
driven by Playwright) logs in to the dashboard with basic auth and saves it, and saves Label Studio's
project list with the description line. Nothing is downloaded.
"""

from __future__ import annotations

import argparse
import os
import random
import shutil
import sys
import tempfile
import threading
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from bench.annotator import make_annotator  # noqa: E402
from bench.shoot_tasks import CHROMIUM_ARGS, SLIDE, shrink  # noqa: E402
from scripts import services  # noqa: E402

ADMIN = ("admin@hali.test", "hali-test-admin")  # the integration tests' cached Label Studio admin
TOKEN = __import__("hashlib").sha1(b"hali integration tests").hexdigest()
AUTH = ("hali", "dashboard-demo")
CLASSES = ["Tumor", "Lymphocyte", "Stroma", "Other"]


class _Server:
    """Where the throwaway Label Studio lives (what bench.annotator needs)."""

    def __init__(self, url: str, data_dir: Path, files_root: Path, ls_bin: Path) -> None:
        self.url, self.api_key, self.data_dir, self.files_root, self.ls_bin = url, TOKEN, data_dir, files_root, ls_bin


def start_stack(work: Path):
    ls_bin = services.find_label_studio()
    redis_port, ls_port = services.free_port(), services.free_port()
    redis = services.start_redis(redis_port, work / "redis")
    data_dir, files_root = work / "ls-data", work / "ls-files"
    cached = [p for p in sorted((REPO / ".state" / "test-cache").glob("label-studio-*")) if p.suffix != ".tmp"]
    if cached:
        shutil.copytree(cached[0], data_dir)
    ls = services.start_label_studio(ls_port, data_dir, files_root, *ADMIN, TOKEN, ls_bin)
    return redis, ls, f"redis://127.0.0.1:{redis_port}/0", _Server(f"http://127.0.0.1:{ls_port}", data_dir,
                                                                     files_root, ls_bin)


def serve(settings):
    from werkzeug.serving import make_server

    from ml_backend.http.app import create_app

    server = make_server("127.0.0.1", 0, create_app(settings), threaded=True)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server, f"http://127.0.0.1:{server.server_port}"


def label(task: dict, truth: dict[str, str], right: float, rng: random.Random,
          lead: float) -> tuple[list[dict], int, float]:
    """An annotator who gives a cell its true class with chance ``right`` (else another class) and keeps the
    suggestion when it is what they meant."""
    pred = max(task["predictions"], key=lambda p: p["id"])
    regions = [dict(r, value=dict(r["value"])) for r in pred["result"]]
    for region in regions:
        meant = truth[region["id"]] if rng.random() < right else rng.choice(CLASSES)
        region["origin"] = "prediction" if region["value"]["rectanglelabels"][0] == meant else "prediction-changed"
        region["value"]["rectanglelabels"] = [meant]
    return regions, pred["id"], lead * rng.uniform(0.7, 1.3)


def size_truth(gateway, project_id: int) -> dict[str, str]:
    """A class per cell the model can learn: its box area's quartile on the slide (smallest: Lymphocyte)."""
    import numpy as np

    cells = [c for t in gateway.iter_tasks(project_id) for c in t["data"]["cells"]]
    area = np.array([c["w"] * c["h"] for c in cells], float)
    edges = np.quantile(area, [0.25, 0.5, 0.75])
    order = ["Lymphocyte", "Other", "Stroma", "Tumor"]
    return {c["id"]: order[int(np.searchsorted(edges, a))] for c, a in zip(cells, area)}


def run_project(ls, redis_url: str, data: Path, rounds: int, rng: random.Random):
    from adapters.label_studio import LabelStudioGateway
    from ml_backend.labels.redis_store import RedisLabelStore
    from ml_backend.retrain.run import run_retrain
    from ml_backend.settings import BackendSettings
    from preprocess.run import run_preprocess
    from preprocess.settings import PreprocessSettings

    env = {"HALI_DATA_DIR": str(data), "HALI_LS_URL": ls.url, "HALI_LS_API_KEY": TOKEN, "HALI_REDIS_URL": redis_url,
           "HALI_LS_FILES_ROOT": str(ls.files_root), "HALI_BACKEND_PASSWORD": AUTH[1], "HALI_QUEUE_NAME": "shoot"}
    os.environ.update(env)
    server, url = serve(BackendSettings())
    gateway = LabelStudioGateway.connect(ls.url, TOKEN)
    pre = PreprocessSettings(progress=False, classes=",".join(CLASSES), cells_per_task=20, backend_url=url)
    result = run_preprocess(SLIDE, "HALI dashboard demo", pre, gateway)
    gateway.set_description(result.project_id, "CMU-1 small region, demo cohort. Second reader: Bob.")
    truth = size_truth(gateway, result.project_id)
    people = [(make_annotator(ls, f"{n}@lab.example", "pw-" + n), lead, right) for n, lead, right in
              (("ana", 420.0, 0.95), ("bob", 700.0, 0.9), ("cleo", 560.0, 0.85))]
    store = RedisLabelStore(__import__("redis").Redis.from_url(redis_url))
    done: list[dict] = []
    for r in range(rounds):
        for person, lead, right in people[:2]:
            task = person.next_task(result.project_id)
            regions, pid, seconds = label(task, truth, right, rng, lead)
            person.submit(task["id"], regions, seconds, parent_prediction=pid, project_id=result.project_id)
            done.append(task)
        cleo, lead, right = people[2]
        task = done[-2]  # cleo reads one of ana's tasks again
        regions, pid, seconds = label(task, truth, right, rng, lead)
        cleo.submit(task["id"], regions, seconds, parent_prediction=pid, project_id=result.project_id)
        report = run_retrain(result.project_id, BackendSettings(), gateway, store)
        print(f"round {r + 1}: {report.model_version} on {report.n_labels} labels", flush=True)
    return server, url, result.project_id


def shoot(url: str, ls_url: str, project_id: int, out: Path) -> None:
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path="/usr/bin/chromium", args=CHROMIUM_ARGS)
        context = browser.new_context(viewport={"width": 1280, "height": 900},
                                      http_credentials={"username": AUTH[0], "password": AUTH[1]})
        page = context.new_page()
        page.goto(f"{url}/dashboard/{project_id}")
        page.wait_for_load_state("networkidle")
        save(page, out / "dashboard-top.png", full=False)
        save(page, out / "dashboard-full.png", full=True)
        ls_page = browser.new_page(viewport={"width": 1280, "height": 700})
        ls_page.goto(f"{ls_url}/user/login/")
        ls_page.fill("input[name=email]", ADMIN[0])
        ls_page.fill("input[name=password]", ADMIN[1])
        ls_page.click("button[type=submit]")
        ls_page.wait_for_load_state("networkidle")
        ls_page.goto(f"{ls_url}/projects/")
        ls_page.wait_for_timeout(4000)
        save(ls_page, out / "dashboard-ls-description.png", full=False)
        browser.close()


def save(page, path: Path, full: bool) -> None:
    raw = path.with_suffix(".raw.png")
    page.screenshot(path=str(raw), full_page=full)
    shrink(raw, path)
    raw.unlink()
    print(path, path.stat().st_size // 1024, "KB", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=8)
    parser.add_argument("--out", type=Path, default=REPO / "docs" / "img")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="hali-shoot-dashboard-"))
    redis, ls_proc, redis_url, ls = start_stack(work)
    try:
        server, url, project_id = run_project(ls, redis_url, work / "data", args.rounds, random.Random(0))
        args.out.mkdir(parents=True, exist_ok=True)
        shoot(url, ls.url, project_id, args.out)
        server.shutdown()
    finally:
        services.stop_process(ls_proc)
        services.stop_process(redis)
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
