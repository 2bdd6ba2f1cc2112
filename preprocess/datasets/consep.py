"""CoNSeP test images rebuilt from their 256 x 256 crops, with ground-truth nuclei in source-image pixels.

The 16 crops ``<split>_<img>_<k>`` of a 1000 x 1000 source image sit on a sliding-window grid whose last
window is flush with the edge: origins 0, 256, 512 and 744 on each axis. Names list the regular 3 x 3 grid
row by row first (k 0-8), then the bottom row (9-11, y = 744), then the right column (12-14, x = 744), then
the corner (15). That order was found by matching crop borders (each overlap is 24 px wide and agrees to a
mean absolute difference of about 2 grey levels, JPEG noise; non-neighbours differ by about 30);
:func:`stitch_image` checks it again on every image.

A nucleus cut by a crop border is partial in each crop, so nuclei are rebuilt from the instance maps: the
crops' instance masks are pasted into source coordinates; instances of two crops that share pixels (in an
overlap) or touch along a seam (the regular grid's crops abut) are one nucleus, and its centroid is the
centre of mass of the union. Coordinates: ``x`` column, ``y`` row.
"""

from __future__ import annotations

import csv
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

CROP_PX = 256
SOURCE_PX = 1000
MPP = 0.25  # CoNSeP: 40x
MAX_OVERLAP_MAD = 8.0  # grey levels; JPEG noise is about 2, a wrong neighbour about 30
MIN_SHARED_PX = 5  # pixels two crops' instance masks must share to be one nucleus


class StitchError(ValueError):
    """Crops that do not fit the expected grid (their overlaps disagree)."""


@dataclass(frozen=True)
class SourceNuclei:
    """Ground truth of one source image: ``xy`` (G, 2) float64 centroids (x, y) in source pixels, ``label``
    (G,) str raw class names, ``n_crop_rows`` nuclei rows of the CSV that went into them."""

    xy: np.ndarray
    label: np.ndarray
    n_crop_rows: int


def crop_origins(source_px: int = SOURCE_PX, crop_px: int = CROP_PX) -> list[tuple[int, int]]:
    """``(x0, y0)`` of crop ``k`` for k = 0.. in name order (see the module docstring)."""
    regular = list(range(0, source_px - crop_px + 1, crop_px))
    last = source_px - crop_px
    origins = [(x, y) for y in regular for x in regular]
    if last != regular[-1]:
        origins += [(x, last) for x in regular] + [(last, y) for y in regular] + [(last, last)]
    return origins


def stitch_image(crops: list[np.ndarray], origins: list[tuple[int, int]], source_px: int = SOURCE_PX
                 ) -> tuple[np.ndarray, float]:
    """The source image (source_px, source_px, 3) uint8 and the worst overlap's mean absolute difference.

    Raises :class:`StitchError` when an overlap differs by more than :data:`MAX_OVERLAP_MAD` grey levels
    (the crops are not in the assumed grid order).
    """
    acc = np.zeros((source_px, source_px, 3), np.float64)
    seen = np.zeros((source_px, source_px), np.int32)
    worst = 0.0
    for k, (crop, (x0, y0)) in enumerate(zip(crops, origins, strict=True)):
        h, w = crop.shape[:2]
        window = (slice(y0, y0 + h), slice(x0, x0 + w))
        both = seen[window] > 0
        if both.sum() >= 100:
            mad = float(np.abs(acc[window][both] / seen[window][both][:, None] - crop[both]).mean())
            worst = max(worst, mad)
            if mad > MAX_OVERLAP_MAD:
                raise StitchError(f"crop {k} at (x0={x0}, y0={y0}) differs from its neighbours by {mad:.1f} grey "
                                  f"levels in their overlap (limit {MAX_OVERLAP_MAD}); the crop grid is not "
                                  "the one assumed")
        acc[window] += crop
        seen[window] += 1
    if (seen == 0).any():
        raise StitchError(f"{int((seen == 0).sum())} source pixels are covered by no crop")
    return np.round(acc / seen[..., None]).astype(np.uint8), worst


