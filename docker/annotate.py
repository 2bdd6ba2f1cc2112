"""Label a composed Label Studio project as a scripted annotator until HALI's model version rises.

Stdlib only (it runs on the host, before or without any venv)::

    python3 docker/annotate.py --url http://127.0.0.1:8080 --token <admin token> --project "HALI docker test" \
        --email annotator@hali.local --password <pw> [--timeout-s 600]

The annotator is a non-admin user whose password was set beforehand (``label-studio reset_password`` in the
Label Studio container: the API cannot set one). It logs in with a session as the UI does (CSRF cookie,
Referer), takes ``/next``, relabels the shown prediction's boxes with the project's first two classes, and
submits, until the project's ``model_version`` is above the one it started with (``hali-v0000`` ->
``hali-v0001``: a worker retrained and switched the queue). Prints one JSON line with the seconds it took.
Exit 0 when the version rose, 1 when the time ran out.
"""

from __future__ import annotations

import argparse
import http.cookiejar
import json
import re
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from datetime import UTC, datetime, timedelta

_CSRF_INPUT = re.compile(r'name="csrfmiddlewaretoken"\s+value="([^"]+)"')
_LABEL = re.compile(r'<Label\b[^>]*\bvalue="([^"]+)"')
_NOT_A_CLASS = {"Not a nucleus", "No class yet", "Unclassified"}
_NO_REDIRECT = type("NoRedirect", (urllib.request.HTTPRedirectHandler,),
                    {"redirect_request": lambda *args, **kwargs: None})


class Client:
    """HTTP to Label Studio with either an API token or a logged-in session (cookies + CSRF)."""

    def __init__(self, url: str, token: str | None = None) -> None:
        self.url, self.token = url.rstrip("/"), token
        self.jar = http.cookiejar.CookieJar()
        self.opener = urllib.request.build_opener(urllib.request.ProxyHandler({}),
                                                  urllib.request.HTTPCookieProcessor(self.jar), _NO_REDIRECT)

    def cookie(self, name: str) -> str:
        return next((c.value for c in self.jar if c.name == name), "")

    def call(self, method: str, path: str, body: dict | None = None, form: dict | None = None) -> tuple[int, str]:
        """``(status, text)`` of one request; JSON ``body`` or urlencoded ``form``."""
        headers = {"Referer": f"{self.url}/projects/"}
        data = None
        if self.token:
            headers["Authorization"] = f"Token {self.token}"
        else:
            headers["X-CSRFToken"] = self.cookie("csrftoken")
        if body is not None:
            data, headers["Content-Type"] = json.dumps(body).encode(), "application/json"
        if form is not None:
            data = urllib.parse.urlencode(form).encode()
            headers["Content-Type"] = "application/x-www-form-urlencoded"
            headers["Referer"] = f"{self.url}/user/login/"
        request = urllib.request.Request(f"{self.url}{path}", data=data, headers=headers, method=method)
        try:
            with self.opener.open(request, timeout=60) as response:
                return response.status, response.read().decode()
        except urllib.error.HTTPError as exc:
            return exc.code, exc.read().decode(errors="replace")

    def json(self, method: str, path: str, body: dict | None = None) -> dict | list:
        status, text = self.call(method, path, body)
        if status >= 400:
            raise RuntimeError(f"{method} {path}: HTTP {status} {text[:300]}")
        return json.loads(text)


def login(url: str, email: str, password: str) -> Client:
    """A session logged in through /user/login/, as a browser."""
    client = Client(url)
    _, page = client.call("GET", "/user/login/")
    match = _CSRF_INPUT.search(page)
    token = match.group(1) if match else client.cookie("csrftoken")
    status, _ = client.call("POST", "/user/login/", form={"email": email, "password": password,
                                                          "csrfmiddlewaretoken": token})
    if status != 302 or not client.cookie("sessionid"):
        raise RuntimeError(f"login as {email} failed: HTTP {status} (wrong password, or no such user)")
    return client


