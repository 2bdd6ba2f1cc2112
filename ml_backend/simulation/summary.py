"""A simulation report as Markdown tables: efficiency and effectiveness per task shape and strategy.

Reports of one setting run at different times (say the control and coreset first, relevance later)
merge into one with :func:`merge_reports`: same seeds, same replays, so a strategy run twice gives the
same figures. ``python -m ml_backend.simulation.summary OUT A/simulation.json B/simulation.json ...``
writes the merged ``OUT/simulation.json`` and its plots, and prints the table.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np

from ml_backend.simulation.run import compare_with_control, write_report

# Settings that may differ between merged reports: which strategies and task shapes ran, and where.
_MERGE_FREE = {"strategies", "task_shapes", "out_dir", "cache_dir"}
_PATHS = {"cells_csv", "images_dir", "checkpoint"}


def merge_reports(reports: list[dict]) -> dict:
    """One report with the results of ``reports`` (same data and settings), each (task shape, strategy) once.

    The first report's result wins where two hold the same pair; task shapes and strategies keep the
    order of first appearance, and the gains over the control are recomputed. ValueError when the
    reports' data or settings (other than the strategies run) differ.
    """
    if not reports:
        raise ValueError("nothing to merge: give at least one simulation.json")
    base = reports[0]
    for other in reports[1:]:
        diff = sorted(k for k in base["settings"] if k not in _MERGE_FREE
                      and _setting(base["settings"], k) != _setting(other["settings"], k))
        if diff or other["pool"] != base["pool"] or other["featurizer"] != base["featurizer"]:
            raise ValueError(f"reports differ in {diff or ['data or featurizer']}; only runs of one setting merge")
    results: dict[tuple[str, str], dict] = {}
    for report in reports:
        for r in report["results"]:
            results.setdefault((r["task_shape"], r["strategy"]), r)
    shapes = list(dict.fromkeys(shape for shape, _ in results))
    strategies = list(dict.fromkeys(strategy for _, strategy in results))
    ordered = [results[(sh, st)] for sh in shapes for st in strategies if (sh, st) in results]
    compare_with_control(ordered)
    settings = dict(base["settings"], strategies=strategies, task_shapes=shapes)
    return dict(base, settings=settings, results=ordered)


def format_summary(report: dict) -> str:
    """Two Markdown tables for ``report`` (the dict :func:`~ml_backend.simulation.run.run_simulation` returns)."""
    s = report["settings"]
    tm = s["time_model"]
    head = (f"{report['featurizer']}; classes {', '.join(report['classes'])}; pool {report['pool']['cells']} cells "
            f"({report['pool']['sources']} sources), test {report['test']['cells']} cells "
            f"({report['test']['sources']} sources); {s['runs']} runs; max {s['max_labels']} labels; "
            f"time model: {tm['unassisted_per_cell']}/cell unassisted, {tm['review_per_cell']}/cell reviewed "
            f"+ {tm['per_wrong_suggestion']}/wrong suggestion, {tm['per_task']}/task; suggestions after "
            f"{s['ready_after']} labels")
    small = f"N<={s['auc_max_labels']}"
    columns = ["tasks", "strategy", "tasks opened", "accepted", "speed-up", "speed-up once ready",
               f"acc AUC {small}", "vs control", f"bal. acc AUC {small}", "vs control"]
    wide = s["max_labels"] > s["auc_max_labels"]
    if wide:
        columns += [f"acc AUC N<={s['max_labels']}", "vs control", f"bal. acc AUC N<={s['max_labels']}", "vs control"]
    learner = (f"learner {s.get('learner', 'mlp')}"
               + (f", context k={s['context_neighbours']} r={s['density_radius_um']} um" if s.get("context_neighbours")
                  else "") + (f", smoothing alpha={s['smooth_alpha']}" if s.get("smooth_alpha", 1.0) < 1.0 else ""))
    lines = [f"{head}; {learner}"]
    if report["results"]:
        lines += ["", "| " + " | ".join(columns) + " |", "|---" * len(columns) + "|"]
    for r in report["results"]:
        cells = [r["task_shape"], r["strategy"], _f(r["n_tasks"], 1), _pct(r["acceptance_share"]),
                 _x(r["speedup"]), _x(r["speedup_assisted"]), *_auc(r, "auc_small")]
        if wide:
            cells += _auc(r, "auc_all")
        lines.append("| " + " | ".join(cells) + " |")
    if report["results"]:
        lines += ["", *format_standard_errors(report), "", *format_acceptance(report)]
    if "paper_protocol" in report:
        lines += ["", format_paper(report["paper_protocol"])]
    return "\n".join(lines)


def format_standard_errors(report: dict) -> list[str]:
    """Balanced-accuracy AUC (N <= the small range) and speed-up, mean +- standard error over the runs."""
    s = report["settings"]
    lines = [f"| tasks | strategy | bal. acc AUC N<={s['auc_max_labels']} (+- se) | speed-up (+- se) |",
             "|---|---|---|---|"]
    for r in report["results"]:
        aucs = np.asarray(r["balanced_accuracy"]["auc_small"], dtype=float)
        se = aucs.std(ddof=1) / np.sqrt(len(aucs)) if len(aucs) > 1 else 0.0
        speed = "-" if r["speedup"] is None else f"{r['speedup']:.2f}x +- {r.get('speedup_se') or 0:.2f}"
        lines.append(f"| {r['task_shape']} | {r['strategy']} | {aucs.mean():.3f} +- {se:.3f} | {speed} |")
    return lines


def format_acceptance(report: dict) -> list[str]:
    """Share of suggestions accepted by labels already given (mean over runs), one row per result."""
    first = next((r for r in report["results"] if "acceptance_by_labels" in r), None)
    if first is None:
        return []
    bins = [b["labels"] for b in first["acceptance_by_labels"]]
    cols = [f"{lo}-{hi}" for lo, hi in bins]
    lines = ["| tasks | strategy | accepted with " + " | ".join(cols) + " labels given |",
             "|---" * (len(cols) + 2) + "|"]
    for r in report["results"]:
        shares = [_pct(b["mean"]) for b in r.get("acceptance_by_labels", [])]
        lines.append(f"| {r['task_shape']} | {r['strategy']} | " + " | ".join(shares) + " |")
    return lines


def format_paper(paper: dict) -> str:
    """One line: the paper protocol's speed-up and acceptance, mean +- standard error."""
    p = paper["protocol"]
    return (f"paper protocol ({p['patch_cells']}-cell balanced patch, suggestions after {p['ready_after']} labels, "
            f"{len(paper['runs'])} runs): speed-up {paper['speedup']['mean']:.2f}x +- {paper['speedup']['se']:.2f}, "
            f"accepted {100 * paper['acceptance_share']['mean']:.0f}% +- {100 * paper['acceptance_share']['se']:.0f}%")


