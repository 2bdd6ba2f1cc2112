"""``run_retrain``: the job that turns new labels into a new model version and a new queue order.

Reads the labels from the backend's Redis mirror, first reconciled with Label Studio for the tasks updated
since the last sync (so a lost webhook loses no label, at a cost bounded by what changed; see
:mod:`ml_backend.labels.reconcile`), and the tiles from the task maps preprocessing wrote; fits the classifier head on the labelled cells' frozen embeddings, predicts every open task,
lets the query strategy pick the most useful cells (among those not predicted "Not a nucleus": the model
learns that answer like a class, and active learning does not chase debris), ranks open tasks by how many
picked cells they hold,
pushes one prediction per top-K open task whose score is its rank, saves the model, switches the project
to the new version so that "Label All Tasks" serves that order, and prunes the versions it supersedes
(:mod:`ml_backend.retrain.publish`).
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from collections.abc import Callable, Iterator, Mapping
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import asdict, dataclass
from functools import partial
from typing import Any

import numpy as np

from adapters.label_studio import LabelStudioGateway
from label_config import LabelSet, TileTask, nuclei_only, parse_label_set, rank_to_score, version_name
from ml_backend.dashboard.publish import publish_dashboard
from ml_backend.labels.mirror import LabelView, read_labels
from ml_backend.labels.redis_store import RedisLabelStore
from ml_backend.model.gold import gold_labels, gold_scores, training_labels
from ml_backend.model.learners import Learner, make_learner
from ml_backend.model.store import ModelStore
from ml_backend.ordering.exploit import exploit_order, task_confidence
from ml_backend.ordering.ranking import rank_tiles
from ml_backend.ordering.relevance import RelevanceParams, rarest_class
from ml_backend.ordering.strategies import Strategy, get_strategy, needs_mc_passes, query
from ml_backend.retrain.cells import (
    LAYOUTS,
    Cells,
    add_drawn_cells,
    cell_features,
    first_rows,
    gather_cells,
    sample_open_tasks,
)
from ml_backend.retrain.publish import Before, publish_version, read_before
from ml_backend.settings import BackendSettings
from ml_backend.suggestions.context import CellFeatures, ContextSpec
from ml_backend.suggestions.drawn_cells import DrawnCellEmbedder
from ml_backend.suggestions.embeddings import tables_storage
from ml_backend.suggestions.predictions import not_nucleus_mask, tile_prediction
from preprocess.layout import DataLayout

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class RetrainReport:
    project_id: int
    version: int
    model_version: str
    n_labels: int
    n_open_tasks: int
    next_task_ids: list[int]
    metrics: dict[str, Any]
    seconds: float


class _Laps:
    """Seconds spent in each phase of one retrain, for the log and the status."""

    def __init__(self) -> None:
        self._last = time.perf_counter()
        self.seconds: dict[str, float] = {}

    def lap(self, phase: str) -> None:
        now = time.perf_counter()
        self.seconds[phase] = round(now - self._last, 3)
        self._last = now


def run_retrain(
    project_id: int, settings: BackendSettings, gateway: LabelStudioGateway, store: RedisLabelStore
) -> RetrainReport:
    """Retrain ``project_id`` and re-rank its queue. The labels it takes from pending go back on failure; a run
    killed mid-way (no ``except`` runs) leaves them for the next, which the worker's reconcile enqueues (catchup.py)."""
    with store.training_lease(project_id, settings.retrain_lease_s, wait_s=settings.job_timeout_s):
        store.start_retrain(project_id)
        try:
            report, publish = _retrain(project_id, settings, gateway, store)
        except Exception:
            store.end_retrain(project_id, failed=True)
            raise
        store.set_status(project_id, asdict(report))  # before the labels are let go: a kill between leaves no gap
        store.end_retrain(project_id)
    if publish is not None:  # outside the lease: the next retrain need not wait for the dashboard
        publish()
    log.info("project %s: %s trained on %d labels, %d open tasks ranked in %.2f s (%s)", project_id,
             report.model_version, report.n_labels, report.n_open_tasks, report.seconds,
             ", ".join(f"{k} {v:.2f}" for k, v in report.metrics.get("seconds_by_phase", {}).items()))
    return report


