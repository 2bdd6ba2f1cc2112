"""A labeled cell dataset read from a CSV table: one row per nucleus, its image, centroid and class.

Column names are options (:class:`CellColumns`); the defaults fit ``consep_patches/nuclei.csv``. Coordinates
are pixels of the row's image: ``x`` is the column and ``y`` the row. Cells of one *source* image are
never split between the labeling pool and the test set: CoNSeP's tiles ``train_<img>_<k>`` overlap and
share the source ``train_<img>``.
"""

from __future__ import annotations

import csv
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ml_backend.simulation import SimulationError

DEFAULT_SOURCE_PATTERN = r"^(.+)_\d{3}$"  # CoNSeP: train_10_003 -> train_10; other names are their own source


@dataclass(frozen=True)
class CellColumns:
    """Names of the table's columns; ``split`` None means the table has no split column."""

    image: str = "patch"
    x: str = "cx"
    y: str = "cy"
    label: str = "type_name"
    split: str | None = "split"


@dataclass(frozen=True)
class CellDataset:
    """N labeled cells. ``image``, ``source`` (N,) str; ``xy`` (N, 2) float64 image pixels as (x, y);
    ``y`` (N,) int64 indices into ``class_names``; ``split`` (N,) str or None."""

    image: np.ndarray
    source: np.ndarray
    xy: np.ndarray
    y: np.ndarray
    class_names: tuple[str, ...]
    split: np.ndarray | None = None

    def __len__(self) -> int:
        return len(self.y)

    def subset(self, idx: np.ndarray) -> CellDataset:
        """The cells at ``idx`` (int array), in that order."""
        split = None if self.split is None else self.split[idx]
        return CellDataset(self.image[idx], self.source[idx], self.xy[idx], self.y[idx], self.class_names, split)


def parse_class_map(spec: str | None) -> dict[str, str] | None:
    """``"inflammatory=TIL,*=other"`` -> ``{"inflammatory": "TIL", "*": "other"}``; None stays None.

    ``*`` maps every raw class not named. Without ``*`` a raw class not named is an error at load time.
    """
    if not spec:
        return None
    mapping: dict[str, str] = {}
    for item in spec.split(","):
        raw, sep, target = item.partition("=")
        if not sep or not raw.strip() or not target.strip():
            raise SimulationError(f"--classes-map item {item!r} is not RAW=CLASS; e.g. inflammatory=TIL,*=other")
        mapping[raw.strip()] = target.strip()
    return mapping


def load_cell_table(
    csv_path: Path,
    columns: CellColumns = CellColumns(),
    class_map: dict[str, str] | None = None,
    source_pattern: str = DEFAULT_SOURCE_PATTERN,
) -> CellDataset:
    """Read ``csv_path`` into a :class:`CellDataset`; classes are ordered as ``class_map`` names them
    (``*``'s class last), or sorted raw names without a map."""
    rows = _read_rows(csv_path, columns)
    raw = [r[columns.label] for r in rows]
    names, y = _map_classes(raw, class_map)
    image = np.array([r[columns.image] for r in rows], dtype=str)
    try:
        xy = np.array([[float(r[columns.x]), float(r[columns.y])] for r in rows], dtype=np.float64)
    except ValueError as exc:
        raise SimulationError(f"{csv_path}: a centroid in columns {columns.x}/{columns.y} is not a number ({exc})")
    split = np.array([r[columns.split] for r in rows], dtype=str) if columns.split else None
    return CellDataset(image, _sources(image, source_pattern), xy, y, names, split)


def _read_rows(csv_path: Path, columns: CellColumns) -> list[dict[str, str]]:
    if not Path(csv_path).is_file():
        raise SimulationError(f"cell table {csv_path} does not exist; pass --cells-csv")
    with open(csv_path, newline="") as fh:
        reader = csv.DictReader(fh)
        wanted = [c for c in (columns.image, columns.x, columns.y, columns.label, columns.split) if c]
        missing = [c for c in wanted if c not in (reader.fieldnames or [])]
        if missing:
            raise SimulationError(
                f"cell table {csv_path} has no column(s) {missing}; its columns are {reader.fieldnames}. "
                "Name them with --image-col/--x-col/--y-col/--class-col/--split-col (--split-col '' for none)"
            )
        rows = list(reader)
    if not rows:
        raise SimulationError(f"cell table {csv_path} has no rows")
    return rows


def _map_classes(raw: list[str], class_map: dict[str, str] | None) -> tuple[tuple[str, ...], np.ndarray]:
    if class_map is None:
        names = tuple(sorted(set(raw)))
        lookup = {n: n for n in names}
    else:
        targets = [t for k, t in class_map.items() if k != "*"] + ([class_map["*"]] if "*" in class_map else [])
        names = tuple(dict.fromkeys(targets))
        unknown = sorted({r for r in raw if r not in class_map}) if "*" not in class_map else []
        if unknown:
            raise SimulationError(f"classes {unknown} are not in --classes-map; add them or a '*=CLASS' item")
        lookup = {r: class_map.get(r, class_map.get("*")) for r in set(raw)}
    index = {n: i for i, n in enumerate(names)}
    return names, np.array([index[lookup[r]] for r in raw], dtype=np.int64)


def _sources(image: np.ndarray, pattern: str) -> np.ndarray:
    regex = re.compile(pattern)
    out = []
    for name in image.tolist():
        match = regex.match(name)
        out.append(match.group(1) if match else name)
    return np.array(out, dtype=str)


def split_pool_test(
    data: CellDataset, test_value: str = "test", test_fraction: float = 0.33, random_state: int = 0
) -> tuple[np.ndarray, np.ndarray]:
    """Indices ``(pool, test)``: the split column's ``test_value`` rows are the test set, or, without a
    split column, a seeded ``test_fraction`` of the source images. A source never falls on both sides."""
    if data.split is not None:
        is_test = data.split == test_value
    else:
        sources = np.unique(data.source)
        rng = np.random.default_rng(random_state)
        n_test = max(1, round(test_fraction * len(sources)))
        is_test = np.isin(data.source, rng.permutation(sources)[:n_test])
    pool, test = np.flatnonzero(~is_test), np.flatnonzero(is_test)
    shared = sorted(set(data.source[pool].tolist()) & set(data.source[test].tolist()))
    if shared:
        raise SimulationError(f"source images {shared[:5]} have cells in both the pool and the test split; "
                              "fix --source-pattern or the split column")
    if not len(pool) or not len(test):
        raise SimulationError(f"the split leaves {len(pool)} pool and {len(test)} test cells; both must be > 0 "
                              f"(split value {test_value!r})")
    return pool, test
