"""The project manager's routes, behind the backend's basic auth (``app._check_basic_auth``).

======================================== ===========================================================
GET /dashboard/<p>                       the dashboard page (HTML, server-rendered from the snapshot)
GET /dashboard/<p>/<plot>.png            progress, annotators, acceptance, learning (matplotlib)
GET /dashboard/<p>/coverage/<slide>.png  the slide's coverage map (drawn by the worker)
GET /metrics, /metrics/<p>               JSON; Prometheus text with ``?format=prometheus`` or
                                         ``Accept: text/plain`` (what a Prometheus scrape asks for)
======================================== ===========================================================

Every figure comes from the metrics snapshot the worker writes after each retrain
(:mod:`ml_backend.dashboard.snapshot`), so a page costs the same for a million cells as for ten. Plots are
drawn on request and kept per snapshot; matplotlib is imported only when a plot is first asked for.
"""

from __future__ import annotations

import threading
from pathlib import Path

from flask import Blueprint, Response, jsonify, request, send_file
from werkzeug.exceptions import BadRequest, NotFound, ServiceUnavailable, Unauthorized

from ml_backend.dashboard.page import render_empty, render_page
from ml_backend.dashboard.store import DashboardFiles
from ml_backend.dashboard.summary import prometheus_text, summary
from ml_backend.labels.redis_store import RedisLabelStore
from ml_backend.settings import BackendSettings
from preprocess.layout import DataLayout

PLOT_NAMES = ("progress", "annotators", "acceptance", "learning")
PROMETHEUS_TYPE = "text/plain; version=0.0.4; charset=utf-8"


def dashboard_blueprint(settings: BackendSettings, store: RedisLabelStore) -> Blueprint:
    layout = DataLayout(settings.data_dir, settings.ls_files_root)
    bp = Blueprint("dashboard", __name__)
    plots = _PlotCache()

    def files(project_id: int) -> DashboardFiles:
        return DashboardFiles(layout.models_dir(project_id))

    @bp.get("/dashboard/<int:project_id>")
    def page(project_id: int):
        snapshot = files(project_id).read_snapshot()
        if snapshot is None:
            return Response(render_empty(project_id), 404, mimetype="text/html")
        return Response(render_page(snapshot, store.pending(project_id), request.script_root), mimetype="text/html")

    @bp.get("/dashboard/<int:project_id>/<name>.png")
    def plot(project_id: int, name: str):
        if name not in PLOT_NAMES:
            raise NotFound(f"no plot {name!r}; the dashboard has {', '.join(PLOT_NAMES)}")
        path = files(project_id).snapshot_path
        snapshot = files(project_id).read_snapshot()
        if snapshot is None:
            raise NotFound(f"project {project_id} has no dashboard yet; it is written after its first retrain")
        png = plots.get((project_id, name, path.stat().st_mtime_ns), lambda: _draw(name, snapshot))
        return Response(png, mimetype="image/png", headers={"Cache-Control": "no-cache"})

    @bp.get("/dashboard/<int:project_id>/coverage/<slide_id>.png")
    def coverage(project_id: int, slide_id: str):
        path = files(project_id).coverage_path(slide_id)
        if path is None or not path.exists():
            raise NotFound(f"no coverage map of slide {slide_id!r} in project {project_id}")
        return send_file(path, mimetype="image/png", max_age=0)

    @bp.get("/metrics")
    def metrics_all():
        summaries = [summary(s, store.pending(int(s["project_id"]))) for s in _all_snapshots(layout.data_dir)]
        if _wants_prometheus():
            return Response(prometheus_text(summaries), mimetype=PROMETHEUS_TYPE)
        return jsonify(projects=summaries)

    @bp.get("/metrics/<int:project_id>")
    def metrics_one(project_id: int):
        snapshot = files(project_id).read_snapshot()
        if snapshot is None:
            raise NotFound(f"project {project_id} has no metrics yet; they are written after its first retrain")
        pending = store.pending(project_id)
        if _wants_prometheus():
            return Response(prometheus_text([summary(snapshot, pending)]), mimetype=PROMETHEUS_TYPE)
        return jsonify(summary=summary(snapshot, pending), snapshot=snapshot)

    @bp.errorhandler(Unauthorized)
    def _ask_for_credentials(exc: Unauthorized):
        """A browser shows its login box only when the 401 names the scheme."""
        return jsonify(error=exc.description), 401, {"WWW-Authenticate": 'Basic realm="HALI", charset="UTF-8"'}

    return bp


def _wants_prometheus() -> bool:
    fmt = request.args.get("format", "")
    if fmt:
        if fmt not in ("prometheus", "json"):
            raise BadRequest(f"unknown format {fmt!r}; use format=json or format=prometheus")
        return fmt == "prometheus"
    return request.accept_mimetypes.best_match(["application/json", "text/plain"]) == "text/plain"


def _all_snapshots(data_dir: Path) -> list[dict]:
    found = []
    for path in sorted((data_dir / "projects").glob("*/dashboard/snapshot.json")):
        snapshot = DashboardFiles(path.parent.parent).read_snapshot()
        if snapshot is not None and "project_id" in snapshot:
            found.append(snapshot)
    return found


def _draw(name: str, snapshot: dict) -> bytes:
    try:
        from ml_backend.dashboard.plots import PLOTS  # matplotlib loads here, on the first plot asked for
    except ImportError as exc:
        raise ServiceUnavailable(f"the dashboard's plots need matplotlib ({exc}); pip install 'matplotlib>=3.8' "
                                 "into the backend's environment") from None
    return PLOTS[name](snapshot)


class _PlotCache:
    """PNG bytes per (project, plot, snapshot mtime): each plot is drawn once per snapshot."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._pngs: dict[tuple, bytes] = {}

    def get(self, key: tuple, draw) -> bytes:
        with self._lock:
            if key in self._pngs:
                return self._pngs[key]
        png = draw()
        with self._lock:
            stale = [k for k in self._pngs if k[:2] == key[:2]]
            for k in stale:
                del self._pngs[k]
            self._pngs[key] = png
        return png
