"""Fuzzed HTTP requests on every route of the backend app, and the checks on each answer (hypothesis).

Not a bench itself: ``bench/bench_fuzz.py`` sends 10,000 of them to a served backend, and
``tests/integration/test_backend_fuzz.py`` a few hundred to the app on every CI run. Both use a data dir built by
:func:`build_world` (a preprocessed slide, a saved model and a dashboard snapshot of project 7), so well-formed
requests reach the code behind the 4xx checks: half the bodies are Label Studio's own payloads with one part
replaced by fuzz, the rest arbitrary JSON, raw bytes, deep nesting and wrong content types.

A request is :class:`FuzzRequest` (method, path, query, headers, body bytes); :func:`problems` lists what is wrong
with an answer: a 5xx, or a secret or a filesystem path in the body that the request did not carry itself.
"""

from __future__ import annotations

import base64
import json
import string
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from hypothesis import strategies as st
from werkzeug.routing import Map

from label_config import CellBox, TileTask, build_label_config, cell_to_region

PROJECT_ID = 7
CLASSES = ["Tumor", "Other"]
LABEL_CONFIG = build_label_config(CLASSES)
WEBHOOK_ACTIONS = ["ANNOTATION_CREATED", "ANNOTATION_UPDATED", "ANNOTATIONS_DELETED", "START_TRAINING",
                   "TASKS_CREATED", "PROJECT_UPDATED"]
PATHS_NEVER_SHOWN = ("/tmp", "/work", "/home", "/root", "/var")  # and the data dir and files root themselves


@dataclass(frozen=True)
class FuzzRequest:
    method: str
    path: str
    query: dict[str, str] = field(default_factory=dict)
    headers: dict[str, str] = field(default_factory=dict)
    body: bytes = b""
    rule: str = ""  # the url_map rule the path was made from

    def carried(self) -> str:
        """Everything the request sent, as text: an answer may echo it without leaking anything."""
        return " ".join([self.path, json.dumps(self.query), json.dumps(self.headers),
                         self.body.decode("utf-8", "replace")])


@dataclass(frozen=True)
class World:
    """What :func:`build_world` made: a tile of project 7 whose cells the backend knows, and the secrets."""

    tile: TileTask
    user: str
    password: str
    webhook_secret: str
    secrets: tuple[str, ...]  # never in a body: passwords, the Redis URL, S3 keys, the data dir
    paths: tuple[str, ...]


def build_world(data_dir: Path, files_root: Path, secrets: tuple[str, ...], password: str, webhook_secret: str,
                user: str = "hali") -> World:
    """Write slide ``s1`` (8 cells, 16-d features), a logreg model v1 and a dashboard snapshot of project 7."""
    from ml_backend.dashboard.metrics import AnnotationFact
    from ml_backend.dashboard.snapshot import build_snapshot
    from ml_backend.dashboard.store import DashboardFiles
    from ml_backend.model.learners import make_learner
    from ml_backend.model.store import ModelStore
    from preprocess.layout import DataLayout
    from preprocess.tiles.cells import CellTable

    cells = tuple(CellBox(f"s1-{i}", 100 + 20 * i, 100, 10, 10) for i in range(8))
    tile = TileTask("t1", "s1", "/img.png", 90, 90, 180, 30, 1.0, 0.5, cells)
    layout = DataLayout(data_dir, files_root)
    features = np.random.default_rng(0).normal(size=(8, 16)).astype(np.float32)
    CellTable(np.array([c.cell_id for c in cells]), np.array([[c.x0, c.y0, c.w, c.h] for c in cells], np.int32),
              np.array(["t1"] * 8), features).save(layout.cells_path("s1"))
    targets = [*CLASSES, "Not a nucleus"]
    head = make_learner("logreg", len(targets)).fit(features, np.arange(8) % len(targets))
    models = layout.models_dir(PROJECT_ID)
    ModelStore(models).save(1, head, {"classes": CLASSES, "targets": targets, "metrics": {"n_labels": 8}})
    fact = AnnotationFact(1, 3, "s1", "ann", 0.0, 60.0, 5, {cells[0].cell_id: "Tumor"}, 1, 0)
    sidecars = [{"version": 1, "model_version": "hali-v0001", "created_at": "2026-12-01T00:00:00+00:00",
                 "metrics": {"n_labels": 1, "n_train": 1}}]
    DashboardFiles(models).write_snapshot(build_snapshot(PROJECT_ID, [fact], {3: tile}, {cells[0].cell_id: "Tumor"},
                                                         targets, sidecars, {5: "hali-v0001"},
                                                         {"Tumor": (214, 39, 40), "Other": (31, 119, 180)}, 0.1))
    paths = (str(data_dir), str(files_root), *PATHS_NEVER_SHOWN)
    return World(tile, user, password, webhook_secret, secrets + (password, webhook_secret), paths)


