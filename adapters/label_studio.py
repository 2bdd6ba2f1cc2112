"""LabelStudioGateway: every call HALI makes to Label Studio, through the SDK (label-studio-sdk 2.1.2).

The SDK client is passed in (``LabelStudioGateway(client)``), or built by :meth:`LabelStudioGateway.connect`.
Every call is wrapped so that a server that is down, a bad token or an Enterprise-only endpoint becomes a
:class:`~adapters.errors.LabelStudioError` that says which call failed and what to do, never a 170 KB
HTML page inside a traceback.

Imports go in batches (``batch_size`` tasks per request). A batch that fails on a connection error or a
5xx is retried under the gateway's :class:`~adapters.retry.RetryPolicy`; before each retry the project's
tasks are listed again and those already in it (matched by a key of their data, the tile id) are dropped, so
a POST that reached Label Studio but whose answer was lost imports nothing twice. The SDK's own retries are
turned off for these POSTs: it would re-send them blindly.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import httpx
from label_studio_sdk import LabelStudio
from label_studio_sdk.core.api_error import ApiError

from adapters.errors import LabelStudioError
from adapters.retry import RetriesExhausted, RetryPolicy, call_with_retry

log = logging.getLogger(__name__)
_IDS_PER_REQUEST = 200  # task ids per listing request: they go in the URL (gunicorn's limit: 4,094 bytes a line)
_ANNOTATION_READERS = 4  # annotation reads in flight at once (the retrain reads one per labelled task)

UNCERTAINTY_SAMPLING = "Uncertainty sampling"
DEFAULT_BATCH_SIZE = 100
_TRANSIENT_STATUS = frozenset({408, 429, 500, 502, 503, 504})
# Label Studio's `include` is both its sparse-fields parameter (REST_FLEX_FIELDS) and the list of counts to
# compute: naming only settings skips every count. A full project read or update counts the project's tasks,
# annotations and predictions (and the user's queue) each time: 0.41 s against 0.05 s at 15,000 tasks on PostgreSQL.
_SETTINGS_FIELDS = "id,title,description,label_config,model_version"
_NO_SDK_RETRY = {"max_retries": 0}  # a re-sent import POST would duplicate tasks; we retry ourselves


@dataclass(frozen=True)
class ProjectSettings:
    """What the backend reads of a project, without its counts (:meth:`LabelStudioGateway.project_settings`)."""

    id: int
    title: str
    description: str
    label_config: str
    model_version: str


class LabelStudioGateway:
    """Projects, tasks, predictions and annotations of one Label Studio server."""

    def __init__(
        self, client: LabelStudio, url: str = "", retry: RetryPolicy | None = None,
        batch_size: int = DEFAULT_BATCH_SIZE,
    ) -> None:
        if batch_size < 1:
            raise ValueError(f"import batch size {batch_size} must be >= 1")
        self._client = client
        self.url = url.rstrip("/")
        self.retry = retry or RetryPolicy()
        self.batch_size = batch_size

    @classmethod
    def connect(
        cls, url: str, api_key: str, timeout_s: float = 60.0, retry: RetryPolicy | None = None,
        batch_size: int = DEFAULT_BATCH_SIZE,
    ) -> LabelStudioGateway:
        """Gateway for the server at ``url``; checks that it answers and that the key is accepted."""
        if not api_key:
            raise LabelStudioError(
                f"no Label Studio API key for {url}; set HALI_LS_API_KEY (Account & Settings > Access Token)"
            )
        gateway = cls(LabelStudio(base_url=url, api_key=api_key, timeout=timeout_s), url, retry, batch_size)
        with gateway._calling("check the API key"):
            gateway._client.users.whoami()
        return gateway

    def find_project(self, title: str) -> Any | None:
        """The project titled ``title``, or None."""
        with self._calling("list projects"):
            return next((p for p in self._client.projects.list(title=title) if p.title == title), None)

    def create_project(self, title: str, label_config: str) -> Any:
        """A new project that serves tasks by the ranks HALI writes into prediction scores."""
        with self._calling(f"create project {title!r}"):
            return self._client.projects.create(
                title=title,
                label_config=label_config,
                sampling=UNCERTAINTY_SAMPLING,
                show_collab_predictions=True,
                maximum_annotations=1,
                description="Cells segmented and ranked by HALI; press Submit to accept the suggestions.",
            )

    def set_overlap(self, project_id: int, readers: int, share: float) -> None:
        """Have ``share`` (0..1) of the tasks read by ``readers`` annotators each (Label Studio's overlap)."""
        with self._calling(f"set the overlap of project {project_id}"):
            self._client.projects.update(id=project_id, maximum_annotations=readers,
                                         overlap_cohort_percentage=round(100 * share))

    def get_project(self, project_id: int) -> Any:
        """The whole project, counts included (slow on a big project: see :meth:`project_settings`)."""
        with self._calling(f"read project {project_id}"):
            return self._client.projects.get(id=project_id)

    def project_settings(self, project_id: int) -> ProjectSettings:
        """The project's label config, model version, title and description, read without computing its counts."""
        data = self._api("GET", f"api/projects/{project_id}/", f"read project {project_id}",
                         params={"include": _SETTINGS_FIELDS}) or {}
        return ProjectSettings(int(data.get("id", project_id)), data.get("title") or "", data.get("description") or "",
                               data.get("label_config") or "", data.get("model_version") or "")

    def ensure_local_storage(self, project_id: int, path: str) -> None:
        """Attach a local-files import storage covering ``path`` (never synced: tasks are imported by us)."""
        with self._calling(f"list local storages of project {project_id}"):
            existing = self._client.import_storage.local.list(project=project_id)
        if any(s.path == path for s in existing):
            return
        with self._calling(f"add local storage {path} to project {project_id}"):
            self._client.import_storage.local.create(
                project=project_id, path=path, title="HALI tiles", use_blob_urls=False
            )

    def ensure_s3_storage(
        self,
        project_id: int,
        bucket: str,
        prefix: str = "",
        *,
        endpoint_url: str | None = None,
        region: str | None = None,
        access_key_id: str | None = None,
        secret_access_key: str | None = None,
        session_token: str | None = None,
        presign: bool = True,
    ) -> None:
        """Attach an S3 import storage for ``bucket``, so tasks may carry ``s3://bucket/key`` images that Label
        Studio resolves (presigned redirect, or proxied when ``presign`` is False); any storage of the bucket
        resolves any key in it. Never synced: tasks are imported by us. Label Studio checks the bucket with
        these credentials when the storage is created; with a ``prefix`` it also insists that some object
        already lies under it, so HALI attaches the whole bucket (before any tile is written)."""
        with self._calling(f"list S3 storages of project {project_id}"):
            existing = self._client.import_storage.s3.list(project=project_id)
        if any(s.bucket == bucket and (s.prefix or "") == prefix for s in existing):
            return
        given = {"s3endpoint": endpoint_url, "region_name": region, "aws_access_key_id": access_key_id,
                 "aws_secret_access_key": secret_access_key, "aws_session_token": session_token}
        what = f"add S3 storage s3://{bucket}/{prefix} to project {project_id}"
        with self._calling(what):
            try:
                self._client.import_storage.s3.create(
                    project=project_id, bucket=bucket, prefix=prefix, title="HALI tiles (S3)", presign=presign,
                    use_blob_urls=False, **{k: v for k, v in given.items() if v},
                )
            except ApiError as exc:  # Label Studio's own check of the bucket failed; its answer rarely says why
                raise LabelStudioError(
                    f"could not {what}: {_describe_api_error(exc)}; Label Studio reads the bucket itself, so it must "
                    f"reach {endpoint_url or 'AWS S3'} (for loopback or private addresses start it with "
                    "LABEL_STUDIO_USE_DEFAULT_BANNED_SUBNETS=false) and accept the AWS credentials HALI passes on "
                    "(AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY)"
                ) from exc

    def import_tasks(self, project_id: int, tasks: Sequence[dict[str, Any]], key: str = "tile_id") -> list[int]:
        """Import tasks (each ``{"data", "predictions"}``, ``data[key]`` unique) in batches, retrying blips.

        Returns the task ids of ``tasks`` in order (a task found already imported after a lost answer gets
        the id Label Studio gave it). Raises :class:`LabelStudioError` saying how many tasks are in and that
        re-running resumes, when a batch still fails after the retry policy's tries.
        """
        ids: list[int] = []
        for start in range(0, len(tasks), self.batch_size):
            batch = list(tasks[start : start + self.batch_size])
            try:
                ids.extend(self._import_batch(project_id, batch, key))
            except RetriesExhausted as exc:
                raise LabelStudioError(self._import_stopped(project_id, len(ids), len(tasks), exc)) from exc
            except ApiError as exc:
                raise LabelStudioError(
                    f"could not import tasks into project {project_id} ({len(ids)} of {len(tasks)} imported): "
                    f"{_describe_api_error(exc)}"
                ) from exc
        return ids

    def import_predictions(self, project_id: int, predictions: Sequence[dict[str, Any]]) -> int:
        """Add predictions (each ``{"task", "model_version", "score", "result"}``) to existing tasks.

        A batch is retried only when its request never reached Label Studio (connection refused), since a
        prediction sent twice is stored twice.
        """
        created = 0
        for start in range(0, len(predictions), self.batch_size):
            batch = list(predictions[start : start + self.batch_size])
            what = f"import {len(batch)} predictions into project {project_id}"
            with self._calling(what):
                try:
                    resp = call_with_retry(
                        lambda _: self._client.projects.import_predictions(
                            id=project_id, request=batch, request_options=_NO_SDK_RETRY),
                        self.retry, (httpx.ConnectError, httpx.ConnectTimeout), what=what)
                except RetriesExhausted as exc:
                    raise exc.last from exc
            created += resp.created or 0
        return created

    def serve_version(self, project_id: int, model_version: str) -> None:
        """Show ``model_version``'s predictions and serve tasks by their score (static mode, see notes)."""
        self._api("PATCH", f"api/projects/{project_id}/", f"set model version {model_version} on project {project_id}",
                  params={"include": "id,model_version"},  # the answer without the project's counts
                  json={"model_version": model_version, "sampling": UNCERTAINTY_SAMPLING,
                        "show_collab_predictions": True})

    # The prediction lifecycle (ml_backend/retrain/publish.py): versions, pruning, the ML backend's title, tabs.

    def model_versions(self, project_id: int) -> dict[str, int]:
        """Predictions per model version of the project (one aggregate query in Label Studio)."""
        return dict(self._api("GET", f"api/projects/{project_id}/model-versions/",
                              f"list the model versions of project {project_id}") or {})

    def delete_model_version(self, project_id: int, model_version: str) -> int:
        """Delete every prediction of ``model_version`` in one request; returns how many went.

        Label Studio still updates each task's prediction counter (about 10 ms a row on SQLite). It also sets
        the project's model version to None when ``model_version`` is the project's, or when an ML backend's
        title equals the project's model version: the caller avoids both (see publish.py).
        """
        answer = self._api("DELETE", f"api/projects/{project_id}/model-versions/",
                           f"delete the predictions of {model_version} in project {project_id}",
                           json={"model_version": model_version})
        return int((answer or {}).get("deleted_predictions", 0))

    def ml_backends(self, project_id: int) -> list[Any]:
        """The ML backends connected to the project (``id``, ``url``, ``title``, ...)."""
        with self._calling(f"list ML backends of project {project_id}"):
            return list(self._client.ml.list(project=project_id))

    def retitle_backend(self, backend: Any, title: str) -> None:
        """Rename an ML backend (one of :meth:`ml_backends`). Label Studio checks the backend on this request
        (/health and /setup, three times): it needs the project, and with basic auth the method and user again
        (a blank password keeps the stored one)."""
        auth = {} if getattr(backend, "auth_method", None) != "BASIC_AUTH" else {
            "auth_method": "BASIC_AUTH", "basic_auth_user": backend.basic_auth_user, "basic_auth_pass": ""}
        with self._calling(f"rename ML backend {backend.id} to {title!r}"):
            self._client.ml.update(id=backend.id, url=backend.url, project=backend.project, title=title, **auth)

    def order_first_tab(self, project_id: int, ordering: list[str]) -> bool:
        """Give the project's first Data Manager tab ``ordering`` unless someone sorted it already (a project
        without tabs gets a "Default" one). The labeling page opened by URL serves tasks in that tab's order.
        Returns whether anything changed."""
        views = self._api("GET", "api/dm/views", f"list the tabs of project {project_id}",
                          params={"project": project_id}) or []
        if not views:
            self._api("POST", "api/dm/views", f"add a tab to project {project_id}",
                      json={"project": project_id, "data": {"title": "Default", "ordering": ordering}})
            return True
        first = min(views, key=lambda v: (v.get("order") or 0, v["id"]))
        data = first.get("data") or {}
        if data.get("ordering"):
            return False
        self._api("PATCH", f"api/dm/views/{first['id']}", f"sort tab {first['id']} of project {project_id}",
                  json={"project": project_id, "data": {**data, "ordering": ordering}})
        return True

    def _api(self, method: str, path: str, what: str, **kwargs: Any) -> Any:
        """A Label Studio API call the SDK does not wrap: its JSON answer (None when empty)."""
        with self._calling(what):
            resp = self._client._client_wrapper.httpx_client.request(path, method=method, **kwargs)
            if resp.status_code >= 400:
                raise ApiError(status_code=resp.status_code, headers=dict(resp.headers), body=resp.text[:300])
            return resp.json() if resp.content else None

    def iter_tasks(self, project_id: int) -> Iterator[dict[str, Any]]:
        """Every task of the project as ``{"id", "data", "annotations"}`` dicts (predictions left out).

        Tasks are listed lean (their predictions grow with every model version) and annotations are read
        only for the tasks that have some, :data:`_ANNOTATION_READERS` requests at a time.
        """
        fields = "id,data,total_annotations,cancelled_annotations"
        with self._calling(f"list tasks of project {project_id}"):
            tasks = list(self._client.tasks.list(project=project_id, fields="all", include=fields, page_size=1000))
        labelled = [t.id for t in tasks if (t.total_annotations or 0) + (t.cancelled_annotations or 0) > 0]
        # One request per labelled task (the list gives annotation ids only): a few at a time, in order.
        with ThreadPoolExecutor(max_workers=_ANNOTATION_READERS) as pool:
            annotations = dict(zip(labelled, pool.map(self.annotations, labelled)))
        for task in tasks:
            yield {"id": task.id, "data": task.data, "annotations": annotations.get(task.id, [])}

    def list_tasks(
        self, project_id: int, include: str, updated_after: str | None = None,
        task_ids: Sequence[int] | None = None, page_size: int = 500, annotated: bool | None = None,
        created_before: str | None = None,
    ) -> Iterator[dict[str, Any]]:
        """Tasks of the project as dicts of the ``include`` fields (names apply to nested annotations and
        predictions too: ``"id,annotations,result"``), in pages of ``page_size``, each task once.

        ``updated_after``: only tasks whose ``updated_at`` is later (an ISO time with microseconds, as Label
        Studio writes them; saving or deleting an annotation updates its task, importing predictions does not).
        ``created_before``: only tasks created no later. ``annotated``: only tasks with (True) or without (False)
        an annotation, skips included. ``task_ids``: only these tasks (asked :data:`_IDS_PER_REQUEST` at a time:
        the ids travel in the URL, which gunicorn caps at 4 KB).
        """
        items = []
        if updated_after is not None:
            items.append({"filter": "filter:tasks:updated_at", "operator": "greater", "type": "Datetime",
                          "value": _ls_time(updated_after)})
        if created_before is not None:
            items.append({"filter": "filter:tasks:created_at", "operator": "less_or_equal", "type": "Datetime",
                          "value": _ls_time(created_before)})
        if annotated is not None:  # annotations.completed_by is null: no annotation (a join: rows repeat)
            items.append({"filter": "filter:tasks:annotators", "operator": "empty", "type": "List",
                          "value": not annotated})
        query: dict[str, Any] = {"filters": {"conjunction": "and", "items": items}} if items else {}
        if task_ids is None:
            yield from self._list_pages(project_id, include, page_size, query)
            return
        ids = [int(t) for t in task_ids]
        for start in range(0, len(ids), _IDS_PER_REQUEST):
            chunk = {**query, "selectedItems": {"all": False, "included": ids[start : start + _IDS_PER_REQUEST]}}
            yield from self._list_pages(project_id, include, page_size, chunk)

    def _list_pages(self, project_id: int, include: str, page_size: int,
                    query: dict[str, Any]) -> Iterator[dict[str, Any]]:
        seen: set[int] = set()
        with self._calling(f"list tasks of project {project_id}"):
            pages = self._client.tasks.list(project=project_id, fields="all", include=include, page_size=page_size,
                                            query=json.dumps(query) if query else None)
            for task in pages:
                if task.id not in seen:
                    seen.add(task.id)
                    yield task.model_dump(mode="json", exclude_unset=True)

    def slide_ids(self, project_id: int) -> list[str]:
        """The slide ids the project's tasks come from (task data ``slide_id``), sorted."""
        with self._calling(f"list tasks of project {project_id}"):
            tasks = self._client.tasks.list(project=project_id, fields="all", include="id,data", page_size=1000)
            return sorted({str(t.data.get("slide_id")) for t in tasks if (t.data or {}).get("slide_id")})

    def export_tasks(self, project_id: int, timeout_s: float = 600.0) -> list[dict[str, Any]]:
        """Label Studio's JSON export of the project: every task with its annotations and predictions."""
        with self._calling(f"export project {project_id}"):
            return list(self._client.projects.exports.as_json(project_id=project_id, timeout=int(timeout_s)))

    def annotations(self, task_id: int) -> list[dict[str, Any]]:
        with self._calling(f"read annotations of task {task_id}"):
            return [a.model_dump(mode="json") for a in self._client.annotations.list(id=task_id)]

    def connect_backend(self, project_id: int, backend_url: str, title: str = "HALI",
                        auth: tuple[str, str] | None = None, webhook_headers: dict[str, str] | None = None) -> None:
        """Connect the ML backend at ``backend_url`` (Label Studio also adds a webhook to ``<url>/webhook``).

        ``auth``: (user, password) Label Studio sends as HTTP basic auth on every backend call;
        ``webhook_headers``: headers set on that webhook (the backend's secret and the same basic auth).
        """
        with self._calling(f"list ML backends of project {project_id}"):
            backends = self._client.ml.list(project=project_id)
        extra = {} if auth is None else {"auth_method": "BASIC_AUTH", "basic_auth_user": auth[0],
                                         "basic_auth_pass": auth[1]}
        known = [b for b in backends if b.url.rstrip("/") == backend_url.rstrip("/")]
        if not known:
            with self._calling(f"connect ML backend {backend_url} to project {project_id}"):
                self._client.ml.create(project=project_id, url=backend_url, title=title, is_interactive=False,
                                       **extra)
        elif extra:  # a project connected before the backend had a password: give Label Studio the new one
            for backend in known:
                with self._calling(f"set the credentials of ML backend {backend.id}"):
                    # project too: Label Studio validates an update by calling the backend's /setup for it (500 without)
                    self._client.ml.update(id=backend.id, url=backend.url, project=project_id, **extra)
        if webhook_headers:
            self._set_webhook_headers(project_id, backend_url.rstrip("/") + "/webhook", webhook_headers)

    def _set_webhook_headers(self, project_id: int, url: str, headers: dict[str, str]) -> None:
        with self._calling(f"list webhooks of project {project_id}"):
            hooks = [h for h in self._client.webhooks.list(project=project_id) if h.url.rstrip("/") == url]
        if not hooks:
            raise LabelStudioError(
                f"Label Studio made no webhook to {url} for project {project_id}: it refuses URLs on private "
                "networks unless LABEL_STUDIO_USE_DEFAULT_BANNED_SUBNETS=false; set it and re-run"
            )
        for hook in hooks:
            with self._calling(f"set the headers of webhook {hook.id}"):
                self._client.webhooks.update(id=hook.id, url=hook.url, headers=headers)

    def project_url(self, project_id: int) -> str:
        return f"{self.url}/projects/{project_id}/data"

    # --- for the dashboard (ml_backend/dashboard/publish.py) ---

    def user_names(self) -> dict[int, str]:
        """User id -> e-mail of every user of the server (annotators are named so on the dashboard)."""
        with self._calling("list users"):
            return {int(u.id): str(u.email or u.username or u.id) for u in self._client.users.list()}

    def prediction_versions(self, prediction_ids: Sequence[int]) -> dict[int, str]:
        """Prediction id -> its ``model_version``, read a few at a time; deleted predictions are left out."""
        def version(pid: int) -> str | None:
            try:
                with self._calling(f"read prediction {pid}"):
                    return self._client.predictions.get(id=pid).model_version
            except LabelStudioError:
                return None  # deleted meanwhile (404): the caller dates the annotation instead

        with ThreadPoolExecutor(max_workers=_ANNOTATION_READERS) as pool:
            found = dict(zip(prediction_ids, pool.map(version, prediction_ids)))
        return {int(k): str(v) for k, v in found.items() if v is not None}

    def backend_urls(self, project_id: int) -> list[str]:
        """URLs of the ML backends connected to the project."""
        with self._calling(f"list ML backends of project {project_id}"):
            return [b.url.rstrip("/") for b in self._client.ml.list(project=project_id)]

    def set_description(self, project_id: int, description: str) -> None:
        self._api("PATCH", f"api/projects/{project_id}/", f"update the description of project {project_id}",
                  params={"include": "id"}, json={"description": description})

    @contextmanager
    def _calling(self, what: str) -> Iterator[None]:
        try:
            yield
        except httpx.TransportError as exc:
            raise LabelStudioError(
                f"could not {what}: Label Studio at {self.url or '?'} is unreachable ({exc.__class__.__name__}: {exc}); "
                "start it (`make up`) or fix HALI_LS_URL"
            ) from exc
        except ApiError as exc:
            raise LabelStudioError(f"could not {what}: {_describe_api_error(exc)}") from exc

    def _import_batch(self, project_id: int, batch: list[dict[str, Any]], key: str) -> list[int]:
        """Import one batch, retrying transient failures; a retry first drops the tasks already in the project."""

        def attempt(n: int) -> list[int]:
            present = self._task_ids_by_key(project_id, key) if n else {}
            pending = [t for t in batch if t["data"][key] not in present]
            if n:
                log.info("project %s: %d of %d tasks of the failed batch are already in; importing %d",
                         project_id, len(batch) - len(pending), len(batch), len(pending))
            new_ids = self._post_tasks(project_id, pending) if pending else []
            by_key = {**present, **dict(zip((t["data"][key] for t in pending), new_ids))}
            return [by_key[t["data"][key]] for t in batch if t["data"][key] in by_key]

        return call_with_retry(attempt, self.retry, (httpx.TransportError, ApiError), _is_transient,
                               what=f"import {len(batch)} tasks into project {project_id}")

    def _post_tasks(self, project_id: int, tasks: list[dict[str, Any]]) -> list[int]:
        resp = self._client.projects.import_tasks(
            id=project_id, request=tasks, return_task_ids=True, request_options=_NO_SDK_RETRY)
        return list(resp.task_ids or [])

    def task_ids_by_key(self, project_id: int, key: str) -> dict[Any, int]:
        """``data[key] -> task id`` of every task in the project (listed lean: id and data only)."""
        with self._calling(f"list tasks of project {project_id}"):
            return self._task_ids_by_key(project_id, key)

    def _task_ids_by_key(self, project_id: int, key: str) -> dict[Any, int]:
        tasks = self._client.tasks.list(project=project_id, fields="all", include="id,data", page_size=1000,
                                        request_options=_NO_SDK_RETRY)
        return {t.data.get(key): t.id for t in tasks if isinstance(t.data, dict) and key in t.data}

    def _import_stopped(self, project_id: int, n_done: int, n_total: int, exc: RetriesExhausted) -> str:
        last = exc.last
        cause = (f"it answered {last.status_code}" if isinstance(last, ApiError)
                 else f"{last.__class__.__name__}: {str(last).rstrip('.')}")
        return (
            f"Label Studio at {self.url or '?'} failed {exc.tries} tries over {exc.seconds:.0f} s while importing "
            f"tasks into project {project_id} ({cause}): at least {n_done} of {n_total} tasks are in. "
            "Re-run the same command once it answers again: tiles already in the project are skipped"
        )


def _ls_time(iso: str) -> str:
    """``iso`` as Label Studio's Datetime filter parses it: ``%Y-%m-%dT%H:%M:%S.%fZ`` (UTC)."""
    when = datetime.fromisoformat(iso)
    when = when.astimezone(UTC) if when.tzinfo else when
    return when.strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _is_transient(exc: Exception) -> bool:
    """A connection failure or a server-side status that may pass; a 4xx other than 408/429 will not."""
    if isinstance(exc, ApiError):
        return exc.status_code in _TRANSIENT_STATUS
    return isinstance(exc, httpx.TransportError)


def _describe_api_error(exc: ApiError) -> str:
    status = exc.status_code
    if status == 401:
        return ("Label Studio refused the API key (401); check HALI_LS_API_KEY: it must be a token of this server "
                "(Account & Settings > Access Token) and HALI_LS_URL must point at that server")
    if status == 404 and isinstance(exc.body, str) and "<html" in exc.body[:500].lower():
        return "404 from Label Studio: this endpoint does not exist in this edition (Enterprise-only?)"
    body = exc.body if isinstance(exc.body, (dict, list)) else str(exc.body)[:300]
    return f"Label Studio answered {status}: {body}"
