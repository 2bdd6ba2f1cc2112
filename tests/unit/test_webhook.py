import pytest

from label_config import build_label_config
from ml_backend.errors import WebhookError
from ml_backend.http.webhook import AnnotationsDeleted, Ignored, LabelsWritten, TrainingRequested, parse_webhook


def _created(**over):
    body = {
        "action": "ANNOTATION_CREATED",
        "project": {"id": 3, "label_config": build_label_config(["A", "B"])},
        "annotation": {"id": 9, "result": [], "was_cancelled": False, "task": 5, "updated_at": "2026-11-22T10:00"},
        "task": {"id": 5, "data": {"tile_id": "t"}},
    }
    body.update(over)
    return body


def test_annotation_created_becomes_labels_written():
    event = parse_webhook(_created())
    assert isinstance(event, LabelsWritten)
    assert (event.project_id, event.annotation_id, event.task_id) == (3, 9, 5)


@pytest.mark.parametrize("body", [[], "x", {"no": "action"}, _created(annotation={"result": []}),
                                  _created(project=None), _created(task=None)])
def test_malformed_bodies_raise_webhook_error_naming_the_field(body):
    with pytest.raises(WebhookError):
        parse_webhook(body)


def test_delete_training_and_other_events():
    assert parse_webhook({"action": "ANNOTATIONS_DELETED", "project": {"id": 1}, "annotations": [{"id": 4}]}) == \
        AnnotationsDeleted(1, (4,))
    assert parse_webhook({"action": "START_TRAINING", "project": {"id": 1}}) == TrainingRequested(1)
    assert parse_webhook({"action": "TASKS_CREATED", "project": {"id": 1}}) == Ignored("TASKS_CREATED")