def stitch_nuclei(inst_maps: list[np.ndarray], classes: list[list[str]], origins: list[tuple[int, int]],
                  source_px: int = SOURCE_PX) -> SourceNuclei:
    """Nuclei of the source image from each crop's instance map (H, W) uint16 (0 background, ids 1..n) and
    its classes (``classes[k][i - 1]`` is instance i's class in crop k)."""
    canvas = np.zeros((source_px, source_px), np.int64)
    parent: list[int] = [0]
    label: list[str] = [""]
    writer = np.full((source_px, source_px), -1, np.int64)  # the crop each canvas pixel came from
    for k, (inst, names, (x0, y0)) in enumerate(zip(inst_maps, classes, origins, strict=True)):
        offset = len(parent) - 1
        parent += list(range(offset + 1, offset + len(names) + 1))
        label += names
        glob = np.where(inst > 0, inst.astype(np.int64) + offset, 0)
        window = canvas[y0:y0 + inst.shape[0], x0:x0 + inst.shape[1]]
        shared = (window > 0) & (glob > 0)
        pairs, counts = np.unique(np.stack([window[shared], glob[shared]]), axis=1, return_counts=True)
        for (a, b), n in zip(pairs.T, counts):
            if n >= MIN_SHARED_PX:
                parent[_root(parent, int(b))] = _root(parent, int(a))
        writer[y0:y0 + inst.shape[0], x0:x0 + inst.shape[1]][window == 0] = k
        window[window == 0] = glob[window == 0]
    _join_across_seams(canvas, writer, parent)
    roots = np.array([_root(parent, i) for i in range(len(parent))])
    merged = roots[canvas]
    ids = np.unique(merged[merged > 0])
    ys, xs = np.nonzero(merged)
    keys = merged[ys, xs]
    n = np.bincount(keys, minlength=len(parent))
    cx = np.bincount(keys, xs, minlength=len(parent))[ids] / n[ids]
    cy = np.bincount(keys, ys, minlength=len(parent))[ids] / n[ids]
    return SourceNuclei(np.stack([cx, cy], axis=1), _root_labels(roots, label, canvas, ids), len(label) - 1)


def _join_across_seams(canvas: np.ndarray, writer: np.ndarray, parent: list[int]) -> None:
    """Union instances of two crops that touch along a seam (4-adjacent on at least :data:`MIN_SHARED_PX`
    pixel pairs): crops of the regular grid abut without overlapping, so a nucleus cut there shares no pixel."""
    for a, b, wa, wb in ((canvas[:, :-1], canvas[:, 1:], writer[:, :-1], writer[:, 1:]),
                         (canvas[:-1], canvas[1:], writer[:-1], writer[1:])):
        across = (a > 0) & (b > 0) & (wa != wb)
        pairs, counts = np.unique(np.stack([a[across], b[across]]), axis=1, return_counts=True)
        for (i, j), n in zip(pairs.T, counts):
            if n >= MIN_SHARED_PX:
                ri, rj = _root(parent, int(i)), _root(parent, int(j))
                if ri != rj:
                    parent[rj] = ri


def _root(parent: list[int], i: int) -> int:
    while parent[i] != i:
        parent[i] = parent[parent[i]]
        i = parent[i]
    return i


def _root_labels(roots: np.ndarray, label: list[str], canvas: np.ndarray, ids: np.ndarray) -> np.ndarray:
    """Each merged nucleus' class: that of its member with the most pixels on the canvas."""
    pixels = np.bincount(canvas.ravel(), minlength=len(label))
    best: dict[int, tuple[int, str]] = {}
    for member in range(1, len(label)):
        r = int(roots[member])
        if r not in best or pixels[member] > best[r][0]:
            best[r] = (int(pixels[member]), label[member])
    return np.array([best[int(i)][1] for i in ids], dtype=object)


def load_consep_split(data_dir: Path, split: str = "test", limit_images: int | None = None
                      ) -> dict[str, tuple[np.ndarray, SourceNuclei, float]]:
    """``{source name: (image, nuclei, worst overlap MAD)}`` for each source image of ``split``, by number."""
    data_dir = Path(data_dir)
    maps = np.load(data_dir / f"inst_maps_{split}.npz")
    inst_of = {str(n): i for i, n in enumerate(maps["names"])}
    rows: dict[str, list[str]] = defaultdict(list)
    with open(data_dir / "nuclei.csv", newline="") as fh:
        for r in csv.DictReader(fh):
            if r["split"] == split:
                rows[r["patch"]].append((int(r["inst_id"]), r["type_name"]))
    sources = sorted({n.rsplit("_", 1)[0] for n in inst_of}, key=lambda s: int(s.rsplit("_", 1)[1]))
    out = {}
    origins = crop_origins()
    for source in sources[:limit_images]:
        names = [f"{source}_{k:03d}" for k in range(len(origins))]
        crops = [np.asarray(Image.open(data_dir / "images" / f"{n}.jpg").convert("RGB")) for n in names]
        image, mad = stitch_image(crops, origins)
        classes = [[c for _, c in sorted(rows.get(n, []))] for n in names]
        nuclei = stitch_nuclei([maps["inst"][inst_of[n]] for n in names], classes, origins)
        out[source] = (image, nuclei, mad)
    return out


def write_sources(sources: dict[str, tuple[np.ndarray, SourceNuclei, float]], out_dir: Path) -> dict[str, Path]:
    """Each image as ``<source>.tif`` with its resolution tags at :data:`MPP` (so the slide reader finds it),
    returns ``{source: tif path}``. Existing files are kept (the slide id is a hash of the content)."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = {}
    for source, (image, nuclei, _) in sources.items():
        path = out_dir / f"{source}.tif"
        if not path.exists():
            tmp = path.with_suffix(".tmp.tif")
            px_per_cm = 1e4 / MPP
            Image.fromarray(image).save(tmp, resolution=px_per_cm, resolution_unit=3)
            tmp.replace(path)
        paths[source] = path
    return paths