def find_project(admin: Client, title: str) -> dict:
    projects = admin.json("GET", "/api/projects?page_size=1000")
    for project in projects.get("results", projects) if isinstance(projects, dict) else projects:
        if project["title"] == title:
            return project
    raise RuntimeError(f"no project titled {title!r} in Label Studio at {admin.url}")


def version_number(name: str | None) -> int:
    match = re.fullmatch(r"hali-v(\d+)", name or "")
    return int(match.group(1)) if match else -1


def labelled_result(task: dict, classes: list[str]) -> tuple[list[dict], int | None]:
    """The task's shown prediction with every box given one of ``classes`` in turn."""
    predictions = task.get("predictions") or []
    if not predictions:
        raise RuntimeError(f"task {task['id']} came without a prediction: is the backend connected?")
    prediction = predictions[-1]
    result = []
    for i, region in enumerate(prediction["result"]):
        value = dict(region["value"])
        key = next(k for k in ("rectanglelabels", "keypointlabels") if k in value)
        value[key] = [classes[i % len(classes)]]
        result.append(dict(region, value=value, origin="prediction-changed"))
    return result, prediction.get("id")


def submit(annotator: Client, project_id: int, task: dict, classes: list[str]) -> int:
    """Submit the task as the UI's Submit button does; returns the number of boxes labelled."""
    result, parent = labelled_result(task, classes)
    lead_time = 10.0
    started = datetime.now(UTC) - timedelta(seconds=lead_time)
    body = {"lead_time": lead_time, "result": result, "project": project_id,
            "started_at": started.isoformat().replace("+00:00", "Z")}
    if parent is not None:
        body["parent_prediction"] = parent
    if task.get("unique_lock_id"):
        body["unique_id"] = task["unique_lock_id"]
    annotator.json("POST", f"/api/tasks/{task['id']}/annotations?project={project_id}", body)
    return len(result)


def label_until_retrain(admin: Client, annotator: Client, title: str, timeout_s: float) -> dict:
    project = find_project(admin, title)
    pid, start_version = project["id"], project.get("model_version")
    classes = [c for c in _LABEL.findall(project["label_config"]) if c not in _NOT_A_CLASS][:2]
    start, tasks, boxes = time.monotonic(), 0, 0
    while time.monotonic() - start < timeout_s:
        version = admin.json("GET", f"/api/projects/{pid}").get("model_version")
        if version_number(version) > version_number(start_version):
            return {"project": pid, "from_version": start_version, "to_version": version, "tasks": tasks,
                    "boxes": boxes, "seconds": round(time.monotonic() - start, 1)}
        status, text = annotator.call("GET", f"/api/projects/{pid}/next")
        if status == 404:  # every task labelled: wait for the retrain
            time.sleep(2)
            continue
        if status >= 400:
            raise RuntimeError(f"/next: HTTP {status} {text[:300]}")
        if tasks < 3:  # a retrain needs HALI_RETRAIN_EVERY labels; a few tasks are plenty
            boxes += submit(annotator, pid, json.loads(text), classes)
            tasks += 1
        else:
            time.sleep(2)
    raise TimeoutError(f"project {pid}: model version still {start_version} after {timeout_s:.0f} s "
                       f"and {tasks} submitted tasks ({boxes} boxes): see `docker compose logs worker`")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", required=True)
    parser.add_argument("--token", required=True, help="the admin's legacy API token")
    parser.add_argument("--project", required=True, help="project title")
    parser.add_argument("--email", required=True)
    parser.add_argument("--password", required=True)
    parser.add_argument("--timeout-s", type=float, default=600)
    args = parser.parse_args(argv)
    admin = Client(args.url, args.token)
    try:
        annotator = login(args.url, args.email, args.password)
        print(json.dumps(label_until_retrain(admin, annotator, args.project, args.timeout_s)))
    except (RuntimeError, TimeoutError) as exc:
        print(f"annotate: error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
