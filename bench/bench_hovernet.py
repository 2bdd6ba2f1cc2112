"""HoVer-Net speed: megapixels/s of ``HoVerNetSegmenter`` on windows at 0.25 um/px, with random weights.

Random weights run exactly the computation real ones do (same network, same patches), so the speed is the
real one; the instances they find are meaningless, and post-processing time depends a little on how many
there are. Accuracy needs real weights (the original repository's or tiatoolbox's checkpoints), which
cannot be downloaded here: pass them with ``--weights`` to time a real checkpoint instead.

Each window of ``side`` px is cut into patches of the model's input (fast mode: 256 px in, 164 px out),
so a window costs ceil(side / 164)^2 patches. Prints, per window size, the median over ``--repeats`` of
the total time, the network's share, the post-processing's share, and megapixels (of the window) per second.

Run: .venv/bin/python bench/bench_hovernet.py [--sizes 256 512 1024] [--repeats 3] [--device cpu] [--threads 2]
"""

from __future__ import annotations

import argparse
import math
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from preprocess.nuclei.hovernet.model import HoVerNet  # noqa: E402
from preprocess.nuclei.hovernet.postprocess import instances_from_maps  # noqa: E402
from preprocess.nuclei.hovernet.segmenter import HoVerNetSegmenter  # noqa: E402

MPP = 0.25


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[256, 512, 1024], help="window sides in px")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--threads", type=int, default=2, help="torch CPU threads")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--weights", type=Path, help="a real checkpoint; default: random fast-mode, 6 types")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory() as tmp:
        weights = args.weights or _random_weights(Path(tmp) / "random_fast_pannuke.pth")
        segmenter = HoVerNetSegmenter(weights, device=args.device, batch_size=args.batch_size)
    print(f"HoVer-Net {segmenter.model_.mode} mode, {segmenter.patch_px} px in / {segmenter.output_px} px out, "
          f"device {segmenter.device_}, {torch.get_num_threads()} CPU threads, batch {args.batch_size}")
    _time_window(segmenter, 256)  # warm-up: first calls allocate and pick kernels
    for side in args.sizes:
        runs = [_time_window(segmenter, side) for _ in range(args.repeats)]
        total, network, post = (statistics.median(r[i] for r in runs) for i in range(3))
        patches = math.ceil(side / segmenter.output_px) ** 2
        print(f"{side:5d} px window ({patches:3d} patches): {total:7.2f} s (network {network:6.2f} s, "
              f"post-processing {post:5.2f} s), {side * side / 1e6 / total:.3f} MP/s, "
              f"{patches / network:.2f} patches/s  [median of {args.repeats}]")


def _random_weights(path: Path) -> Path:
    torch.manual_seed(0)
    torch.save(HoVerNet("fast", n_types=6).state_dict(), path)
    return path


def _time_window(segmenter: HoVerNetSegmenter, side: int) -> tuple[float, float, float]:
    """(total, network, post-processing) seconds for one synthetic side x side RGB window at 0.25 um/px."""
    rgb = _synthetic_he(side)
    t0 = time.perf_counter()
    np_prob, hv, _ = segmenter.predict_maps(rgb)
    if segmenter.device_.type == "cuda":
        torch.cuda.synchronize()
    t1 = time.perf_counter()
    instances_from_maps(np_prob, hv)
    t2 = time.perf_counter()
    return t2 - t0, t1 - t0, t2 - t1


def _synthetic_he(side: int, seed: int = 0) -> np.ndarray:
    """uint8 (side, side, 3): pink background with purple discs 6-8 um across, and noise."""
    rng = np.random.default_rng(seed)
    rgb = np.empty((side, side, 3), np.float32)
    rgb[:] = (230, 180, 210)
    rows, cols = np.indices((side, side))
    for _ in range(side * side // 2000):
        x, y, r = rng.uniform(0, side), rng.uniform(0, side), rng.uniform(12, 16)
        rgb[(cols - x) ** 2 + (rows - y) ** 2 <= r * r] = (80, 50, 150)
    return np.clip(rgb + rng.normal(0, 6, rgb.shape), 0, 255).astype(np.uint8)


if __name__ == "__main__":
    main()
