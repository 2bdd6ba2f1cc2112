"""A scripted annotator: a non-admin Label Studio user who works through the same HTTP calls as the
labeling UI (session cookie + CSRF, not an API token).

The request shapes come from Label Studio 1.23's frontend (``libs/datamanager/src/sdk/lsf-sdk.js``,
``prepareData`` and ``submitCurrentAnnotation``; ``api-proxy`` adds the project as a shared param):

    POST /api/tasks/<task_id>/annotations?project=<project_id>
    Content-Type: application/json
    {"lead_time": <s>, "result": [...], "started_at": "<ISO 8601>", "project": <project_id>,
     "parent_prediction": <id>   # only when the annotation started from a prediction
     "unique_id": "<uuid>"}      # the task's unique_lock_id from /next, when it has one
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from typing import Any, Protocol

import requests

from scripts import services

_CSRF_INPUT = re.compile(r'name="csrfmiddlewaretoken"\s+value="([^"]+)"')


class LabelStudioServer(Protocol):
    """What the ``label_studio`` fixture yields (only the fields used here)."""

    url: str
    api_key: str
    data_dir: Any
    files_root: Any


@dataclass
class Annotator:
    """A logged-in Label Studio user. ``session`` carries the session and CSRF cookies."""

    url: str
    email: str
    user_id: int
    session: requests.Session
    _lock_ids: dict[int, str] = field(default_factory=dict)

    def _headers(self) -> dict[str, str]:
        return {"X-CSRFToken": self.session.cookies.get("csrftoken", ""),
                "Referer": f"{self.url}/projects/"}

    def request(self, method: str, path: str, **kwargs: Any) -> requests.Response:
        """``path`` on the server, with the CSRF header and Referer a browser sends (``headers``
        given here are added to them)."""
        headers = {**self._headers(), **kwargs.pop("headers", {})}
        return self.session.request(method, f"{self.url}{path}", headers=headers, timeout=30,
                                    **kwargs)

    def get(self, path: str, **kwargs: Any) -> requests.Response:
        return self.request("GET", path, **kwargs)

    def post(self, path: str, **kwargs: Any) -> requests.Response:
        return self.request("POST", path, **kwargs)

    def next_task(self, project_id: int) -> dict:
        """The task Label Studio serves this user next (it locks it for them).

        Raises LookupError when the project has no task left for this user (LS answers 404).
        """
        response = self.get(f"/api/projects/{project_id}/next")
        if response.status_code == 404:
            raise LookupError(f"project {project_id} has no task left for {self.email}")
        response.raise_for_status()
        task = response.json()
        if task.get("unique_lock_id"):
            self._lock_ids[task["id"]] = task["unique_lock_id"]
        return task

    def submit(self, task_id: int, result: list[dict], lead_time: float,
               parent_prediction: int | None = None, project_id: int | None = None) -> dict:
        """Submit an annotation as the UI's Submit button does; return the stored annotation.

        ``result`` is a list of LS regions; ``lead_time`` is in seconds. ``project_id`` defaults to
        the task's project (one extra GET when the task did not come from :meth:`next_task`).
        """
        if project_id is None:
            project_id = self.get(f"/api/tasks/{task_id}").json()["project"]
        started_at = datetime.now(timezone.utc) - timedelta(seconds=lead_time)
        body: dict[str, Any] = {"lead_time": lead_time, "result": result,
                                "started_at": started_at.isoformat().replace("+00:00", "Z"),
                                "project": project_id}
        if parent_prediction is not None:
            body["parent_prediction"] = parent_prediction
        if task_id in self._lock_ids:
            body["unique_id"] = self._lock_ids.pop(task_id)
        response = self.post(f"/api/tasks/{task_id}/annotations?project={project_id}", json=body)
        if response.status_code >= 400:
            raise RuntimeError(f"submitting task {task_id} as {self.email} failed: "
                               f"HTTP {response.status_code} {response.text[:500]}")
        return response.json()


def create_user(label_studio: LabelStudioServer, email: str) -> int:
    """Create a user without a password in the admin's organization; return its id."""
    response = requests.post(f"{label_studio.url}/api/users/",
                             headers={"Authorization": f"Token {label_studio.api_key}"},
                             json={"email": email, "username": email,
                                   "first_name": email.split("@")[0]}, timeout=30)
    if response.status_code >= 400:
        raise RuntimeError(f"creating user {email} failed: HTTP {response.status_code} "
                           f"{response.text[:500]}")
    return response.json()["id"]


def login(url: str, email: str, password: str) -> requests.Session:
    """A session logged in through ``/user/login/`` as a browser does."""
    session = requests.Session()
    session.trust_env = False  # loopback: no proxy from the environment
    page = session.get(f"{url}/user/login/", timeout=30)
    page.raise_for_status()
    match = _CSRF_INPUT.search(page.text)
    token = match.group(1) if match else session.cookies.get("csrftoken", "")
    response = session.post(f"{url}/user/login/", timeout=30, allow_redirects=False,
                            data={"email": email, "password": password,
                                  "csrfmiddlewaretoken": token},
                            headers={"Referer": f"{url}/user/login/"})
    if response.status_code != 302 or "sessionid" not in session.cookies:
        raise RuntimeError(f"login as {email} failed: HTTP {response.status_code} "
                           "(wrong password, or the user does not exist)")
    return session


def make_annotator(label_studio: LabelStudioServer, email: str, password: str) -> Annotator:
    """Create a non-admin user ``email`` with ``password`` and log them in as the UI does."""
    user_id = create_user(label_studio, email)
    services.reset_label_studio_password(label_studio.data_dir, label_studio.files_root, email,
                                      password, getattr(label_studio, "ls_bin", None))
    session = login(label_studio.url, email, password)
    annotator = Annotator(url=label_studio.url, email=email, user_id=user_id, session=session)
    me = annotator.get("/api/current-user/whoami")
    me.raise_for_status()
    if me.json()["id"] != user_id:
        raise RuntimeError(f"logged in as {me.json().get('email')}, expected {email}")
    return annotator
