"""Coreset (greedy k-center) time and peak memory versus the number of cells.

    .venv/bin/python bench/bench_coreset.py [--quick] [--sizes 10000,100000,1000000] [--dims 32]
        [--labelled 100] [--picks 100] [--repeats 5]

For each N, a child process draws N x d float32 standard-normal features (the first ``--labelled`` rows
labelled), runs :func:`ml_backend.ordering.coreset.select_coreset` once on a small input to load everything, then:

- peak memory of one call, as the growth of the child's peak RSS (``VmHWM``, reset just before the call
  through ``/proc/self/clear_refs``) over its RSS before the call -- numpy and torch allocations both
  count -- and, separately, tracemalloc's peak (numpy only; torch's buffers are invisible to it);
- the median wall time of ``--repeats`` calls.

Target (issue): 100 picks from 1,000,000 x 32 in under 2 s on this machine, with memory O(N d) -- never
an N x N matrix. ``peak/input`` near 1 means the extra memory is about one copy of the features.
Torch runs one thread, as in the retrain worker (``HALI_TORCH_THREADS``, default 1).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tracemalloc
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench import benchutil  # noqa: E402

TARGET_N, TARGET_S = 1_000_000, 2.0
MiB = 2**20


def main() -> int:
    args = _parse_args()
    sizes = [10_000, 100_000] if args.quick and args.sizes is None else _ints(args.sizes or "10000,100000,1000000")
    repeats = args.repeats or (3 if args.quick else 5)
    import torch

    torch.set_num_threads(1)  # what the children use, so that the header says so
    print(benchutil.header("Coreset: time and peak memory vs N", " ".join(["bench/bench_coreset.py", *sys.argv[1:]])))
    print(f"{args.dims}-d float32 features, {args.labelled} labelled, {args.picks} picks, median of {repeats} runs, "
          "each N in a fresh child process\n")
    print("| cells | median s | min s | max s | median CPU s | peak RSS growth MiB | numpy peak MiB | input MiB "
          "| peak/input |")
    print("|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    results = {}
    for n in sizes:
        r = _run_child(n, args.dims, args.labelled, args.picks, repeats)
        results[n] = r
        input_mib = r["input_bytes"] / MiB
        print(f"| {n:,} | {r['median_s']:.3f} | {min(r['seconds']):.3f} | {max(r['seconds']):.3f} | {r['cpu_s']:.3f} | "
              f"{r['rss_growth_bytes'] / MiB:.1f} | {r['tracemalloc_peak_bytes'] / MiB:.1f} | {input_mib:.1f} | "
              f"{r['rss_growth_bytes'] / r['input_bytes']:.2f} |", flush=True)
    if TARGET_N in results and args.dims == 32 and args.picks == 100:
        seconds = results[TARGET_N]["median_s"]
        verdict = "met" if seconds < TARGET_S else "MISSED"
        print(f"\ntarget: {args.picks} picks from {TARGET_N:,} x 32 in < {TARGET_S:g} s: {verdict} ({seconds:.2f} s)")
    print(benchutil.footer())
    return 0


def _run_child(n: int, dims: int, labelled: int, picks: int, repeats: int) -> dict:
    argv = [sys.executable, __file__, "--child", str(n), "--dims", str(dims), "--labelled", str(labelled),
            "--picks", str(picks), "--repeats", str(repeats)]
    done = subprocess.run(argv, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise SystemExit(f"child for N={n} failed (exit {done.returncode}):\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def child(n: int, dims: int, labelled: int, picks: int, repeats: int) -> dict:
    """Measure in this (fresh) process; returns what the parent prints."""
    import torch

    from ml_backend.ordering.coreset import select_coreset

    torch.set_num_threads(1)
    # float32 straight from the generator: no float64 temporary to inflate the baseline.
    features = np.random.default_rng(n).standard_normal((n, dims), dtype=np.float32)
    mask = np.zeros(n, dtype=bool)
    mask[: min(labelled, n)] = True
    select_coreset(features[:1000], mask[:1000], 5)  # loads torch's kernels before anything is measured
    rss_growth = _peak_rss_growth(lambda: select_coreset(features, mask, picks))
    tracemalloc.start()
    select_coreset(features, mask, picks)
    numpy_peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    median, cpu, seconds, _ = benchutil.median_wall_cpu(lambda: select_coreset(features, mask, picks), repeats, 0)
    return {"n": n, "median_s": median, "cpu_s": cpu, "seconds": seconds, "rss_growth_bytes": rss_growth,
            "tracemalloc_peak_bytes": numpy_peak, "input_bytes": features.nbytes}


def _peak_rss_growth(run) -> int:
    """Bytes by which the process's peak RSS during ``run()`` exceeds its RSS before it."""
    Path("/proc/self/clear_refs").write_text("5")  # resets VmHWM (the peak) to the current RSS
    before = _status_kib("VmRSS")
    run()
    return (_status_kib("VmHWM") - before) * 1024


def _status_kib(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"/proc/self/status has no {field}; this bench needs Linux")


def _ints(text: str) -> list[int]:
    return [int(v.replace("_", "")) for v in text.split(",") if v]


def _parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="10k and 100k cells, 3 runs: a smoke run")
    parser.add_argument("--sizes", default=None, help="comma-separated cell counts (default 10000,100000,1000000)")
    parser.add_argument("--dims", type=int, default=32)
    parser.add_argument("--labelled", type=int, default=100, help="labelled cells: the initial centres")
    parser.add_argument("--picks", type=int, default=100)
    parser.add_argument("--repeats", type=int, default=None, help="timed runs per N (default 5, --quick 3)")
    parser.add_argument("--child", type=int, default=None, help=argparse.SUPPRESS)
    return parser.parse_args()


if __name__ == "__main__":
    _args = _parse_args()
    if _args.child is not None:
        print(json.dumps(child(_args.child, _args.dims, _args.labelled, _args.picks, _args.repeats or 5)))
        sys.exit(0)
    sys.exit(main())
