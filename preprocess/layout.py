"""Where preprocessing writes its outputs (the backend reads the same paths).

::

    <data_dir>/slides/<slide_id>/cells.npz      CellTable: ids, boxes, tile ids, embeddings
    <data_dir>/slides/<slide_id>/tasks.json     task data of every tile (label_config schema)
    <data_dir>/projects/<project_id>/           model versions (written by the backend)
    <ls_files_root>/hali/<slide_id>/<tile>.png  tile images Label Studio serves as local files
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

TILES_DIRNAME = "hali"


@dataclass(frozen=True)
class DataLayout:
    data_dir: Path
    ls_files_root: Path

    def slide_dir(self, slide_id: str) -> Path:
        return self.data_dir / "slides" / slide_id

    def cells_path(self, slide_id: str) -> Path:
        return self.slide_dir(slide_id) / "cells.npz"

    def tasks_path(self, slide_id: str) -> Path:
        return self.slide_dir(slide_id) / "tasks.json"

    def models_dir(self, project_id: int) -> Path:
        return self.data_dir / "projects" / str(project_id)

    @property
    def tiles_root(self) -> Path:
        """The local-files storage path attached to every project."""
        return self.ls_files_root / TILES_DIRNAME

    def tile_path(self, slide_id: str, tile_id: str) -> Path:
        return self.tiles_root / slide_id / f"{tile_id}.png"

    def tile_url(self, slide_id: str, tile_id: str) -> str:
        """The task's ``data.image``: Label Studio's local-files URL, relative to its document root."""
        return f"/data/local-files/?d={TILES_DIRNAME}/{slide_id}/{tile_id}.png"
