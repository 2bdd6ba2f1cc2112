"""Webhook payloads from Label Studio 1.23, validated at the boundary with pydantic.

``parse_webhook(body)`` turns raw JSON into one of three events the backend acts on: labels written
(``ANNOTATION_CREATED``/``ANNOTATION_UPDATED``), annotations deleted (``ANNOTATIONS_DELETED``), and a training
request (``START_TRAINING``). Other actions are returned as :class:`Ignored`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from ml_backend.errors import WebhookError

LABEL_ACTIONS = frozenset({"ANNOTATION_CREATED", "ANNOTATION_UPDATED"})
# Label Studio's ids are positive database keys; anything else is not a payload it sent.
Id = Annotated[int, Field(gt=0, lt=2**63)]


class _AnnotationRef(BaseModel):
    model_config = ConfigDict(extra="ignore")
    id: Id


class _Annotation(BaseModel):
    model_config = ConfigDict(extra="ignore")
    id: Id
    result: list[dict[str, Any]] = []
    was_cancelled: bool = False
    task: int | dict[str, Any] | None = None
    completed_by: int | dict[str, Any] | None = None
    lead_time: float | None = None
    updated_at: str | None = None
    created_at: str | None = None
    parent_prediction: int | None = None


class _Task(BaseModel):
    model_config = ConfigDict(extra="ignore")
    id: Id
    data: dict[str, Any]


class _Project(BaseModel):
    model_config = ConfigDict(extra="ignore")
    id: Id
    label_config: str | None = None


class _Payload(BaseModel):
    model_config = ConfigDict(extra="ignore")
    action: str
    project: _Project | None = None
    annotation: _Annotation | None = None
    task: _Task | None = None
    annotations: list[_AnnotationRef] | None = None


@dataclass(frozen=True)
class LabelsWritten:
    project_id: int
    annotation_id: int
    task_id: int
    task_data: dict[str, Any]
    result: list[dict[str, Any]]
    cancelled: bool
    label_config: str | None
    updated_at: str
    from_prediction: bool = False  # the annotation started from a prediction: the annotator saw HALI's boxes
    lineage: dict[str, Any] | None = None  # AnnotationRecord's completed_by, created_at, lead_time, parent_prediction


@dataclass(frozen=True)
class AnnotationsDeleted:
    project_id: int
    annotation_ids: tuple[int, ...]


@dataclass(frozen=True)
class TrainingRequested:
    project_id: int


@dataclass(frozen=True)
class Ignored:
    action: str


WebhookEvent = LabelsWritten | AnnotationsDeleted | TrainingRequested | Ignored


def parse_webhook(body: Any) -> WebhookEvent:
    """The event in a webhook body; raises :class:`WebhookError` naming the first bad field."""
    if not isinstance(body, dict):
        raise WebhookError("webhook body must be a JSON object with an 'action' field")
    try:
        payload = _Payload.model_validate(body)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"])
        raise WebhookError(f"webhook field {where!r}: {first['msg']}") from exc
    if payload.action in LABEL_ACTIONS:
        return _labels_written(payload)
    if payload.action == "ANNOTATIONS_DELETED":
        return AnnotationsDeleted(_project_id(payload), tuple(a.id for a in payload.annotations or []))
    if payload.action == "START_TRAINING":
        return TrainingRequested(_project_id(payload))
    return Ignored(payload.action)


def _labels_written(p: _Payload) -> LabelsWritten:
    if p.annotation is None or p.task is None:
        raise WebhookError(f"{p.action} webhook without 'annotation' and 'task'; send Label Studio's full payload")
    return LabelsWritten(
        project_id=_project_id(p),
        annotation_id=p.annotation.id,
        task_id=p.task.id,
        task_data=p.task.data,
        result=p.annotation.result,
        cancelled=p.annotation.was_cancelled,
        label_config=p.project.label_config if p.project else None,
        updated_at=p.annotation.updated_at or "",
        from_prediction=p.annotation.parent_prediction is not None,
        lineage=_lineage(p.annotation),
    )


def _lineage(a: _Annotation) -> dict[str, Any]:
    user = a.completed_by.get("id") if isinstance(a.completed_by, dict) else a.completed_by
    return {"completed_by": user if isinstance(user, int) else None, "created_at": a.created_at or "",
            "lead_time": a.lead_time, "parent_prediction": a.parent_prediction}


def _project_id(p: _Payload) -> int:
    if p.project is None:
        raise WebhookError(f"{p.action} webhook without 'project'; send Label Studio's full payload")
    return p.project.id