def route_rules(url_map: Map) -> list[tuple[str, list[str]]]:
    """(rule, methods) of every route but Flask's static files, e.g. ``("/status/<int:project_id>", ["GET"])``."""
    return sorted((r.rule, sorted(r.methods - {"HEAD", "OPTIONS"})) for r in url_map.iter_rules()
                  if r.endpoint != "static")


def problems(req: FuzzRequest, status: int, body: bytes, world: World) -> list[str]:
    """What is wrong with an answer: a 5xx, a secret or a path it shows that the request did not send."""
    found = [f"{status} on {req.method} {req.path}"] if status >= 500 else []
    text, sent = body.decode("utf-8", "replace"), req.carried()
    for value in (*world.secrets, *world.paths):
        if value and value in text and value not in sent:
            found.append(f"{req.method} {req.path} ({status}) shows {value!r}")
    return found


# ---- strategies ---------------------------------------------------------------------------------------------

_keys = st.sampled_from(["project", "tasks", "action", "annotation", "task", "data", "id", "result", "label_config",
                         "annotations", "schema", "cells", "slide_id", "tile_id", "x0", "value", "was_cancelled",
                         "completed_by", "parent_prediction", "params", "format", "image"])
_nasty_text = st.sampled_from(["", "..", "../..", "../../etc/passwd", "7.1", "7", "-1", "0", "1e309", "NaN",
                               "s1", "s1-0", "t1", "hali-v0001", "<script>", "%00", "\x00", "ｓ１", "9" * 40,
                               "Tumor", "Not a nucleus", "/data/local-files/?d=x"])
_scalars = st.one_of(st.none(), st.booleans(), st.integers(-(2**70), 2**70), st.floats(allow_nan=False),
                     st.text(max_size=30), _nasty_text)
json_values = st.recursive(_scalars, lambda inner: st.one_of(st.lists(inner, max_size=4),
                                                             st.dictionaries(st.one_of(_keys, st.text(max_size=8)),
                                                                             inner, max_size=5)), max_leaves=25)


def _project_value(draw) -> Any:
    return draw(st.one_of(st.just(PROJECT_ID), st.just(f"{PROJECT_ID}.1700000000"), st.just({"id": PROJECT_ID}),
                          st.just({"id": PROJECT_ID, "label_config": LABEL_CONFIG}), json_values))


def _mutate(draw, payload: dict[str, Any]) -> dict[str, Any]:
    """``payload`` with a few parts (at any depth) replaced by fuzz or removed."""
    for _ in range(draw(st.integers(0, 3))):
        node, path = payload, []
        while isinstance(node, dict | list) and node and draw(st.booleans()):
            key = draw(st.sampled_from(list(node.keys()) if isinstance(node, dict) else list(range(len(node)))))
            path.append(node)
            node = node[key]
            path.append(key)
        if len(path) >= 2:
            parent, key = path[-2], path[-1]
            if isinstance(parent, dict) and draw(st.booleans()):
                del parent[key]
            else:
                parent[key] = draw(json_values)
    return payload


def _annotation_payload(world: World, draw) -> dict[str, Any]:
    tile = world.tile
    labels = [draw(st.sampled_from([*CLASSES, "No class yet", "Not a nucleus", "Tumour"])) for _ in tile.cells]
    result = [cell_to_region(c, tile, lab) for c, lab in zip(tile.cells, labels)][: draw(st.integers(0, 8))]
    return {"action": draw(st.sampled_from(WEBHOOK_ACTIONS)),
            "project": {"id": PROJECT_ID, "label_config": LABEL_CONFIG},
            "annotation": {"id": draw(st.integers(1, 50)), "result": result, "task": 3, "lead_time": 4.0,
                           "updated_at": "2026-12-01T10:00:00Z", "completed_by": 1, "parent_prediction": 5},
            "task": {"id": 3, "data": tile.to_task_data()},
            "annotations": [{"id": draw(st.integers(1, 50))}]}


