"""The dashboard's plots as PNG bytes, drawn from a metrics snapshot with matplotlib's object API (no pyplot
state, so Flask threads may draw at once). The server imports this module only inside its PNG routes."""

from __future__ import annotations

import io
from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from typing import Any

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.dates import AutoDateLocator, ConciseDateFormatter
from matplotlib.figure import Figure

_SIZE_IN = (6.4, 3.2)
_DPI = 90
_MAX_BARS = 40


def _png(fig: Figure) -> bytes:
    FigureCanvasAgg(fig)
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=_DPI, bbox_inches="tight")
    return buffer.getvalue()


def _empty(ax, text: str) -> None:
    ax.text(0.5, 0.5, text, ha="center", va="center", transform=ax.transAxes, color="#666")
    ax.set_axis_off()


def progress_png(snapshot: Mapping[str, Any]) -> bytes:
    """Labelled cells per slide, stacked by class, with the share of the slide's tasks done."""
    slides = snapshot["progress"]["slides"]
    fig = Figure(figsize=(_SIZE_IN[0], max(_SIZE_IN[1], 0.35 * len(slides) + 1.2)))
    ax = fig.add_subplot()
    if not slides:
        _empty(ax, "no tasks yet")
        return _png(fig)
    names = list(slides)
    left = [0] * len(names)
    for target in snapshot["targets"]:
        counts = [slides[s]["per_class"].get(target, 0) for s in names]
        ax.barh(names, counts, left=left, color=snapshot["colours"].get(target, "#888"), label=target,
                edgecolor="white", linewidth=0.5)
        left = [a + b for a, b in zip(left, counts)]
    for i, s in enumerate(names):
        row = slides[s]
        ax.text(left[i], i, f"  {row['tasks_done']}/{row['tasks']} tasks", va="center", fontsize=7)
    ax.set_xlabel("labelled cells")
    ax.invert_yaxis()
    ax.legend(fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.18), ncol=len(snapshot["targets"]))
    ax.margins(x=0.25)
    return _png(fig)


def annotators_png(snapshot: Mapping[str, Any]) -> bytes:
    """Cumulative cell labels over time, one line per annotator (its labels per hour in the legend)."""
    fig = Figure(figsize=_SIZE_IN)
    ax = fig.add_subplot()
    series = snapshot.get("labels_over_time") or {}
    if not series:
        _empty(ax, "no annotations yet")
        return _png(fig)
    for who, points in series.items():
        rate = (snapshot["annotators"].get(who) or {}).get("labels_per_hour")
        when = [datetime.fromtimestamp(t, UTC) for t, _ in points]
        ax.step(when, [n for _, n in points], where="post",
                label=f"{who} ({rate:.0f}/h)" if rate is not None else who)
    locator = AutoDateLocator()
    ax.xaxis.set_major_locator(locator)
    ax.xaxis.set_major_formatter(ConciseDateFormatter(locator))
    ax.set_ylabel("cell labels")
    ax.legend(fontsize=7)
    return _png(fig)


def acceptance_png(snapshot: Mapping[str, Any]) -> bytes:
    """Share of suggestions kept per model version, with the suggestions judged."""
    fig = Figure(figsize=_SIZE_IN)
    ax = fig.add_subplot()
    rows = snapshot.get("acceptance") or {}
    if not rows:
        _empty(ax, "no suggestion judged yet")
        return _png(fig)
    numbers = [int(v.rsplit("v", 1)[-1]) if v.rsplit("v", 1)[-1].isdigit() else i for i, v in enumerate(rows)]
    shares = [r["kept_share"] for r in rows.values()]
    judged = [r["kept"] + r["changed"] for r in rows.values()]
    if len(rows) <= _MAX_BARS:
        ax.bar(numbers, shares, color="#2ca02c")
        for x, share, n in zip(numbers, shares, judged):
            ax.text(x, share, str(n), ha="center", va="bottom", fontsize=7)
        ax.set_xlabel("model version (numbers: suggestions judged)")
    else:  # hundreds of bars and labels take seconds to draw and cannot be read
        ax.plot(numbers, shares, ".", color="#2ca02c", ms=4)
        ax.set_xlabel(f"model version ({sum(judged):,} suggestions judged)")
    ax.set_ylim(0, 1.1)
    ax.set_ylabel("share kept")
    return _png(fig)


def learning_png(snapshot: Mapping[str, Any]) -> bytes:
    """Accuracy and balanced accuracy on the gold set, per version, against the labels it trained on."""
    fig = Figure(figsize=_SIZE_IN)
    ax = fig.add_subplot()
    points = [p for p in snapshot.get("learning_curve") or [] if p.get("accuracy") is not None]
    if not points:
        share = snapshot.get("gold_share") or 0
        _empty(ax, "no gold cells yet" if share else "gold set off (HALI_GOLD_SHARE=0)")
        return _png(fig)
    x = [p["n_train"] for p in points]
    ax.plot(x, [p["accuracy"] for p in points], "o-", ms=3, label="accuracy")
    ax.plot(x, [p["balanced_accuracy"] for p in points], "s-", ms=3, label="balanced accuracy")
    ax.set_ylim(0, 1.05)
    ax.set_xlabel(f"labels trained on (gold set: {points[-1]['gold_n']} cells)")
    ax.legend(fontsize=7, loc="lower right")
    ax.grid(alpha=0.3)
    return _png(fig)


PLOTS: dict[str, Callable[[Mapping[str, Any]], bytes]] = {
    "progress": progress_png,
    "annotators": annotators_png,
    "acceptance": acceptance_png,
    "learning": learning_png,
}