def _retrain(project_id: int, settings: BackendSettings, gateway: LabelStudioGateway,
             store: RedisLabelStore) -> tuple[RetrainReport, Callable[[], Any] | None]:
    """The new version, live; and the dashboard step to run once the training lease is released."""
    t0, laps = time.perf_counter(), _Laps()
    label_set = parse_label_set(gateway.project_settings(project_id).label_config)
    view = read_labels(project_id, gateway, store, label_set, tables_storage(settings),  # mirror, reconciled
                       settings.consensus)
    laps.lap("read")
    # Label Studio's side of the publication (the version served, the versions held) is read while this trains.
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="hali-before") as prefetch:
        before = prefetch.submit(read_before, project_id, gateway)
        return _train_and_publish(project_id, settings, gateway, view, label_set, laps, t0, before)


def _train_and_publish(project_id: int, settings: BackendSettings, gateway: LabelStudioGateway, view: LabelView,
                       label_set: LabelSet, laps: _Laps, t0: float,
                       before: Future[Before]) -> tuple[RetrainReport, Callable[[], Any] | None]:
    targets = list(label_set.targets)
    tiles, records, labels, open_ids = view.tiles, view.records, view.labels, view.open_ids
    models = ModelStore(DataLayout(settings.data_dir, settings.ls_files_root).models_dir(project_id))
    features = cell_features(settings)  # the worker's: tables and neighbour graphs kept between retrains
    labelled = {r.task_id for r in records.values()}
    cells, pool = _round_cells(project_id, view, labelled, targets, settings, features)
    strategy = get_strategy(settings.strategy)
    if needs_mc_passes(strategy):
        strategy = get_strategy(settings.strategy, _relevance_params(settings, list(label_set.classes), cells.y))
    laps.lap("cells")
    head = _fit_head(cells, len(targets), settings, needs_mc_passes(strategy))
    laps.lap("fit")
    if head is None:
        log.info("project %s: no cell labels yet, nothing to retrain", project_id)
        current = models.latest_version()
        return RetrainReport(project_id, current, version_name(current), 0, len(open_ids), [], {}, 0.0), None
    proba, shown = _cells_proba(cells, head, features)
    excluded = not_nucleus_mask(shown, targets) & (cells.y < 0)
    order = _rank_open_tasks(cells, head, proba, pool, settings, strategy, excluded, cells.slides)
    order = _exploit(order, cells, shown, open_ids, settings, n_served=len(labelled))
    laps.lap("rank")
    # Only the top of the queue gets this version's prediction (the rest get theirs from /predict when opened),
    # under a version name reserved first; superseded and failed versions are pruned (publish.py).
    top = view.first(order)[: settings.predictions_top_k]  # a task's further reader (overlap) sees boxes
    meta = _meta(label_set, labels, head, settings, n_drawn=int((cells.task_ids == -1).sum()), spec=features.spec)
    meta["metrics"].update(_gold_metrics({t: tiles[t] for t in labelled}, labels, targets, head, settings, features),
                           n_train=int((cells.y >= 0).sum()))
    version = publish_version(
        project_id, gateway, models, lambda name: _predictions(top, tiles, cells, shown, targets, name),
        lambda v: models.save(v, head, meta), laps.lap, keep_superseded_s=settings.prune_after_s,
        first_n=settings.predictions_first_n, before=before.result()).version
    report = RetrainReport(project_id, version, version_name(version), len(labels), len(open_ids), order[:5],
                           {**meta["metrics"], "seconds_by_phase": laps.seconds}, time.perf_counter() - t0)
    return report, partial(publish_dashboard, project_id, settings, gateway, tiles, records, labels, label_set,
                           models.root)


