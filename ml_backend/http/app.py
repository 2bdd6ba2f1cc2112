"""The ML backend's HTTP API, served from Flask 3 (the contract Label Studio 1.23 calls).

=========== =================================================================================
GET /health  liveness (Label Studio calls it, 1 s timeout, before every /setup)
POST /setup  the model version the project should show
POST /predict  class suggestions for the given tasks, from cached embeddings
POST /webhook  records new cell labels, enqueues a retrain every ``retrain_every`` labels; never trains
GET /versions  the project's model versions
GET /dashboard/<p>, /metrics  the project manager's page and figures (ml_backend/http/dashboard.py)
GET /status/<project>  labels pending, what the last retrain did, and a warning when labels wait too long
=========== =================================================================================

Errors are JSON ``{"error": "..."}`` with a 4xx/5xx status, never a traceback.
"""

from __future__ import annotations

import hmac
import logging
from typing import Any

from flask import Flask, jsonify, request
from redis import Redis
from redis.exceptions import RedisError
from rq import Queue
from werkzeug.exceptions import HTTPException, Unauthorized

from adapters.errors import StorageError, StorageKeyError
from adapters.settings import redacted_url
from label_config import LabelConfigError, TileTask, parse_label_set, version_name
from ml_backend.errors import NotPreprocessedError, UnknownCellError, WebhookError
from ml_backend.http.dashboard import dashboard_blueprint
from ml_backend.http.webhook import AnnotationsDeleted, Ignored, LabelsWritten, TrainingRequested, parse_webhook
from ml_backend.labels.records import annotation_record
from ml_backend.labels.redis_store import RedisLabelStore
from ml_backend.model.store import ModelStore, ModelStoreError
from ml_backend.retrain.catchup import stale_warning
from ml_backend.retrain.job import enqueue_retrain
from ml_backend.settings import BackendSettings
from ml_backend.suggestions.embeddings import tables_storage
from ml_backend.suggestions.predictor import Predictor
from preprocess.layout import DataLayout

log = logging.getLogger(__name__)


def create_app(settings: BackendSettings | None = None, redis: Redis | None = None) -> Flask:
    settings = settings or BackendSettings()
    redis = redis or Redis.from_url(settings.redis_url, socket_timeout=0.5, socket_connect_timeout=0.5)
    layout = DataLayout(settings.data_dir, settings.ls_files_root)
    store, queue = RedisLabelStore(redis), Queue(settings.queue_name, connection=redis)
    predictor = Predictor(layout, tables_storage(settings))
    app = Flask("hali")
    app.config["MAX_CONTENT_LENGTH"] = settings.max_body_mb * 1024 * 1024  # larger bodies: 413
    _register_errors(app, settings)
    app.before_request(lambda: _check_basic_auth(settings))
    app.register_blueprint(dashboard_blueprint(settings, store))  # /dashboard/<p>, /metrics

    @app.get("/health")
    @app.get("/")
    def health():
        return jsonify(status="UP", model_class="HALI", redis=_redis_ok(redis))

    @app.post("/setup")
    def setup():
        project_id = _project_id(_json_body().get("project"))
        return jsonify(model_version=predictor.current_version(project_id))

    @app.post("/predict")
    def predict():
        body = _json_body()
        project_id = _project_id(body.get("project"))
        tasks, label_config = _predict_input(body)
        results = predictor.predict(project_id, tasks, label_config)
        return jsonify(results=results, model_version=predictor.current_version(project_id))

    @app.post("/webhook")
    def webhook():
        _check_secret(settings)
        event = parse_webhook(_json_body())
        if isinstance(event, LabelsWritten):
            return _on_labels(event, store, queue, settings)
        if isinstance(event, AnnotationsDeleted):
            store.delete(event.project_id, event.annotation_ids)
            return jsonify(deleted=len(event.annotation_ids))
        if isinstance(event, TrainingRequested):
            return jsonify(job=enqueue_retrain(queue, store, event.project_id, settings))
        assert isinstance(event, Ignored)
        return jsonify(ignored=event.action)

    @app.route("/versions", methods=["GET", "POST"])
    def versions():
        body = request.get_json(silent=True)
        project = (body.get("project") if isinstance(body, dict) else None) or request.args.get("project")
        if project is None:
            return jsonify(versions=[])
        latest = ModelStore(layout.models_dir(_project_id(project))).latest_version()
        return jsonify(versions=[version_name(v) for v in range(latest, -1, -1)])

    @app.get("/status/<int:project_id>")
    def status(project_id: int):
        return jsonify(pending=store.pending(project_id), retrain_every=settings.retrain_every,
                       last_retrain=store.status(project_id) or None,
                       stale=stale_warning(store, project_id, settings.stale_retrain_s))

    return app


