"""Tile images: what rendering at 0.5 um/px costs and saves, and local-folder vs S3 write throughput.

Builds a 40x (0.25 um/px) pyramidal TIFF from the CMU-1-Small-Region slide (20x; each pixel repeated 2x2
for level 0, the slide itself as level 1), plans tiles of 1024 x 1024 level-0 px, and times per tile
(median of ``--runs`` runs):

- ``native 40x``: the old behaviour, a 1024 px PNG read from level 0;
- ``0.5 um/px, level 0``: read 1024 px from level 0, downsample to 512 px;
- ``0.5 um/px, best level``: what ``render_tile`` does, read 512 px from the 2x level.

Then it writes the same tiles with ``write_tile_images`` to a local folder and to moto's S3 server on
loopback (a fresh prefix per run) and prints tiles per second. Run:
``.venv/bin/python bench/bench_tile_storage.py [--tiles 48] [--runs 3]``
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
import uuid
from pathlib import Path

import numpy as np
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from adapters.slide_reader import OpenSlideReader  # noqa: E402
from adapters.storage import LocalStorage, S3Storage  # noqa: E402
from label_config import CellBox, TileTask  # noqa: E402
from preprocess.tiles.images import encode_png, fit_tiles, render_tile, write_tile_images  # noqa: E402
from scripts import services  # noqa: E402
from scripts.demo_slide import write_pyramidal_tiff  # noqa: E402

CMU = Path(__file__).resolve().parents[2] / "shared" / "data" / "wsi" / "CMU-1-Small-Region.svs"
TILE_L0_PX = 1024


def _slide_40x(folder: Path) -> Path:
    with OpenSlideReader(CMU) as reader:
        width, height = reader.dimensions
        at20 = reader.read_region(0, 0, width, height)
    at40 = np.repeat(np.repeat(at20, 2, axis=0), 2, axis=1)
    path = folder / "cmu-40x.tiff"
    write_pyramidal_tiff([at40, at20], path, mpp=0.25)
    return path


def _planned(reader: OpenSlideReader, n: int) -> list[TileTask]:
    width, height = reader.dimensions
    origins = [(x, y) for y in range(0, height - TILE_L0_PX, TILE_L0_PX) for x in range(0, width - TILE_L0_PX,
                                                                                           TILE_L0_PX)][:n]
    cell = (CellBox("c", 10, 10, 20, 20),)
    return [TileTask(f"t{i}", "bench", "", x, y, TILE_L0_PX, TILE_L0_PX, 1.0, 0.25, cell)
            for i, (x, y) in enumerate(origins)]


def _time_per_tile(tiles: list[TileTask], render, runs: int) -> tuple[float, float]:
    """(median ms per tile, mean PNG KiB)."""
    per_run, sizes = [], []
    for _ in range(runs):
        t0 = time.perf_counter()
        sizes = [len(encode_png(render(t))) for t in tiles]
        per_run.append((time.perf_counter() - t0) / len(tiles) * 1000)
    return statistics.median(per_run), float(np.mean(sizes)) / 1024


def _from_level0(reader: OpenSlideReader):
    def render(tile: TileTask) -> np.ndarray:
        w0 = round(tile.width * tile.downsample)
        rgb = reader.read_region(tile.x0, tile.y0, w0, w0)
        return np.asarray(Image.fromarray(rgb).resize((tile.width, tile.height), Image.Resampling.LANCZOS))
    return render


def _write_rate(reader, tiles, make_storage, runs: int) -> float:
    rates = []
    for _ in range(runs):
        storage = make_storage()
        t0 = time.perf_counter()
        write_tile_images(reader, tiles, storage)
        rates.append(len(tiles) / (time.perf_counter() - t0))
    return statistics.median(rates)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--tiles", type=int, default=48)
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    if not CMU.exists():
        sys.exit(f"{CMU} is missing; this bench renders tiles of the CMU-1-Small-Region slide")
    with tempfile.TemporaryDirectory() as tmp, OpenSlideReader(_slide_40x(Path(tmp))) as reader:
        planned = _planned(reader, args.tiles)
        fitted = fit_tiles(planned, reader.mpp, 0.5, LocalStorage(tmp))
        print(f"{len(planned)} tiles of {TILE_L0_PX} x {TILE_L0_PX} level-0 px from a 40x pyramid "
              f"{reader.dimensions}, median of {args.runs} runs:")
        for name, tiles, render in (("native 40x (old)", planned, lambda t: render_tile(reader, t)),
                                    ("0.5 um/px, level 0", fitted, _from_level0(reader)),
                                    ("0.5 um/px, best level", fitted, lambda t: render_tile(reader, t))):
            ms, kib = _time_per_tile(tiles, render, args.runs)
            print(f"  {name:24s} {tiles[0].width:5d} px  {ms:7.1f} ms/tile  {kib:7.1f} KiB/PNG")
        local = _write_rate(reader, fitted, lambda: LocalStorage(Path(tmp) / uuid.uuid4().hex), args.runs)
        print(f"  write_tile_images, local folder: {local:.1f} tiles/s")
        print(f"  write_tile_images, moto S3 on loopback: {_s3_rate(reader, fitted, args.runs):.1f} tiles/s")


def _s3_rate(reader, tiles, runs: int) -> float:
    import boto3
    from moto.server import ThreadedMotoServer

    port = services.free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    try:
        client = boto3.client("s3", endpoint_url=f"http://127.0.0.1:{port}", region_name="us-east-1",
                              aws_access_key_id="bench", aws_secret_access_key="bench")
        client.create_bucket(Bucket="hali-bench")
        return _write_rate(reader, tiles, lambda: S3Storage("hali-bench", uuid.uuid4().hex, client), runs)
    finally:
        server.stop()


if __name__ == "__main__":
    main()