def _round_cells(project_id: int, view: LabelView, labelled: set[int], targets: list[str],
                 settings: BackendSettings, features: CellFeatures) -> tuple[Cells, list[int]]:
    """The cells this round trains on and ranks, and the open tasks it ranks (all, or a sample of about
    ``HALI_RANK_POOL_CELLS`` cells): the labelled cells, hand-drawn ones included, and the ranked tasks' cells."""
    pool = sample_open_tasks(view.open_ids, view.reread_ids, view.tiles, settings.rank_pool_cells,
                             seed=len(view.labels))
    # the gold set (HALI_GOLD_SHARE, fixed by cell id) is never trained on: each version is scored on it
    cells = gather_cells(LAYOUTS.get(project_id, view.tiles, features), view.tiles, pool, labelled,
                         training_labels(view.labels, settings.gold_share), targets, features)
    drawn = DrawnCellEmbedder(tables_storage(settings))
    return add_drawn_cells(cells, view.records, view.tiles, targets, drawn, features), pool


def _relevance_params(settings: BackendSettings, classes: list[str], y: np.ndarray) -> RelevanceParams:
    """The relevance strategies' parameters from ``settings``; the rare class defaults to the least labelled.

    ``classes`` are the real classes (the first target indices): "Not a nucleus" is never the rare class.
    """
    if settings.relevance_rare_class and settings.relevance_rare_class not in classes:
        raise ValueError(f"HALI_RELEVANCE_RARE_CLASS={settings.relevance_rare_class!r} is not a class of the "
                         f"project ({classes}); set one of them, or leave it empty for the least labelled class")
    rare = (classes.index(settings.relevance_rare_class) if settings.relevance_rare_class
            else rarest_class(y[(y >= 0) & (y < len(classes))], len(classes)))
    return RelevanceParams(
        alpha=settings.relevance_alpha, beta=settings.relevance_beta, gamma=settings.relevance_gamma,
        class_certainty_max=settings.relevance_class_certainty_max,
        detection_certainty_max=settings.relevance_detection_certainty_max,
        rare_min_proba=settings.relevance_rare_min_proba, rare_class=rare)


def _fit_head(cells: Cells, n_classes: int, settings: BackendSettings, mc: bool) -> Learner | None:
    """The ``HALI_LEARNER`` model fitted on the labelled cells (dropout when ``mc``); None without labels."""
    labelled = cells.y >= 0
    if not labelled.any():
        return None
    head = make_learner(settings.learner, n_classes, optimizer=settings.optimizer, random_state=settings.seed,
                        dropout=settings.mc_dropout if mc else 0.0)
    return head.fit(cells.features[labelled], cells.y[labelled])


def _gold_metrics(tiles: Mapping[int, TileTask], labels: dict[str, str], targets: list[str], head: Learner,
                  settings: BackendSettings, features: CellFeatures) -> dict[str, Any]:
    """``{"gold": {n, accuracy, balanced_accuracy}}`` of ``head``'s suggestions, as shown (context and
    smoothing included), on the held-out gold cells."""
    gold, code = gold_labels(labels, settings.gold_share), {t: i for i, t in enumerate(targets)}
    rows: dict[str, list[np.ndarray]] = {}  # slide -> rows of its gold cells: one probability pass per slide
    truth: dict[str, list[int]] = {}
    for tile in tiles.values():
        keep = np.array([gold.get(c.cell_id) in code for c in tile.cells], dtype=bool)
        if keep.any():
            rows.setdefault(tile.slide_id, []).append(features.rows(tile)[keep])
            truth.setdefault(tile.slide_id, []).extend(code[gold[c.cell_id]] for c, k in zip(tile.cells, keep) if k)
    said = [features.proba(head, slide, np.concatenate(r), suggest=True).argmax(axis=1) for slide, r in rows.items()]
    return {"gold": gold_scores(np.array([t for slide in rows for t in truth[slide]], np.int64),
                                np.concatenate(said).astype(np.int64) if said else np.zeros(0, np.int64))}


