"""The model card describes the data a model was trained on, not mini-MIAS whatever it was."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

from models.model_card import render
from models.registry import resolve_model

SHIPPED = resolve_model("default:1.8.0")


def _meta(**training_data: Any) -> dict[str, Any]:
    meta = copy.deepcopy(SHIPPED.metadata)
    meta["training_data"].update(training_data)
    return meta


def _sections(card: str, *titles: str) -> list[str]:
    parts = {part.split("\n", 1)[0]: part for part in card.split("\n## ")}
    return [parts[title] for title in titles]


def test_the_shipped_card_describes_its_data_as_before() -> None:
    # Metadata written before the layout was recorded: MIAS (it scored circles).
    assert "layout" not in SHIPPED.metadata["training_data"]
    card = render(SHIPPED.metadata, SHIPPED.directory)
    shipped = (SHIPPED.directory / "MODEL_CARD.md").read_text(encoding="utf-8")
    titles = ("Model", "Data", "Localisation", "Limitations")
    assert _sections(card, *titles) == _sections(shipped, *titles)
    assert "64 further images (32 patients) of the database are withheld" in card
    assert "about 50 held-out images per fold" in card


def test_a_csv_trained_model_is_not_described_as_mini_mias(tmp_path: Path) -> None:
    meta = _meta(layout="csv", source="/data/site.csv", sha256="ab" * 32, images=60,
                 patients=30, images_with_circles=0, held_out_per_fold=[11, 12, 12, 12, 13])
    meta["localisation"] = {"peak_inside_circle": None, "images": 0}
    card = render(meta, tmp_path)
    for claim in ("mini-MIAS database", "digitised film", "200 micron", "withheld",
                  "patches around the annotated lesion circles", "about 50 held-out",
                  "Suckling", "early 1990s", "from the lesion circles"):
        assert claim not in card, claim
    assert "60 images of 30 patients from a CSV manifest (`/data/site.csv`)" in card
    assert "11-13 held-out images per fold" in card
    assert "this data has no lesion circles" in card
    assert "is not recorded with the model" in card
    assert "where the heatmap peaks was not measured" in card
    assert "chosen during development on mini-MIAS images (README), not on this data" in card


def test_a_mias_subset_names_what_it_lacks_without_claiming_a_withheld_set(
        tmp_path: Path) -> None:
    meta = _meta(layout="mias", sha256="cd" * 32, images=300, patients=150,
                 images_with_circles=100, held_out_per_fold=[60] * 5)
    card = render(meta, tmp_path)
    assert "from the mini-MIAS database" in card and "Suckling" in card
    assert "22 further images of the database are not in this training data" in card
    assert "withheld" not in card
    assert "60 held-out images per fold" in card
    assert "patches around the annotated lesion circles" in card


def test_the_layout_training_records_is_the_data_path_s(tmp_path: Path) -> None:
    from models.datasets import layout_of

    (tmp_path / "m.csv").write_text("path,label\n", encoding="utf-8")
    (tmp_path / "mias").mkdir()
    (tmp_path / "mias" / "Info.txt").write_text("", encoding="utf-8")
    (tmp_path / "classes" / "Normal").mkdir(parents=True)
    assert [layout_of(tmp_path / n) for n in ("m.csv", "mias", "classes")] == [
        "csv", "mias", "class_folders"]
