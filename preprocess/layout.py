"""Where preprocessing writes its outputs (the backend reads the same keys).

Outputs are stored by key through a :class:`~adapters.storage.Storage`; the keys are the same for local
folders and S3::

    slides/<slide_id>/cells.npz             CellTable: ids, boxes, tile ids, embeddings   (tables storage)
    slides/<slide_id>/tasks.json            task data of every tile (label_config schema)  (tables storage)
    hali/<slide_id>/<tile_id>-<tag>.png     tile images Label Studio shows                 (tiles storage)
    projects/<project_id>/tasks/<slide_id>.json  tile id -> Label Studio task id, written at import (tables storage)

Locally the tables storage is ``<data_dir>`` and the tiles storage ``<ls_files_root>`` (Label Studio's
local-files root); with ``HALI_STORAGE_URL=s3://bucket/prefix`` both are ``s3://bucket/prefix``. ``<tag>`` is
a hash of the tile's geometry (origin, pixel size, downsample), so a tile rendered under other settings
gets a new key and a re-run can skip every key that exists. Model versions stay local, in
``<data_dir>/projects/<project_id>/`` (written by the backend).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from adapters.errors import StorageError
from adapters.storage import LOCAL_FILES_URL, LocalStorage, Storage
from label_config import TileTask
from preprocess.tiles.cells import CellTable

TILES_DIRNAME = "hali"


def cells_key(slide_id: str) -> str:
    return f"slides/{slide_id}/cells.npz"


def tasks_key(slide_id: str) -> str:
    return f"slides/{slide_id}/tasks.json"


def tile_key(tile: TileTask) -> str:
    """Key of ``tile``'s PNG: its id plus a tag of the geometry the PNG was rendered with."""
    geometry = f"{tile.x0},{tile.y0},{tile.width},{tile.height},{tile.downsample:.6f}"
    tag = hashlib.blake2b(geometry.encode(), digest_size=4).hexdigest()
    return f"{TILES_DIRNAME}/{tile.slide_id}/{tile.tile_id}-{tag}.png"


def write_cell_table(storage: Storage, slide_id: str, table: CellTable) -> None:
    storage.put_bytes(cells_key(slide_id), table.to_bytes())


def read_cell_table(storage: Storage, slide_id: str) -> CellTable:
    """The slide's cell table; StorageError when it is missing or not a cell table."""
    key = cells_key(slide_id)
    try:
        if isinstance(storage, LocalStorage) and storage.path(key).is_file():  # read from the file: at 1M cells a
            return CellTable.load(storage.path(key))  # copy of the whole file in memory would be 400 MB more
        return CellTable.from_bytes(storage.get_bytes(key), storage.location(key))
    except ValueError as exc:  # also numpy's "not a zip file" for a truncated or foreign file
        raise StorageError(f"{storage.location(key)} is not a readable cell table ({exc}); re-run `hali preprocess`") \
            from exc


def write_slide_meta(storage: Storage, slide_id: str, meta: dict[str, Any]) -> None:
    storage.put_bytes(tasks_key(slide_id), json.dumps(meta).encode(), "application/json")


def read_slide_meta(storage: Storage, slide_id: str,
                    tile_hook: Callable[[dict[str, Any]], Any] | None = None) -> dict[str, Any]:
    """The slide's ``tasks.json``: slide path, mpp, recipe, featurizer and every tile's task data.

    ``tile_hook``, when given, takes each tile's task data as soon as it is parsed, and what it answers takes
    the tile's place in ``meta["tiles"]``: at 1M cells the tiles as JSON objects take about 1 GB, so a reader
    that wants a compact form of them (or none: :func:`skip_tile`) holds one tile's objects at a time.
    """
    key = tasks_key(slide_id)
    hook = None if tile_hook is None else (lambda obj: tile_hook(obj) if "tile_id" in obj and "cells" in obj else obj)
    try:
        return json.loads(storage.get_bytes(key), object_hook=hook)
    except ValueError as exc:
        raise StorageError(f"{storage.location(key)} is not valid JSON ({exc}); re-run `hali preprocess`") from exc


def skip_tile(data: dict[str, Any]) -> None:
    """A :func:`read_slide_meta` ``tile_hook`` for a reader of the slide's own fields only."""
    return None


def task_map_key(project_id: int, slide_id: str) -> str:
    return f"projects/{project_id}/tasks/{slide_id}.json"


def write_task_map(storage: Storage, project_id: int, slide_id: str, task_ids: dict[str, int]) -> None:
    """Record which Label Studio task shows each tile of ``slide_id`` in ``project_id`` (tile id -> task id)."""
    body = {"project_id": project_id, "slide_id": slide_id, "tasks": {str(k): int(v) for k, v in task_ids.items()}}
    storage.put_bytes(task_map_key(project_id, slide_id), json.dumps(body).encode(), "application/json")


def read_task_maps(storage: Storage, project_id: int) -> dict[str, dict[str, int]]:
    """Slide id -> (tile id -> task id) of every slide imported into ``project_id``; empty when none was recorded."""
    maps = {}
    for key in sorted(storage.keys(f"projects/{project_id}/tasks/")):
        if key.endswith(".json"):
            try:
                body = json.loads(storage.get_bytes(key))
            except ValueError as exc:
                raise StorageError(f"{storage.location(key)} is not valid JSON ({exc}); delete it, and the next "
                                   "full reconcile rebuilds it from Label Studio") from exc
            maps[str(body["slide_id"])] = {str(k): int(v) for k, v in body["tasks"].items()}
    return maps


@dataclass(frozen=True)
class DataLayout:
    """Local paths of the default (no ``HALI_STORAGE_URL``) layout, and of the backend's model versions."""

    data_dir: Path
    ls_files_root: Path

    def slide_dir(self, slide_id: str) -> Path:
        return self.data_dir / "slides" / slide_id

    def cells_path(self, slide_id: str) -> Path:
        return self.data_dir / cells_key(slide_id)

    def tasks_path(self, slide_id: str) -> Path:
        return self.data_dir / tasks_key(slide_id)

    def models_dir(self, project_id: int) -> Path:
        return self.data_dir / "projects" / str(project_id)

    @property
    def tiles_root(self) -> Path:
        """The local-files storage path attached to every project."""
        return self.ls_files_root / TILES_DIRNAME

    def tile_url(self, slide_id: str, tile_id: str) -> str:
        """A provisional ``data.image`` for a tile before it is rendered; :func:`preprocess.tiles.images.
        fit_tiles` replaces it with the URI of the PNG actually written."""
        return f"{LOCAL_FILES_URL}{TILES_DIRNAME}/{slide_id}/{tile_id}.png"