def _cells_proba(cells: Cells, head: Learner, index: CellFeatures) -> tuple[np.ndarray, np.ndarray]:
    """(N, K) probabilities of ``cells`` for the strategies, and as shown, from one pass of the head, smoothed
    over each slide's spatial neighbours by :meth:`CellFeatures.proba_both` (``/predict``'s :meth:`CellFeatures.proba`
    gives the same); hand-drawn cells from their own features."""
    proba = head.predict_proba(cells.features)
    shown = head.suggest_from_proba(proba)
    if index.spec is None or cells.rows is None:
        return proba, shown
    slides, drawn = cells.slides, cells.rows < 0
    for slide_id in np.unique(slides[~drawn]).tolist():
        mine = (slides == slide_id) & ~drawn
        proba[mine], shown[mine] = index.proba_both(head, slide_id, cells.rows[mine])
    return proba, shown


def _rank_open_tasks(
    cells: Cells, head: Learner, proba: np.ndarray, open_ids: list[int], settings: BackendSettings,
    strategy: Strategy, excluded: np.ndarray, slides: np.ndarray | None = None,
) -> list[int]:
    """Open task ids, most useful first. ``excluded`` (N,) bool: unlabelled cells predicted "Not a nucleus";
    the strategy never sees them, and a tile of nothing else is served last."""
    if not open_ids:
        return []
    pool = ~excluded
    features = cells.features[pool]
    if needs_mc_passes(strategy):  # (T, N, K): only the strategies that use them pay for T passes
        pool_proba = head.predict_proba_mc(features, settings.mc_passes, settings.seed)
    else:
        pool_proba = proba[pool]
    picks, weights = query(strategy, head.transform(features), pool_proba, cells.y[pool] >= 0,
                           settings.query_budget, settings.seed, groups=None if slides is None else slides[pool])
    picks = np.flatnonzero(pool)[picks]
    return [int(t) for t in rank_tiles(cells.task_ids, picks, open_ids, weights, excluded)]


def _exploit(order: list[int], cells: Cells, shown: np.ndarray, open_ids: list[int], settings: BackendSettings,
             n_served: int) -> list[int]:
    """``order`` with, on a ``HALI_EXPLOIT_SHARE`` of serves, the task of the most confident suggestions first."""
    if not settings.exploit_share or not order:
        return order
    mine = np.isin(cells.task_ids, open_ids)
    confidence = task_confidence(shown[mine], cells.task_ids[mine])
    return exploit_order(order, confidence, n_served, settings.exploit_share, settings.exploit_top)


def _predictions(
    order: list[int], tiles: Mapping[int, TileTask], cells: Cells, proba: np.ndarray, targets: list[str], name: str
) -> Iterator[dict[str, Any]]:
    """One prediction per open task in ``order``, made as they are taken (those after the switch, after it); an
    open task's cells are contiguous rows of ``cells``."""
    first = first_rows(cells)
    for task_id, score in zip(order, rank_to_score(len(order))):
        tile = tiles[task_id]
        rows = proba[first[task_id] : first[task_id] + len(tile.cells)]
        yield {"task": task_id, **tile_prediction(tile, rows, targets, name, score)}


def _meta(
    label_set: LabelSet, labels: dict[str, str], head: Learner, settings: BackendSettings, n_drawn: int,
    spec: ContextSpec | None = None,
) -> dict[str, Any]:
    """The model's sidecar; its ``metrics`` also go to the status. ``n_labels`` counts every label
    ("Not a nucleus" included: it is an answer the model learns), ``n_nuclei`` only the nuclei."""
    snapshot = hashlib.sha256(json.dumps(sorted(labels.items())).encode()).hexdigest()[:16]
    counts = {c: sum(1 for v in labels.values() if v == c) for c in label_set.targets}
    metrics = {
        "n_labels": len(labels),
        "n_nuclei": len(nuclei_only(labels)),
        "n_drawn_cells": n_drawn,
        "per_class": counts,
        "best_val_loss": head.best_val_loss_,
        "epochs": head.n_epochs_,
    }
    return {"classes": list(label_set.classes), "targets": list(label_set.targets), "label_snapshot": snapshot,
            "strategy": settings.strategy, "learner": settings.learner, "metrics": metrics,
            "context": spec.to_meta() if spec else None}