def _auc(result: dict, key: str) -> list[str]:
    acc, bacc = result["accuracy"], result["balanced_accuracy"]
    return [f"{acc[key + '_mean']:.3f}", _gain(acc[key + "_gain_pct"]),
            f"{bacc[key + '_mean']:.3f}", _gain(bacc[key + "_gain_pct"])]


def _f(value, digits: int) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def _pct(value) -> str:
    return "-" if value is None else f"{100 * value:.0f}%"


def _x(value) -> str:
    return "-" if value is None else f"{value:.2f}x"


def _gain(value) -> str:
    return "-" if value is None else f"{value:+.1f}%"


def _setting(settings: dict, key: str):
    """A setting, paths resolved (``../shared/x`` from one checkout is ``/work/shared/x`` from another)."""
    value = settings.get(key)
    return str(Path(value).resolve()) if key in _PATHS and value is not None else value


def main(argv: list[str] | None = None) -> int:
    """``OUT REPORT.json...``: merge the reports into ``OUT/simulation.json`` (+ plots); print the table."""
    args = sys.argv[1:] if argv is None else argv
    if len(args) < 2:
        print("usage: python -m ml_backend.simulation.summary OUT_DIR A/simulation.json [B/simulation.json ...]",
              file=sys.stderr)
        return 2
    try:
        merged = merge_reports([json.loads(Path(p).read_text()) for p in args[1:]])
    except (OSError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    write_report(merged, Path(args[0]))
    print(format_summary(merged))
    return 0


if __name__ == "__main__":
    sys.exit(main())
