"""The model card's "Failure cases" are errors by the product's label rule: malignant images
not labelled malignant and normal images not labelled normal, never the lowest scores of
correctly labelled images (before, a normal image at P(normal) 0.71 was a "false alarm")."""

from __future__ import annotations

import copy
import json
from pathlib import Path

from models.model_card import render
from models.registry import resolve_model


def _failure_cases(directory: Path, rows: list[dict[str, object]]) -> list[str]:
    (directory / "validation_predictions.json").write_text(json.dumps(rows))
    card = render(copy.deepcopy(resolve_model("default:1.8.0").metadata), directory)
    section = card.split("## Failure cases (held-out predictions)\n", 1)[1]
    return [line for line in section.split("\n## ", 1)[0].splitlines() if line]


def _row(image_id: str, truth: str, normal: float, benign: float,
         malignant: float) -> dict[str, object]:
    return {"id": image_id, "truth": truth, "p_normal": normal, "p_benign": benign,
            "p_malignant": malignant}


def test_only_misclassified_images_are_listed(tmp_path: Path) -> None:
    rows = [
        _row("mdb010", "normal", 0.71, 0.2, 0.09),     # labelled normal: no false alarm
        _row("mdb001", "normal", 0.5, 0.3, 0.2),       # P(normal) 0.5 is labelled normal
        _row("mdb012", "normal", 0.46, 0.34, 0.2),     # labelled benign: a false alarm
        _row("mdb005", "malignant", 0.2, 0.3, 0.5),    # labelled malignant: caught
        _row("mdb007", "malignant", 0.72, 0.22, 0.06),  # labelled normal: missed
        _row("mdb011", "malignant", 0.3, 0.4, 0.3),    # labelled benign: missed as malignant
        _row("mdb020", "benign", 0.9, 0.05, 0.05),     # neither kind the card lists
    ]
    assert _failure_cases(tmp_path, rows) == [
        "- missed malignant: mdb007 (P(malignant) 0.06, P(normal) 0.72)",
        "- missed malignant: mdb011 (P(malignant) 0.30, P(normal) 0.30)",
        "- false alarm on a normal image: mdb012 (P(normal) 0.46)",
    ]


def test_none_is_said_where_a_kind_has_no_error(tmp_path: Path) -> None:
    rows = [_row("a", "normal", 0.8, 0.1, 0.1), _row("b", "malignant", 0.1, 0.2, 0.7)]
    assert _failure_cases(tmp_path, rows) == [
        "- missed malignant: none (every malignant image was labelled malignant)",
        "- false alarm on a normal image: none (every normal image was labelled normal)",
    ]


def test_errors_past_the_listed_ones_are_counted(tmp_path: Path) -> None:
    rows = [_row(f"n{k}", "normal", 0.1 + k / 100, 0.5, 0.4 - k / 100) for k in range(7)]
    lines = _failure_cases(tmp_path, rows)
    assert lines[0] == "- missed malignant: none (every malignant image was labelled malignant)"
    assert [line.split(" (")[0] for line in lines[1:6]] == [
        f"- false alarm on a normal image: n{k}" for k in range(5)]
    assert lines[6:] == ["- false alarm on a normal image: 2 more (7 in all)"]
