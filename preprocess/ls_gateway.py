"""LabelStudioGateway: every call HALI makes to Label Studio, through the SDK (label-studio-sdk 2.1.2).

The SDK client is passed in (``LabelStudioGateway(client)``), or built by :meth:`LabelStudioGateway.connect`.
Every call is wrapped so that a server that is down, a bad token or an Enterprise-only endpoint becomes a
:class:`~preprocess.errors.LabelStudioError` that says which call failed and what to do, never a 170 KB
HTML page inside a traceback.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import httpx
from label_studio_sdk import LabelStudio
from label_studio_sdk.core.api_error import ApiError

from preprocess.errors import LabelStudioError

log = logging.getLogger(__name__)

UNCERTAINTY_SAMPLING = "Uncertainty sampling"
_IMPORT_BATCH = 500


class LabelStudioGateway:
    """Projects, tasks, predictions and annotations of one Label Studio server."""

    def __init__(self, client: LabelStudio, url: str = "") -> None:
        self._client = client
        self.url = url.rstrip("/")

    @classmethod
    def connect(cls, url: str, api_key: str, timeout_s: float = 60.0) -> LabelStudioGateway:
        """Gateway for the server at ``url``; checks that it answers and that the key is accepted."""
        if not api_key:
            raise LabelStudioError(
                f"no Label Studio API key for {url}; set HALI_LS_API_KEY (Account & Settings > Access Token)"
            )
        gateway = cls(LabelStudio(base_url=url, api_key=api_key, timeout=timeout_s), url)
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

    def get_project(self, project_id: int) -> Any:
        with self._calling(f"read project {project_id}"):
            return self._client.projects.get(id=project_id)

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

    def import_tasks(self, project_id: int, tasks: Sequence[dict[str, Any]]) -> list[int]:
        """Import tasks (each ``{"data", "predictions"}``) in batches; returns the new task ids in order."""
        ids: list[int] = []
        for start in range(0, len(tasks), _IMPORT_BATCH):
            batch = list(tasks[start : start + _IMPORT_BATCH])
            with self._calling(f"import {len(batch)} tasks into project {project_id}"):
                resp = self._client.projects.import_tasks(id=project_id, request=batch, return_task_ids=True)
            ids.extend(resp.task_ids or [])
        return ids

    def import_predictions(self, project_id: int, predictions: Sequence[dict[str, Any]]) -> int:
        """Add predictions (each ``{"task", "model_version", "score", "result"}``) to existing tasks."""
        created = 0
        for start in range(0, len(predictions), _IMPORT_BATCH):
            batch = list(predictions[start : start + _IMPORT_BATCH])
            with self._calling(f"import {len(batch)} predictions into project {project_id}"):
                created += self._client.projects.import_predictions(id=project_id, request=batch).created or 0
        return created

    def serve_version(self, project_id: int, model_version: str) -> None:
        """Show ``model_version``'s predictions and serve tasks by their score (static mode, see notes)."""
        with self._calling(f"set model version {model_version} on project {project_id}"):
            self._client.projects.update(
                id=project_id, model_version=model_version, sampling=UNCERTAINTY_SAMPLING, show_collab_predictions=True
            )

    def iter_tasks(self, project_id: int) -> Iterator[dict[str, Any]]:
        """Every task of the project as ``{"id", "data", "annotations"}`` dicts (predictions left out).

        Tasks are listed lean (their predictions grow with every model version) and annotations are read
        only for the tasks that have some.
        """
        fields = "id,data,total_annotations,cancelled_annotations"
        with self._calling(f"list tasks of project {project_id}"):
            tasks = list(self._client.tasks.list(project=project_id, fields="all", include=fields, page_size=1000))
        for task in tasks:
            has = (task.total_annotations or 0) + (task.cancelled_annotations or 0) > 0
            yield {"id": task.id, "data": task.data, "annotations": self.annotations(task.id) if has else []}

    def annotations(self, task_id: int) -> list[dict[str, Any]]:
        with self._calling(f"read annotations of task {task_id}"):
            return [a.model_dump(mode="json") for a in self._client.annotations.list(id=task_id)]

    def connect_backend(self, project_id: int, backend_url: str, title: str = "HALI") -> None:
        """Connect the ML backend at ``backend_url`` (Label Studio also adds a webhook to ``<url>/webhook``)."""
        with self._calling(f"list ML backends of project {project_id}"):
            backends = self._client.ml.list(project=project_id)
        if any(b.url.rstrip("/") == backend_url.rstrip("/") for b in backends):
            return
        with self._calling(f"connect ML backend {backend_url} to project {project_id}"):
            self._client.ml.create(project=project_id, url=backend_url, title=title, is_interactive=False)

    def project_url(self, project_id: int) -> str:
        return f"{self.url}/projects/{project_id}/data"

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


def _describe_api_error(exc: ApiError) -> str:
    status = exc.status_code
    if status == 401:
        return "Label Studio refused the API key (401); set HALI_LS_API_KEY to a valid token"
    if status == 404 and isinstance(exc.body, str) and "<html" in exc.body[:500].lower():
        return "404 from Label Studio: this endpoint does not exist in this edition (Enterprise-only?)"
    body = exc.body if isinstance(exc.body, (dict, list)) else str(exc.body)[:300]
    return f"Label Studio answered {status}: {body}"
