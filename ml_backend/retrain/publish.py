"""``publish_version``: a new model version's life in Label Studio, from its reserved name to the pruning of
the versions it supersedes.

For version v of project p, in order:

1. **reserve** v: :meth:`ModelStore.reserve_version` creates ``vNNNN.reserved`` exclusively, above every
   version on disk and every HALI version Label Studio holds predictions of, before any prediction is written.
   Two workers, or a run restarted after a kill, never share a name. Label Studio's side (:func:`read_before`)
   is read by the retrain while it trains, under its lease.
2. **push** v's prediction to the first ``first_n`` of the top-K open tasks (score = rank, lowest served first):
   the tasks annotators open next. Label Studio serves only tasks that hold a prediction of the project's
   version, so these alone carry the new order.
3. **save** the model files (``latest.json`` -> v: ``/setup`` and ``/predict`` answer v from now on).
4. **switch** the project to v (``project.model_version``): "Label All Tasks" serves v's ranking. v is live.
4b. **fill**: the rest of the top K get v's prediction. Importing a prediction costs Label Studio about 10 ms,
   so pushing all of K = 100 before the switch held the new version back by about 1 s; a task opened in that
   second is one of the first ``first_n``. A failure here is logged: those tasks get theirs from ``/predict``.
5. **prune** the other HALI versions from 1 up (one ``DELETE /api/projects/<p>/model-versions/`` each):
   any left by a failed or killed run (never live, so never shown), and those superseded more than
   ``keep_superseded_s`` (``HALI_PRUNE_AFTER_S``) ago. The grace matters: an annotator who opened a task under
   version n submits with ``parent_prediction`` = n's prediction, and Label Studio refuses that submit (400,
   "Invalid pk") once the prediction is gone: the label would be lost. ``hali-v0000``, the neutral boxes imported
   with the tasks (one per task), stays: deleting a row costs Label Studio about 10 ms, and those boxes are
   what a task opened from the Data Manager shows until a model predicts it.
6. **live**: the project's HALI ML backend is renamed v. Label Studio then treats v as the backend's live
   version: a task opened ("Label All Tasks", next) without a v prediction is sent to ``/predict`` and the
   answer is stored and shown, while tasks that hold v's prediction keep their rank (docs/predictions.md).
7. **tab**: the Data Manager's first tab is sorted by prediction score, so the labeling page opened by URL
   (a reload, a bookmark) serves the same next task as "Label All Tasks".

An exception in steps 2-4 deletes v's predictions (best effort) and propagates; a run killed there leaves
them to step 5 of the next run, which gives no grace to a saved version above the one the project served before
it (killed between its save and its switch, it was never live). A Label Studio failure in steps 5-7 is logged: v is live by then. So Label Studio holds about one prediction per task: ``hali-v0000``'s, plus
the live version's top K and the tasks ``/predict`` answered since it went live, plus the versions superseded
within the grace.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from itertools import islice
from typing import Any

from adapters.errors import LabelStudioError
from adapters.label_studio import LabelStudioGateway
from label_config import parse_version_name, version_name
from ml_backend.model.store import ModelStore

log = logging.getLogger(__name__)

RANKED_ORDERING = ["tasks:predictions_score"]  # ascending: the rank lives in the score, lowest served first
BACKEND_TITLE = "HALI"  # the title `hali preprocess --backend-url` connects the backend with


@dataclass(frozen=True)
class Publication:
    version: int
    model_version: str
    pruned: dict[str, int] = field(default_factory=dict)  # version name -> predictions deleted


@dataclass(frozen=True)
class Before:
    """What Label Studio holds before a run publishes: the version the project serves (None: no HALI version)
    and the highest HALI version it holds predictions of. The retrain reads it while it trains (under its
    lease nothing else publishes to the project), so that the two reads do not delay the new version."""

    served: int | None
    highest: int


def read_before(project_id: int, gateway: LabelStudioGateway) -> Before:
    """:class:`Before` for ``project_id``: two Label Studio reads."""
    served = parse_version_name(gateway.project_settings(project_id).model_version or "")
    known = [parse_version_name(n) for n in gateway.model_versions(project_id)]
    return Before(served, max((v for v in known if v is not None), default=0))


def publish_version(
    project_id: int, gateway: LabelStudioGateway, models: ModelStore,
    predictions_for: Callable[[str], Iterable[dict[str, Any]]], save: Callable[[int], Any],
    lap: Callable[[str], None] = lambda _phase: None, keep_superseded_s: float = 0.0, first_n: int | None = None,
    before: Before | None = None,
) -> Publication:
    """Steps 1-7 above. ``predictions_for(name)``: the top-K predictions carrying the version ``name``, in rank
    order; ``save(version)``: writes the model files; ``lap(phase)`` is called after push, switch, fill and prune
    (the phases up to the switch are what an annotator waits for); ``keep_superseded_s``: how long a superseded
    version's predictions stay (0: pruned at once); ``first_n``: how many are pushed before the switch (None: all);
    ``before``: :func:`read_before` read earlier in the run (None: read here)."""
    before = before or read_before(project_id, gateway)
    served = before.served
    version = models.reserve_version(above=before.highest)
    log.info("project %s: reserved model version %s", project_id, version_name(version))
    name = version_name(version)
    predictions = iter(predictions_for(name))  # made as taken: the rest of the top K after the switch
    first = list(predictions if first_n is None else islice(predictions, first_n))
    try:
        gateway.import_predictions(project_id, first)
        lap("push")
        save(version)
        gateway.serve_version(project_id, name)
        lap("switch")
    except Exception:  # clean up, then let it propagate: the job fails and the labels stay pending
        discard_version(project_id, gateway, name)
        raise
    _fill(project_id, gateway, name, list(predictions))
    lap("fill")
    pruned = _after_switch(project_id, gateway, name, _still_kept(models, version, keep_superseded_s, served))
    lap("prune")
    return Publication(version, name, pruned)


def _fill(project_id: int, gateway: LabelStudioGateway, name: str, rest: list[dict[str, Any]]) -> None:
    """Step 4b: the rest of the top K, once ``name`` is live; a failure is logged, never raised."""
    if not rest:
        return
    try:
        gateway.import_predictions(project_id, rest)
    except LabelStudioError as exc:
        log.warning("project %s: %s is live, but %d of its top-K predictions were not pushed (%s); those tasks get "
                    "theirs from /predict when opened", project_id, name, len(rest), exc)


def _still_kept(models: ModelStore, live: int, keep_superseded_s: float, served: int | None = None) -> set[str]:
    """Names of the versions below ``live`` that went live (a saved model, not above ``served``, the version the
    project served before this run) and were superseded less than ``keep_superseded_s`` ago: version n was
    superseded when the next saved version was written. A saved version above ``served`` never went live (its run
    was killed between its save and its switch): no annotator saw it, so it gets no grace."""
    if keep_superseded_s <= 0:
        return set()
    top = live if served is None else min(live, served)
    saved = {v: models.sidecar_path(v).stat().st_mtime for v in range(1, live + 1)
             if models.sidecar_path(v).exists() and (v <= top or v == live)}
    cutoff, kept, superseded_at = time.time() - keep_superseded_s, set(), None
    for v in sorted(saved, reverse=True):
        if superseded_at is not None and superseded_at > cutoff:
            kept.add(version_name(v))
        superseded_at = saved[v]
    return kept


def _after_switch(project_id: int, gateway: LabelStudioGateway, name: str, keep: set[str]) -> dict[str, int]:
    """Steps 5-7. ``name`` is live already: a failure here is logged, never raised (the ranking stands, and
    the next run prunes and renames again). ``keep``: superseded versions still within their grace."""
    try:
        pruned = prune_versions(project_id, gateway, live=name, keep=keep)
        go_live(project_id, gateway, name)
        gateway.order_first_tab(project_id, RANKED_ORDERING)
    except LabelStudioError as exc:
        log.warning("project %s: %s is live, but pruning or going live failed (%s); the next retrain retries",
                    project_id, name, exc)
        return {}
    return pruned


def prune_versions(project_id: int, gateway: LabelStudioGateway, live: str,
                   keep: set[str] | frozenset[str] = frozenset()) -> dict[str, int]:
    """Delete the predictions of every HALI version from 1 up but ``live`` (the project's model version) and
    ``keep``."""
    stale = [n for n in gateway.model_versions(project_id)
             if n != live and n not in keep and (parse_version_name(n) or 0) >= 1]
    if not stale:
        return {}
    with _backend_not_live(project_id, gateway):
        pruned = {n: gateway.delete_model_version(project_id, n) for n in stale}
    log.info("project %s: pruned %s", project_id, ", ".join(f"{n} ({k} predictions)" for n, k in pruned.items()))
    return pruned


def discard_version(project_id: int, gateway: LabelStudioGateway, name: str) -> None:
    """Delete the predictions of ``name``, a version whose run failed; logs (never raises) when it cannot."""
    try:
        if gateway.project_settings(project_id).model_version == name:
            return  # it went live before the failure: the next run supersedes it
        with _backend_not_live(project_id, gateway):
            n = gateway.delete_model_version(project_id, name)
        log.warning("project %s: deleted the %d predictions of %s, whose run failed", project_id, n, name)
    except Exception as exc:  # noqa: BLE001 - best effort inside a failure; the next run prunes them
        log.warning("project %s: could not delete the predictions of failed %s (%s); the next retrain will",
                    project_id, name, exc)


def go_live(project_id: int, gateway: LabelStudioGateway, name: str) -> None:
    """Rename the project's HALI ML backend(s) ``name``: Label Studio then asks ``/predict`` for a task opened
    without a prediction of ``name``. A backend someone renamed to anything else is left alone."""
    for backend in gateway.ml_backends(project_id):
        title = backend.title or ""
        if title != name and (title == BACKEND_TITLE or parse_version_name(title) is not None):
            gateway.retitle_backend(backend, name)


@contextmanager
def _backend_not_live(project_id: int, gateway: LabelStudioGateway) -> Iterator[None]:
    """While a backend's title equals the project's model version, Label Studio resets that model version to
    None on any delete by version: rename such backends to :data:`BACKEND_TITLE` for the block."""
    current = gateway.project_settings(project_id).model_version
    live = [b for b in gateway.ml_backends(project_id) if current and b.title == current] if current else []
    for backend in live:
        gateway.retitle_backend(backend, BACKEND_TITLE)
    try:
        yield
    finally:
        for backend in live:
            gateway.retitle_backend(backend, current)
