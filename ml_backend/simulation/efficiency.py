"""The oracle annotator, replayed task by task: how much faster does a pathologist label with HALI?

The loop mirrors the product. The query strategy picks cells (:func:`ml_backend.ordering.strategies.get_strategy`),
picks roll up to tasks (:func:`ml_backend.ordering.ranking.rank_tiles`), the annotator opens the top task and labels
its cells, and on Submit the head retrains once at least ``retrain_every`` new labels exist. The oracle's
label is the table's class. Once the head has been trained on ``ready_after`` labels its suggestions are
shown: a correct one is accepted without a class click, a wrong one costs a click. :class:`TimeModel`
prices that; its constants are the assumptions every figure is reported with.

The learner is ``config.learner`` (:mod:`ml_backend.model.learners`). With ``neighbours`` (each cell's
spatial neighbours, :func:`ml_backend.model.context.spatial_neighbours`) and ``config.smooth_alpha`` < 1, the
probabilities the annotator sees and the strategy ranks are smoothed over them
(:func:`ml_backend.model.context.smooth_proba`). ``groups`` (each cell's source image) reaches the strategies
that spread picks over images (``spread``).

``relevance`` and ``hybrid`` train the head with ``mc_dropout`` and get ``mc_passes`` stochastic passes, their
rare class being the one with the fewest labels so far, as the retrain job does.

A *focused* task is a context tile of ``cells_per_task`` cells in which only the ``focus_cells`` most
informative unlabelled cells (the tile's picks first, then its cells in walking order) carry boxes.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import numpy as np

from ml_backend.model.context import smooth_proba
from ml_backend.model.learners import Learner, make_learner
from ml_backend.ordering.exploit import exploit_order, task_confidence
from ml_backend.ordering.ranking import rank_tiles
from ml_backend.ordering.relevance import RelevanceParams, rarest_class
from ml_backend.ordering.strategies import get_strategy, needs_mc_passes, query


@dataclass(frozen=True)
class TimeModel:
    """Annotation time in units of one unassisted class click (about one cell's worth of work)."""

    unassisted_per_cell: float = 1.0
    review_per_cell: float = 0.1
    per_wrong_suggestion: float = 1.0
    per_task: float = 3.0

    def task_cost(self, n_cells: int, n_wrong: int | None) -> float:
        """Cost of one task of ``n_cells``; ``n_wrong`` None means no suggestions were shown."""
        if n_wrong is None:
            return self.per_task + self.unassisted_per_cell * n_cells
        return self.per_task + self.review_per_cell * n_cells + self.per_wrong_suggestion * n_wrong

    def to_dict(self) -> dict[str, float]:
        return dict(self.__dict__)


@dataclass(frozen=True)
class ReplayConfig:
    """One annotator replay: strategy name, task shape, retraining rule and stopping point."""

    strategy: str = "coreset"
    focus_cells: int | None = None  # None: every cell of a task is labelled; k: a focused task
    max_labels: int = 200
    retrain_every: int = 5
    ready_after: int = 25
    query_budget: int = 100
    optimizer: str = "adam"
    max_epochs: int = 100
    random_state: int = 0
    learner: str = "mlp"
    smooth_alpha: float = 1.0  # 1: no smoothing over spatial neighbours
    exploit_share: float = 0.0  # share of tasks served for confident suggestions (ml_backend/ordering/exploit.py)
    exploit_top: int = 10
    # relevance / hybrid only, as the backend's HALI_MC_PASSES, HALI_MC_DROPOUT and HALI_RELEVANCE_*:
    mc_passes: int = 10
    mc_dropout: float = 0.25
    relevance: RelevanceParams = RelevanceParams()  # rare_class None: the class with fewest labels so far


@dataclass(frozen=True)
class TaskRecord:
    """One submitted task: its id, the cells labelled (in order), labels before it, suggestion outcome."""

    task: int
    cells: tuple[int, ...]
    labels_before: int
    n_wrong: int | None  # None: no suggestions were shown (model not ready)
    cost: float
    unassisted_cost: float


@dataclass(frozen=True)
class Replay:
    """A finished replay: ``order`` (L,) int64 cells in labelling order, and one record per task."""

    order: np.ndarray
    tasks: tuple[TaskRecord, ...]


def replay_annotator(
    features: np.ndarray,
    y: np.ndarray,
    task_of_cell: np.ndarray,
    n_classes: int,
    config: ReplayConfig = ReplayConfig(),
    time_model: TimeModel = TimeModel(),
    groups: np.ndarray | None = None,
    neighbours: np.ndarray | None = None,
) -> Replay:
    """Label the pool ``features`` (N, d) with oracle classes ``y`` (N,) until ``config.max_labels``.

    ``task_of_cell`` (N,) int gives each cell's task; cells are in walking order (index order is what
    the ``sequential`` strategy follows). Stops after the task that reaches ``max_labels``. ``groups`` (N,)
    the cells' source images; ``neighbours`` (N, k) int their spatial neighbours (for smoothing).
    """
    labeled = np.zeros(len(y), dtype=bool)
    order: list[int] = []
    records: list[TaskRecord] = []
    head, fitted_on = None, 0
    while len(order) < config.max_labels and not labeled.all():
        params = _relevance_params(y, labeled, n_classes, config)
        proba = None if head is None else _proba(head, features, neighbours, config.smooth_alpha)
        ready = head is not None and fitted_on >= config.ready_after
        shown = _proba(head, features, neighbours, config.smooth_alpha, suggest=True) if ready else None
        task, cells = _next_task(features, task_of_cell, labeled, params, head, proba, groups, config,
                                 shown, len(records))
        n_wrong = int((shown[cells].argmax(axis=1) != y[cells]).sum()) if ready else None
        records.append(TaskRecord(task, tuple(cells.tolist()), len(order), n_wrong,
                                  time_model.task_cost(len(cells), n_wrong), time_model.task_cost(len(cells), None)))
        labeled[cells] = True
        order.extend(cells.tolist())
        if len(order) - fitted_on >= config.retrain_every:
            head = _fit(features[order], y[order], n_classes, config)
            fitted_on = len(order)
    return Replay(np.asarray(order, dtype=np.int64), tuple(records))


def _fit(x: np.ndarray, y: np.ndarray, n_classes: int, config: ReplayConfig) -> Learner:
    mc = needs_mc_passes(get_strategy(config.strategy))
    head = make_learner(config.learner, n_classes, optimizer=config.optimizer, max_epochs=config.max_epochs,
                        dropout=config.mc_dropout if mc else 0.0, random_state=config.random_state)
    return head.fit(x, y)


def _proba(head: Learner, features: np.ndarray, neighbours: np.ndarray | None, alpha: float,
           suggest: bool = False) -> np.ndarray:
    """(N, K) probabilities of every cell (``suggest``: those the suggestions come from, as the product shows
    them), smoothed over ``neighbours`` when given and ``alpha`` < 1."""
    proba = head.suggest_proba(features) if suggest else head.predict_proba(features)
    return proba if neighbours is None else smooth_proba(proba, neighbours, alpha)


def _relevance_params(y: np.ndarray, labeled: np.ndarray, n_classes: int, config: ReplayConfig) -> RelevanceParams:
    """``config.relevance`` with the rare class set, when not given, to the one with fewest labels so far."""
    if config.relevance.rare_class is not None:
        return config.relevance
    return dataclasses.replace(config.relevance, rare_class=rarest_class(y[labeled], n_classes))


def _next_task(
    features: np.ndarray, task_of_cell: np.ndarray, labeled: np.ndarray, params: RelevanceParams,
    head: Learner | None, proba: np.ndarray | None, groups: np.ndarray | None, config: ReplayConfig,
    shown: np.ndarray | None = None, n_served: int = 0,
) -> tuple[int, np.ndarray]:
    """The task the ranking serves next and the cells the annotator labels in it, in order. With suggestions
    ``shown`` (N, K) and ``config.exploit_share``, serve ``n_served`` may go to the most confident task."""
    strategy = get_strategy(config.strategy, params)
    if head is not None and needs_mc_passes(strategy):
        proba = head.predict_proba_mc(features, config.mc_passes, config.random_state)
    space = features if head is None else head.transform(features)  # as the retrain job does
    # The control walks in index order: one pick is its next cell. More picks would let rank_tiles serve a
    # later, fuller task before a short one at the end of a source image.
    budget = 1 if config.strategy == "sequential" else config.query_budget
    picks, weights = query(strategy, space, proba, labeled, budget, config.random_state, groups)
    open_tasks = np.unique(task_of_cell[~labeled]).tolist()
    order = rank_tiles(task_of_cell, picks, open_tasks, weights)
    if shown is not None and config.exploit_share and config.strategy != "sequential":  # the control stays one
        unlabelled = ~labeled
        confidence = task_confidence(shown[unlabelled], task_of_cell[unlabelled])
        order = exploit_order(order, confidence, n_served, config.exploit_share, config.exploit_top)
    task = int(order[0])
    in_task = (task_of_cell == task) & ~labeled
    if config.focus_cells is None:
        return task, np.flatnonzero(in_task)
    picked_here = picks[in_task[picks]]
    rest = np.setdiff1d(np.flatnonzero(in_task), picked_here, assume_unique=True)
    return task, np.concatenate([picked_here, rest])[: config.focus_cells].astype(np.int64)


def summarize_replay(replay: Replay) -> dict[str, float | int | None]:
    """Acceptance share (correct suggestions / suggestions shown), costs and speed-ups of one replay.

    ``speedup`` compares the whole replay with labelling the same tasks unassisted; ``speedup_assisted``
    only the tasks in which suggestions were shown (the steady state once the model is ready).
    """
    shown = [t for t in replay.tasks if t.n_wrong is not None]
    n_shown = sum(len(t.cells) for t in shown)
    n_wrong = sum(t.n_wrong for t in shown)
    cost = sum(t.cost for t in replay.tasks)
    base = sum(t.unassisted_cost for t in replay.tasks)
    shown_cost = sum(t.cost for t in shown)
    return {
        "n_labels": len(replay.order),
        "n_tasks": len(replay.tasks),
        "n_suggestions": n_shown,
        "acceptance_share": (n_shown - n_wrong) / n_shown if n_shown else None,
        "cost": cost,
        "unassisted_cost": base,
        "speedup": base / cost if cost else None,
        "speedup_assisted": sum(t.unassisted_cost for t in shown) / shown_cost if shown_cost else None,
    }


def acceptance_by_labels(replay: Replay) -> list[tuple[int, float]]:
    """``(labels before the task, share of its suggestions accepted)`` for each task that showed any."""
    return [(t.labels_before, 1.0 - t.n_wrong / len(t.cells)) for t in replay.tasks if t.n_wrong is not None]
