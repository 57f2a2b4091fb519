"""training_curves.png shows a run of one epoch (points, not invisible one-point lines) and
its panel titles whole, side by side, without overlapping."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from models import plots


def _drawn(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, epochs: int) -> Any:
    """The figure ``training_curves`` saved, of two trunks trained ``epochs`` epochs."""
    from matplotlib.figure import Figure

    saved: list[Figure] = []
    save = Figure.savefig

    def keep(self: Figure, *args: Any, **kwargs: Any) -> None:
        saved.append(self)
        save(self, *args, **kwargs)

    monkeypatch.setattr(Figure, "savefig", keep)
    history = {key: [0.5 + 0.01 * e for e in range(epochs)]
               for key in ("loss", "val_loss", "accuracy", "val_accuracy")}
    plots.training_curves([history, history], ["fold1", "fold2"], tmp_path / "c.png")
    assert (tmp_path / "c.png").stat().st_size > 0
    return saved[0]


def test_one_epoch_is_drawn_as_points_on_a_whole_epoch_axis(
        monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    fig = _drawn(monkeypatch, tmp_path, epochs=1)
    lines = [line for ax in fig.axes for line in ax.get_lines()]
    assert len(lines) == 8  # 2 trunks x (train, validation) x 2 panels
    assert all(line.get_marker() not in (None, "", "None") and line.get_markersize() > 0
               for line in lines)
    for ax in fig.axes:
        assert [t.get_text() for t in ax.get_xticklabels()
                if ax.get_xlim()[0] <= t.get_position()[0] <= ax.get_xlim()[1]] == ["1"]


def test_the_panel_titles_neither_overlap_nor_leave_the_figure(
        monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    fig = _drawn(monkeypatch, tmp_path, epochs=3)
    renderer = FigureCanvasAgg(fig).get_renderer()  # closed, so without its canvas
    page = fig.bbox
    left, right = (ax.title.get_window_extent(renderer) for ax in fig.axes)
    assert left.x1 < right.x0
    for box in (left, right):
        assert page.x0 <= box.x0 and box.x1 <= page.x1 and box.y1 <= page.y1