def _predict_payload(world: World, draw) -> dict[str, Any]:
    return {"project": f"{PROJECT_ID}.1700000000", "label_config": LABEL_CONFIG, "params": {},
            "tasks": [{"id": 3, "data": world.tile.to_task_data()} for _ in range(draw(st.integers(0, 3)))]}


@st.composite
def bodies(draw, world: World, path: str) -> bytes:
    """A request body: a mutated Label Studio payload, arbitrary JSON, or raw bytes."""
    kind = draw(st.sampled_from(["payload", "payload", "json", "raw", "deep", "empty"]))
    if kind == "payload":
        make = _predict_payload if path in ("/predict", "/setup") else _annotation_payload
        return json.dumps(_mutate(draw, make(world, draw))).encode()
    if kind == "json":
        value = draw(json_values)
        if isinstance(value, dict) and draw(st.booleans()):
            value["project"] = _project_value(draw)
        return json.dumps(value).encode()
    if kind == "raw":
        return draw(st.binary(max_size=200))
    if kind == "deep":
        n = draw(st.sampled_from([50, 999, 5000, 100_000]))
        return (draw(st.sampled_from(["[", '{"a":'])) * n).encode()
    return b""


@st.composite
def _path(draw, rule: str) -> str:
    """``rule`` with its variables filled: mostly plausible ids, sometimes anything."""
    out, i = [], 0
    while (start := rule.find("<", i)) >= 0:
        end = rule.index(">", start)
        out.append(rule[i:start])
        conv = rule[start + 1:end].split(":")[0] if ":" in rule[start:end] else "string"
        if conv == "int":
            value = str(draw(st.one_of(st.just(PROJECT_ID), st.integers(0, 2**70), st.sampled_from([-1, 0]))))
        else:
            value = draw(st.one_of(st.sampled_from(["s1", "progress", "learning", "annotators", "acceptance", "..",
                                                    "%2e%2e", "x" * 300]),
                                   st.text(string.ascii_letters + string.digits + "-_.%~", min_size=1, max_size=20)))
        out.append(value)
        i = end + 1
    out.append(rule[i:])
    return "".join(out)


@st.composite
def _headers(draw, world: World) -> dict[str, str]:
    auth = draw(st.sampled_from(["good"] * 8 + ["none", "wrong", "garbage", "bearer"]))
    headers = {}
    if auth == "good":
        headers["Authorization"] = "Basic " + base64.b64encode(f"{world.user}:{world.password}".encode()).decode()
    elif auth == "wrong":
        headers["Authorization"] = "Basic " + base64.b64encode(f"{world.user}:nope".encode()).decode()
    elif auth == "garbage":
        headers["Authorization"] = draw(st.sampled_from(["Basic", "Basic !!!", "Basic " + "A" * 5000, "Digest x"]))
    elif auth == "bearer":
        headers["Authorization"] = "Bearer abc"
    secret = draw(st.sampled_from(["good"] * 8 + ["none", "wrong"]))
    if secret != "none":
        headers["X-Hali-Secret"] = world.webhook_secret if secret == "good" else "wrong"
    content_types = ["text/plain", "application/x-www-form-urlencoded", "multipart/form-data; boundary=x", ""]
    headers["Content-Type"] = draw(st.sampled_from(["application/json"] * 6 + content_types))
    headers["Accept"] = draw(st.sampled_from(["*/*", "application/json", "text/plain", "text/html", ""]))
    return headers


@st.composite
def requests_on(draw, world: World, rules: list[tuple[str, list[str]]]) -> FuzzRequest:
    """One request on one of ``rules``: its own methods mostly, a wrong one sometimes."""
    rule, methods = draw(st.sampled_from(rules))
    method = draw(st.sampled_from(methods * 6 + ["GET", "POST", "PUT", "DELETE", "PATCH"]))
    path = draw(_path(rule))
    query = draw(st.dictionaries(st.sampled_from(["project", "format", "x", "page"]),
                                 st.one_of(st.sampled_from(["7", "7.1", "json", "prometheus", "", "-1", "..", "x"]),
                                           st.text(max_size=10)), max_size=2))
    body = draw(bodies(world, rule)) if method in ("POST", "PUT", "PATCH") or draw(st.integers(0, 9)) == 0 else b""
    return FuzzRequest(method, path, query, draw(_headers(world)), body, rule)