def _on_labels(event: LabelsWritten, store: RedisLabelStore, queue: Queue, settings: BackendSettings):
    if not event.label_config:
        raise WebhookError("annotation webhook without project.label_config; send Label Studio's full payload")
    labels = parse_label_set(event.label_config)
    tile = TileTask.from_task_data(event.task_data)
    rec, problems = annotation_record(event.task_id, tile, event.result, labels, event.cancelled, event.updated_at,
                                      event.from_prediction, **(event.lineage or {}))
    pending = store.record(event.project_id, event.annotation_id, rec)
    job = enqueue_retrain(queue, store, event.project_id, settings) if pending >= settings.retrain_every else None
    body = {"recorded": len(rec.labels), "drawn": len(rec.drawn), "pending": pending, "job": job}
    if problems:
        log.warning("project %s annotation %s: %s", event.project_id, event.annotation_id, "; ".join(problems))
        return jsonify(error="; ".join(problems), **body), 422
    return jsonify(body)


def _register_errors(app: Flask, settings: BackendSettings) -> None:
    def answer(status: int, message: str):
        return jsonify(error=message), status

    app.register_error_handler(WebhookError, lambda e: answer(400, str(e)))
    app.register_error_handler(LabelConfigError, lambda e: answer(422, str(e)))
    app.register_error_handler(UnknownCellError, lambda e: answer(422, str(e)))
    app.register_error_handler(NotPreprocessedError, lambda e: answer(409, str(e)))
    app.register_error_handler(StorageError, lambda e: answer(503, str(e)))
    app.register_error_handler(StorageKeyError, lambda e: answer(422, str(e)))
    app.register_error_handler(ModelStoreError, lambda e: answer(503, str(e)))
    app.register_error_handler(
        RedisError,
        lambda e: answer(503, f"Redis at {redacted_url(settings.redis_url)} is unreachable ({e.__class__.__name__}); start it. "
                              "No label is lost: the worker's reconcile reads it from Label Studio"),
    )
    app.register_error_handler(HTTPException, lambda e: answer(e.code or 500, e.description or e.name))
    app.register_error_handler(
        RecursionError, lambda e: answer(400, "request body nests too deep to be a Label Studio payload"))

    @app.errorhandler(Exception)
    def _unexpected(exc: Exception):  # process edge: log it, answer JSON
        log.exception("unexpected error on %s %s", request.method, request.path)
        return answer(500, f"internal error ({exc.__class__.__name__}); see the backend log")


def _json_body() -> dict[str, Any]:
    body = request.get_json(silent=True)
    if not isinstance(body, dict):
        raise WebhookError("request body must be a JSON object (Content-Type: application/json)")
    return body


def _predict_input(body: dict[str, Any]) -> tuple[list[dict[str, Any]], str]:
    """The tasks and the label config of a /predict body; WebhookError (400) naming the bad one."""
    tasks, label_config = body.get("tasks"), body.get("label_config") or ""
    if not isinstance(tasks, list) or not all(isinstance(t, dict) for t in tasks):
        raise WebhookError("'tasks' must be a list of Label Studio task objects")
    if not isinstance(label_config, str):
        raise WebhookError("'label_config' must be the project's label config, an XML string")
    return tasks, label_config


def _project_id(value: Any) -> int:
    """Label Studio sends ``project`` as ``"<id>.<timestamp>"``, an int, or a project object."""
    if isinstance(value, dict):
        value = value.get("id")
    try:
        return int(str(value).split(".")[0])
    except ValueError:
        raise WebhookError(f"'project' must be a project id, got {value!r}") from None


_OPEN_ROUTES = frozenset({"/health", "/"})  # liveness only: Label Studio and load balancers probe it


def _check_basic_auth(settings: BackendSettings) -> None:
    """With HALI_BACKEND_PASSWORD set, every route but /health needs HTTP basic auth (Label Studio sends it)."""
    password = settings.backend_password.get_secret_value()
    if not password or request.path in _OPEN_ROUTES:
        return
    auth = request.authorization
    ok = auth is not None and auth.type == "basic" and hmac.compare_digest(auth.username or "", settings.backend_user) \
        and hmac.compare_digest(auth.password or "", password)
    if not ok:
        raise Unauthorized("this backend needs HTTP basic auth (HALI_BACKEND_USER / HALI_BACKEND_PASSWORD); "
                           "`hali preprocess --backend-url` connects Label Studio with them")


def _check_secret(settings: BackendSettings) -> None:
    secret = settings.webhook_secret.get_secret_value()
    if secret and not hmac.compare_digest(request.headers.get("X-Hali-Secret", ""), secret):
        raise Unauthorized("missing or wrong X-Hali-Secret header; set it on the project's webhook")


def _redis_ok(redis: Redis) -> bool:
    try:
        return bool(redis.ping())
    except RedisError:
        return False
