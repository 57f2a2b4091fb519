"""Report charts as PNG bytes (matplotlib's Agg canvas: no display, no pyplot state).

Every chart is drawn on its own ``Figure``, so charts can be made from any thread or worker
without touching matplotlib's global figure manager.
"""

from __future__ import annotations

import io
from collections.abc import Mapping

from matplotlib.axes import Axes
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

CLASS_COLOURS = {"normal": "#4c9a6a", "benign": "#e0a030", "malignant": "#c0392b"}
_SIZE = (5.0, 3.0)
_DPI = 110


def _png(fig: Figure) -> bytes:
    FigureCanvasAgg(fig)
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=_DPI)
    return buffer.getvalue()


def _empty(ax: Axes, message: str) -> None:
    ax.text(0.5, 0.5, message, ha="center", va="center", color="grey")
    ax.set_axis_off()


def class_bar_chart(by_class: Mapping[str, int]) -> bytes:
    fig = Figure(figsize=_SIZE, layout="constrained")
    ax = fig.add_subplot()
    names = list(by_class)
    bars = ax.bar(names, [by_class[n] for n in names],
                  color=[CLASS_COLOURS.get(n, "#777777") for n in names])
    ax.bar_label(bars)
    ax.set_title("Predicted class (images)")
    ax.set_ylabel("images")
    return _png(fig)


def result_pie_chart(by_state: Mapping[str, int], by_class: Mapping[str, int]) -> bytes:
    """Each image once: its predicted class when done, else its state (failed, queued...)."""
    slices = {**{k: v for k, v in by_class.items() if v},
              **{k: v for k, v in by_state.items() if v and k != "done"}}
    fig = Figure(figsize=_SIZE, layout="constrained")
    ax = fig.add_subplot()
    if not slices:
        _empty(ax, "no images")
    else:
        colours = [CLASS_COLOURS.get(k, "#999999") for k in slices]
        ax.pie(list(slices.values()), labels=list(slices), colors=colours, autopct="%1.0f%%",
               startangle=90, counterclock=False)
        ax.set_aspect("equal")
    ax.set_title("Results")
    return _png(fig)


def suspicion_histogram(counts: Mapping[int, int]) -> bytes:
    fig = Figure(figsize=_SIZE, layout="constrained")
    ax = fig.add_subplot()
    scores = list(range(1, 11))
    ax.bar(scores, [counts.get(s, 0) for s in scores], color="#5577aa")
    ax.set_xticks(scores)
    ax.set_xlabel("suspicion (1 = lowest, 10 = highest)")
    ax.set_ylabel("images")
    ax.set_title("Suspicion scores")
    return _png(fig)


def per_day_chart(per_day: Mapping[str, int]) -> bytes:
    fig = Figure(figsize=_SIZE, layout="constrained")
    ax = fig.add_subplot()
    if not per_day:
        _empty(ax, "no predictions yet")
    else:
        days = list(per_day)
        # Positions, not the date strings: matplotlib would guess at strings that parse.
        ax.bar(range(len(days)), [per_day[d] for d in days], color="#5577aa")
        ax.set_xticks(range(len(days)), labels=days, rotation=45, ha="right")
        ax.set_ylabel("images")
    # Each image once, on its current result's day: a rescore is not a second image.
    ax.set_title("Images scored per day (latest result, UTC)")
    return _png(fig)


def batch_charts(by_state: Mapping[str, int], by_class: Mapping[str, int],
                 suspicion: Mapping[int, int], per_day: Mapping[str, int]) -> dict[str, bytes]:
    """The four batch charts by title, in display order."""
    return {
        "Class distribution": class_bar_chart(by_class),
        "Results": result_pie_chart(by_state, by_class),
        "Suspicion histogram": suspicion_histogram(suspicion),
        "Images scored per day (latest result)": per_day_chart(per_day),
    }
