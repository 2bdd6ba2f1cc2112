"""Screenshots of what a pathologist sees on a task's labeling page, for docs/tasks.md.

    HALI_LS_URL=http://127.0.0.1:PORT HALI_LS_API_KEY=<token> HALI_LS_FILES_ROOT=<LS's local-files root> \\
    .venv/bin/python bench/shoot_tasks.py --user admin@hali.local --password PW --out docs/img \\
        [--before-src DIR]   # a checkout of the commit before task windows (git archive d2b7470 | tar -x -C DIR)

Preprocesses the demo slide into one project per geometry (``before`` from ``--before-src``, ``tile``,
``focused``, and ``keypoints``: the tile tasks with a dot per cell instead of a box, ``--mark keypoint``),
then logs in to Label Studio in headless Chromium (Debian's ``/usr/bin/chromium``
driven by Playwright; nothing is downloaded; ``HALI_WITH_CHROMIUM=1 scripts/install.sh`` installs both),
presses Label All Tasks and saves the page, then opens the task nearest the slide's centre and saves that.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SLIDE = REPO.parent / "shared" / "data" / "wsi" / "CMU-1-Small-Region.svs"
SLIDE_CENTRE = (1110, 1483)  # level-0 px of CMU-1-Small-Region's centre: tissue, not an edge
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync"]


def preprocess(src: Path, project: str, data_dir: Path, *flags: str) -> None:
    env = {**os.environ, "PYTHONPATH": str(src), "HALI_DATA_DIR": str(data_dir)}
    argv = [sys.executable, "-c", "import sys; from ml_backend.cli import main; sys.exit(main())", "preprocess",
            str(SLIDE), "--project", project, "--no-progress", *flags]
    subprocess.run(argv, env=env, cwd=src, check=True)


def centre_task(tasks: list[dict]) -> dict:
    """The task whose cells' centre is nearest the slide's centre (the same place in every geometry)."""
    cx, cy = SLIDE_CENTRE

    def distance(task: dict) -> float:
        cells = task["data"]["cells"]
        x = sum(c["x0"] + c["w"] / 2 for c in cells) / len(cells)
        y = sum(c["y0"] + c["h"] / 2 for c in cells) / len(cells)
        return (x - cx) ** 2 + (y - cy) ** 2

    return min(tasks, key=distance)


def shoot(url: str, user: str, password: str, projects: dict[str, tuple[int, int]], out: Path) -> None:
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path="/usr/bin/chromium", args=CHROMIUM_ARGS)
        page = browser.new_page(viewport={"width": 1280, "height": 800})
        page.goto(f"{url}/user/login/")
        page.fill("input[name=email]", user)
        page.fill("input[name=password]", password)
        page.click("button[type=submit]")
        page.wait_for_load_state("networkidle")
        for name, (pid, centre_id) in projects.items():
            page.goto(f"{url}/projects/{pid}/data")
            page.get_by_text("Label All Tasks").first.click()  # the first task served
            save(page, out / f"tasks-{name}-first.png")
            page.goto(f"{url}/projects/{pid}/data?task={centre_id}")  # the same place of the slide in each
            save(page, out / f"tasks-{name}.png")
        browser.close()


def save(page, path: Path) -> None:
    page.wait_for_selector("canvas", timeout=60_000)
    page.wait_for_timeout(4000)
    raw = path.with_suffix(".raw.png")
    page.screenshot(path=str(raw))
    shrink(raw, path)
    raw.unlink()
    print(path, flush=True)


def shrink(src: Path, dst: Path, limit: int = 300_000) -> None:
    """Save ``src`` as a PNG under ``limit`` bytes (256-colour palette, then smaller if still too big)."""
    from PIL import Image

    image = Image.open(src).convert("RGB")
    while True:
        image.quantize(256, method=Image.Quantize.MEDIANCUT).save(dst, optimize=True)
        if dst.stat().st_size < limit:
            return
        image = image.resize((image.width * 9 // 10, image.height * 9 // 10), Image.Resampling.LANCZOS)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--user", required=True)
    parser.add_argument("--password", required=True)
    parser.add_argument("--out", type=Path, default=REPO / "docs" / "img")
    parser.add_argument("--work", type=Path, default=REPO / ".state" / "shoot-tasks")
    parser.add_argument("--before-src", type=Path)
    parser.add_argument("--classes", default="Tumor,Lymphocyte,Stroma,Other")
    args = parser.parse_args()
    from label_studio_sdk import LabelStudio

    ls = LabelStudio(base_url=os.environ["HALI_LS_URL"], api_key=os.environ["HALI_LS_API_KEY"])
    runs = {"tile": (REPO, ()), "focused": (REPO, ("--task-mode", "focused")),
            "keypoints": (REPO, ("--mark", "keypoint"))}
    if args.before_src:
        runs = {"before": (args.before_src, ()), **runs}
    for name, (src, flags) in runs.items():
        preprocess(src, f"HALI {name}", args.work / name, "--classes", args.classes, *flags)
    ids = {p.title: p.id for p in ls.projects.list()}
    projects = {}
    for name in runs:
        tasks = [{"id": t.id, "data": t.data} for t in ls.tasks.list(project=ids[f"HALI {name}"])]
        projects[name] = (ids[f"HALI {name}"], centre_task(tasks)["id"])
    args.out.mkdir(parents=True, exist_ok=True)
    shoot(os.environ["HALI_LS_URL"], args.user, args.password, projects, args.out)


if __name__ == "__main__":
    main()
