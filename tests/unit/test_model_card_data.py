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


def test_data_in_the_mias_layout_is_not_claimed_to_be_mini_mias(tmp_path: Path) -> None:
    # Synthetic PNGs named mdbNNN with an Info.txt, 20 folds asked of 16 patients: 16 ran.
    meta = _meta(layout="mias", source="/tmp/synthetic", sha256="cd" * 32, images=32,
                 patients=16, images_with_circles=8, held_out_per_fold=[2] * 16)
    meta["training"]["folds"] = 20
    meta.pop("repeated_splits", None)  # this model's one split only
    meta["validation"]["ci95"]["auc_abnormal"] = [0.41, 0.83]
    card = render(meta, tmp_path)
    for claim in ("mini-MIAS database", "digitised film", "200 micron", "withheld",
                  "further images", "These are mini-MIAS images", "64-image test set",
                  "early 1990s", "20-fold"):
        assert claim not in card, claim
    assert "32 images of 16 patients from a MIAS-layout folder (`/tmp/synthetic`)" in card
    assert "that they are mini-MIAS images was not verified" in card
    assert "If they are, cite" in card and "Suckling" in card
    assert "with these 32 images, AUC abnormal's 95% interval is 0.41-0.83 (+/-0.21)" in card
    assert "16-fold cross-validation by patient" in card
    assert "One 16-fold split trains the trunks" in card
    assert "patches around the annotated lesion circles" in card


def test_the_layout_training_records_is_the_data_path_s(tmp_path: Path) -> None:
    from models.datasets import layout_of

    (tmp_path / "m.csv").write_text("path,label\n", encoding="utf-8")
    (tmp_path / "mias").mkdir()
    (tmp_path / "mias" / "Info.txt").write_text("", encoding="utf-8")
    (tmp_path / "classes" / "Normal").mkdir(parents=True)
    assert [layout_of(tmp_path / n) for n in ("m.csv", "mias", "classes")] == [
        "csv", "mias", "class_folders"]
