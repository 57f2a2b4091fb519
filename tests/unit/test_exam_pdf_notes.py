"""The exam PDF's Flags section lists how a view's file was read when not plainly (the
reader's notes): an inverted, re-oriented or modality-on-trust view must be visible where
the reader looks, not only in `mammo results --format json`."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

from shared.reports.exam_pdf import _flags


def _text(flowables: list[Any]) -> list[str]:
    return [f.getPlainText() for f in flowables]


def test_the_flags_section_lists_the_views_read_with_notes() -> None:
    note = ("L-CC (image 3) read with notes: (0008,0060) Modality is 'DX', not MG: "
            "classified as a mammogram on trust")
    report = SimpleNamespace(result=None, views=[], input_note_flags=[note])
    assert _text(_flags(report)) == [f"- {note}"]  # type: ignore[arg-type]
    plain = SimpleNamespace(result=None, views=[], input_note_flags=[])
    assert _text(_flags(plain)) == ["None."]  # type: ignore[arg-type]
