"""PNG figures of a simulation report: learning curves with their spread, and acceptance versus labels."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402  (the backend must be chosen first)
import numpy as np  # noqa: E402


def write_plots(report: dict, out_dir: Path) -> list[Path]:
    """Write ``learning_curves.png`` and ``acceptance.png`` into ``out_dir``; returns their paths."""
    return [_learning_curves(report, out_dir / "learning_curves.png"),
            _acceptance(report, out_dir / "acceptance.png")]


def _by_shape(report: dict) -> dict[str, list[dict]]:
    shapes: dict[str, list[dict]] = {}
    for r in report["results"]:
        shapes.setdefault(r["task_shape"], []).append(r)
    return shapes


def _learning_curves(report: dict, path: Path) -> Path:
    shapes = _by_shape(report)
    fig, axes = plt.subplots(2, len(shapes), figsize=(3.2 * len(shapes), 5.6), squeeze=False, sharey="row")
    for col, (shape, results) in enumerate(shapes.items()):
        for row, metric in enumerate(("accuracy", "balanced_accuracy")):
            ax = axes[row][col]
            for r in results:
                mean, std = np.array(r[metric]["mean"]), np.array(r[metric]["std"])
                ax.plot(r["labels"], mean, label=r["strategy"], lw=1.2)
                ax.fill_between(r["labels"], mean - std, mean + std, alpha=0.15)
            ax.set_xscale("log")
            ax.set_title(f"{_shape_title(shape)}", fontsize=9)
            ax.set_xlabel("labels (N)", fontsize=8)
            if col == 0:
                ax.set_ylabel(f"test {metric.replace('_', ' ')}", fontsize=8)
    axes[0][-1].legend(fontsize=7)
    fig.suptitle(_title(report), fontsize=9)
    return _save(fig, path)


def _acceptance(report: dict, path: Path) -> Path:
    shapes = _by_shape(report)
    fig, axes = plt.subplots(1, len(shapes), figsize=(3.2 * len(shapes), 2.9), squeeze=False, sharey=True)
    for col, (shape, results) in enumerate(shapes.items()):
        ax = axes[0][col]
        for r in results:
            points = np.array([p for run in r["runs"] for p in run["acceptance"]], dtype=float).reshape(-1, 2)
            if len(points):
                edges, means = _binned(points, r["labels"])
                ax.plot(edges, means, marker=".", label=r["strategy"], lw=1.2)
        ax.set_title(_shape_title(shape), fontsize=9)
        ax.set_xlabel("labels before the task", fontsize=8)
        ax.set_ylim(0, 1)
    axes[0][0].set_ylabel("suggestions accepted", fontsize=8)
    axes[0][-1].legend(fontsize=7)
    fig.suptitle(_title(report), fontsize=9)
    return _save(fig, path)


def _binned(points: np.ndarray, grid: list[int]) -> tuple[list[int], list[float]]:
    """Mean acceptance of tasks whose ``labels before`` falls in each interval of ``grid``."""
    edges = [0, *grid]
    xs, ys = [], []
    for lo, hi in zip(edges[:-1], edges[1:]):
        inside = (points[:, 0] >= lo) & (points[:, 0] < hi)
        if inside.any():
            xs.append(hi)
            ys.append(float(points[inside, 1].mean()))
    return xs, ys


def _shape_title(shape: str) -> str:
    return "focused tasks" if shape == "focused" else f"{shape}-cell tasks"


def _title(report: dict) -> str:
    name = Path(report["settings"]["cells_csv"]).parent.name
    return f"{name}: {' / '.join(report['classes'])} ({report['featurizer']}, {len(report['results'][0]['runs'])} runs)"


def _save(fig, path: Path) -> Path:
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)
    return path
