"""A simulation report as Markdown tables: efficiency and effectiveness per task shape and strategy."""

from __future__ import annotations


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
    lines = [head, "", "| " + " | ".join(columns) + " |", "|---" * len(columns) + "|"]
    for r in report["results"]:
        cells = [r["task_shape"], r["strategy"], _f(r["n_tasks"], 1), _pct(r["acceptance_share"]),
                 _x(r["speedup"]), _x(r["speedup_assisted"]), *_auc(r, "auc_small")]
        if wide:
            cells += _auc(r, "auc_all")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


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
