"""What a retrain reads: the labels from the Redis mirror and the task map from what preprocessing wrote.

:func:`read_labels` first brings the mirror up to date (:func:`~ml_backend.labels.reconcile.reconcile_incremental`,
bounded by what changed), then takes the tiles of the project's tasks from the task maps written at import
(``projects/<id>/tasks/<slide>.json``) and the slides' ``tasks.json``, not from Label Studio's task data.
A project imported before task maps existed gets them once from Label Studio (every task's data), written for
the next time; so does a project whose full reconcile finds tasks the maps do not know.
"""

from __future__ import annotations

import logging
from collections import Counter, OrderedDict
from collections.abc import Iterator, Mapping
from dataclasses import dataclass

from adapters.label_studio import LabelStudioGateway
from adapters.storage import Storage
from label_config import LabelSet, TileTask
from ml_backend.labels.reconcile import ReconcileReport, reconcile_incremental
from ml_backend.labels.records import AnnotationRecord, consensus_labels, count_conflicts
from ml_backend.labels.redis_store import RedisLabelStore
from ml_backend.labels.tile_store import PackedTile, TileStore, without
from preprocess.layout import read_slide_meta, read_task_maps, task_map_key, tasks_key, write_task_map

log = logging.getLogger(__name__)

MAX_CACHED_PROJECTS = 4
_TILES: OrderedDict[tuple[str, int], tuple[tuple[tuple[str, str | None], ...], TileStore]] = OrderedDict()


@dataclass(frozen=True)
class LabelView:
    """A project's labels as one retrain sees them.

    ``open_ids``: tasks that want another reader (fewer annotations, skips included, than the task's overlap),
    in task id order; ``reread_ids``: those some reader already did (overlap), whose next reader must be shown
    boxes, so they get the new version's prediction first (:meth:`first`).
    """

    tiles: Mapping[int, TileTask]  # a TileStore: a tile is built when read
    records: dict[int, AnnotationRecord]
    labels: dict[str, str]
    open_ids: list[int]
    reread_ids: list[int]
    conflicts: int
    reconcile: ReconcileReport

    def first(self, order: list[int]) -> list[int]:
        """``order`` (ranked open tasks) with the tasks awaiting a further reader moved to the front."""
        reread = set(self.reread_ids)
        return [t for t in self.reread_ids if t in set(order)] + [t for t in order if t not in reread]


def read_labels(project_id: int, gateway: LabelStudioGateway, store: RedisLabelStore, label_set: LabelSet,
                tables: Storage, consensus: str = "majority") -> LabelView:
    """Reconcile the mirror incrementally, then the labels (``consensus`` rule: "majority" or "dawid-skene"),
    tiles and open tasks of ``project_id``."""
    report = reconcile_incremental(project_id, gateway, store, label_set)
    tiles = project_tiles(project_id, gateway, tables)
    if report.task_ids is not None:  # a full reconcile listed every task: tasks deleted or unknown to the maps
        if not report.task_ids <= set(tiles):
            tiles = _tiles_from_label_studio(project_id, gateway, tables)
        store.set_deleted_tasks(project_id, set(tiles) - report.task_ids)
    deleted = store.deleted_tasks(project_id)
    if deleted & tiles.keys():
        tiles = without(tiles, deleted)
    records = {a: r for a, r in store.records(project_id).items() if r.task_id in tiles}
    readers = Counter(r.task_id for r in records.values())
    overlaps = store.overlaps(project_id)
    open_ids = sorted(t for t in tiles if readers[t] < overlaps.get(t, 1))
    reread = [t for t in open_ids if readers[t] > 0]
    return LabelView(tiles, records, consensus_labels(records, consensus), open_ids, reread, count_conflicts(records), report)


def project_tiles(project_id: int, gateway: LabelStudioGateway, tables: Storage) -> TileStore:
    """Task id -> tile of every task of the project, from the task maps and the slides' ``tasks.json``.

    The process keeps the tiles of its last :data:`MAX_CACHED_PROJECTS` projects and hands out the same dict
    until a task map or a ``tasks.json`` is rewritten (their versions: mtime or ETag), so a worker parses
    them once (1M cells: about 10 s and 1 GB of JSON objects) and not on every retrain. The cells are kept as
    arrays (:class:`TileStore`: 50 MB at 1M cells, where the tiles as objects took 450 MB).
    """
    stamp = _files_stamp(project_id, tables)
    key = (tables.location(task_map_key(project_id, "")), project_id)
    cached = _TILES.get(key)
    if stamp and cached is not None and cached[0] == stamp:
        _TILES.move_to_end(key)
        return cached[1]
    tiles = _read_project_tiles(project_id, gateway, tables)
    if stamp:
        _TILES[key] = (stamp, tiles)
        while len(_TILES) > MAX_CACHED_PROJECTS:
            _TILES.popitem(last=False)
    return tiles


def _files_stamp(project_id: int, tables: Storage) -> tuple[tuple[str, str | None], ...]:
    """The versions of the project's task maps and of their slides' ``tasks.json``; empty without task maps."""
    prefix = task_map_key(project_id, "").removesuffix(".json")
    maps = sorted(k for k in tables.keys(prefix) if k.endswith(".json"))
    slides = [k[len(prefix) : -len(".json")] for k in maps]
    return tuple((k, tables.version(k)) for k in [*maps, *(tasks_key(s) for s in slides)])


def _read_project_tiles(project_id: int, gateway: LabelStudioGateway, tables: Storage) -> TileStore:
    maps = read_task_maps(tables, project_id)
    if not maps:
        return _tiles_from_label_studio(project_id, gateway, tables)
    return TileStore.from_tiles(_mapped_tiles(tables, maps))


def _mapped_tiles(tables: Storage, maps: dict[str, dict[str, int]]) -> Iterator[tuple[int, PackedTile]]:
    """(task id, tile) of every mapped tile of each slide's ``tasks.json``, each tile packed as it is parsed."""
    for slide_id, task_ids in maps.items():
        by_tile = {p.head.tile_id: p for p in read_slide_meta(tables, slide_id, PackedTile.from_task_data)["tiles"]}
        for tile_id, task_id in task_ids.items():
            if tile_id in by_tile:
                yield task_id, by_tile[tile_id]


def _tiles_from_label_studio(project_id: int, gateway: LabelStudioGateway, tables: Storage) -> TileStore:
    """Tiles from every task's data in Label Studio (slow: once per project), written as task maps."""
    log.info("project %s: no task map for some tasks; reading every task's data from Label Studio once", project_id)
    by_slide: dict[str, dict[str, int]] = {}

    def listed() -> Iterator[tuple[int, TileTask]]:
        for task in gateway.list_tasks(project_id, "id,data"):
            tile = TileTask.from_task_data(task["data"])
            by_slide.setdefault(tile.slide_id, {})[tile.tile_id] = int(task["id"])
            yield int(task["id"]), tile

    tiles = TileStore.from_tiles(listed())
    for slide_id, task_ids in by_slide.items():
        write_task_map(tables, project_id, slide_id, task_ids)
    return tiles
