"""The model card says what its figures rest on: the files training skipped, the split it
used (by image where there are no patients), how many bootstrap rounds the intervals have,
and when "beats the baseline" is a point estimate the intervals do not show. The training
summary says it skipped files, and its progress counts what was preprocessed."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from models.datasets import LabelledImage
from models.model_card import render
from models.prepared import prepare
from models.registry import resolve_model
from models.train_run import skipped_note
from shared.enums import Label
from shared.synthetic import synth_mammogram, write_png

SHIPPED = resolve_model("default:1.8.0")


def _site_meta(**training_data: Any) -> dict[str, Any]:
    """The shipped model's metadata as if trained on another site's 26 class-folder images
    with patient identities (not the development data)."""
    meta = copy.deepcopy(SHIPPED.metadata)
    meta["training_data"].update(layout="class_folders", source="/data/site", sha256="ab" * 32,
                                 images=26, patients=13, images_with_circles=0,
                                 held_out_per_fold=[13, 13], images_without_patient=0)
    meta["training_data"].update(training_data)
    meta["localisation"] = {"peak_inside_circle": None, "images": 0}
    meta.pop("repeated_splits", None)
    return meta


def _section(card: str, title: str) -> str:
    parts = {part.split("\n", 1)[0]: part for part in card.split("\n## ")}
    found = [text for head, text in parts.items() if head.startswith(title)]
    assert len(found) == 1, (title, list(parts))
    return found[0]


def _target_row(card: str) -> str:
    return next(line for line in card.splitlines()
                if line.startswith("| beats the baseline on both AUCs |"))


# 1. Files training could not read.

def test_the_data_section_names_the_skipped_files_and_why(tmp_path: Path) -> None:
    skipped = [["benign/zero", "zero.png is empty (0 bytes)."],
               ["normal/trunc2", "trunc2.dcm is truncated: (7FE0,0010) Pixel Data holds "
                                 "212,992 bytes, 425,984 expected."]]
    data = _section(render(_site_meta(skipped=skipped), tmp_path), "Data")
    assert "26 images of 13 patients" in data
    assert "2 further files of this data could not be read and were skipped" in data
    assert "  - benign/zero: zero.png is empty (0 bytes)." in data
    assert "  - normal/trunc2: trunc2.dcm is truncated" in data
    assert "more (metadata.json" not in data


def test_many_skipped_files_are_listed_up_to_ten_then_counted(tmp_path: Path) -> None:
    skipped = [[f"normal/bad{i:02d}", f"bad{i:02d}.png is empty (0 bytes)."]
               for i in range(13)]
    data = _section(render(_site_meta(skipped=skipped), tmp_path), "Data")
    assert "13 further files of this data could not be read" in data
    assert "normal/bad09" in data and "normal/bad10" not in data
    assert "  - and 3 more (metadata.json `training_data.skipped` lists every one)" in data
    one = _section(render(_site_meta(skipped=skipped[:1]), tmp_path), "Data")
    assert "1 further file of this data could not be read and was skipped" in one


def test_development_data_with_a_skipped_file_says_so_too(tmp_path: Path) -> None:
    meta = copy.deepcopy(SHIPPED.metadata)
    meta["training_data"]["skipped"] = [["mdb004", "mdb004.pgm is a truncated PGM."]]
    data = _section(render(meta, SHIPPED.directory), "Data")
    assert "1 further file of this data could not be read" in data
    assert "  - mdb004: mdb004.pgm is a truncated PGM." in data


def test_the_training_summary_says_files_were_skipped() -> None:
    assert skipped_note([]) == ""
    note = skipped_note([("a", "why"), ("b", "why")])
    assert note.startswith("; 2 unreadable files skipped, in neither the training nor")
    assert "MODEL_CARD.md and metadata.json training_data.skipped name them" in note
    assert skipped_note([("a", "why")]).startswith("; 1 unreadable file skipped")


def test_the_progress_count_is_of_the_images_preprocessed(tmp_path: Path) -> None:
    rng = np.random.default_rng(5)
    images = []
    for name in ("a", "b", "c"):
        path = tmp_path / f"{name}.png"
        if name == "b":  # unreadable: it was counted ("preprocessed 3/3 images")
            path.write_bytes(b"not an image")
        else:
            write_png(path, synth_mammogram(rng, size=(160, 128)))
        images.append(LabelledImage(id=name, path=path, label=Label.NORMAL, patient_id=name))
    said: list[str] = []
    data = prepare(images, (64, 64), max_pixels=10_000_000, progress=said.append)
    assert [i.id for i in data.images] == ["a", "c"]
    assert said == ["preprocessed 2/3 images; 1 could not be read and is left out (the "
                    "warnings above say why)"]


# 2. The validation section follows the split used.

def test_without_patient_identities_validation_says_by_image(tmp_path: Path) -> None:
    card = render(_site_meta(patients=26, images_without_patient=26), tmp_path)
    validation = _section(card, "Validation")
    assert validation.startswith("Validation (cross-validation by image: no patient identity)")
    assert "by patient" not in validation and "both breasts of a patient in one" not in validation
    assert "2-fold cross-validation by image" in validation
    assert "early stopping used an inner split by image" in validation
    assert "resampling images" in validation and "resampling patients" not in validation
    assert "26 images of unknown patients" in _section(card, "Data")
    assert "split by image, not by patient" in _section(card, "Data")


def test_some_images_without_identity_make_a_mixed_split(tmp_path: Path) -> None:
    validation = _section(render(_site_meta(images_without_patient=4), tmp_path),
                          "Validation")
    assert validation.startswith("Validation (cross-validation by patient where known)")
    assert "The 4 images without a patient identity each counted as their own" in validation


def test_with_patients_validation_is_by_patient_as_before(tmp_path: Path) -> None:
    validation = _section(render(_site_meta(), tmp_path), "Validation")
    assert validation.startswith("Validation (patient-level cross-validation)")
    assert ("2-fold cross-validation by patient (both breasts of a patient in one fold)"
            in validation)
    shipped = _section(render(SHIPPED.metadata, SHIPPED.directory), "Validation")
    assert shipped == _section((SHIPPED.directory / "MODEL_CARD.md").read_text(
        encoding="utf-8"), "Validation")


# 3. Bootstrap rounds.

@pytest.mark.parametrize(("rounds", "rough"), [(10, True), (199, True), (200, False),
                                               (1000, False)])
def test_few_bootstrap_rounds_make_the_intervals_rough(tmp_path: Path, rounds: int,
                                                      rough: bool) -> None:
    meta = _site_meta()
    meta["training"]["bootstrap_rounds"] = rounds
    card = render(meta, tmp_path)
    validation = _section(card, "Validation")
    assert f"95% bootstrap intervals resampling patients ({rounds} rounds)." in validation
    assert (f"{rounds} rounds are too few for stable 95% intervals: read these as rough"
            in validation) is rough
    assert (f"from only {rounds} bootstrap rounds, so rough" in _section(card, "Limitations")
            ) is rough


# 4. Beating the baseline on point estimates only.

def _aucs(meta: dict[str, Any], block: str, abnormal: tuple[float, float, float],
          malignant: tuple[float, float, float]) -> None:
    for key, (value, low, high) in (("auc_abnormal", abnormal), ("auc_malignant", malignant)):
        meta[block][key] = value
        meta[block]["ci95"][key] = [low, high]


def test_beating_the_baseline_within_overlapping_intervals_is_caveated(tmp_path: Path) -> None:
    meta = _site_meta()
    meta["bilateral"] = None  # the targets are read on each image alone here
    _aucs(meta, "validation", (0.464, 0.30, 0.62), (0.575, 0.40, 0.75))
    _aucs(meta, "baseline", (0.458, 0.31, 0.60), (0.450, 0.28, 0.61))
    assert _target_row(render(meta, tmp_path)) == (
        "| beats the baseline on both AUCs | yes (abnormal 0.464 vs 0.458, malignant 0.575 "
        "vs 0.450; intervals overlap: not shown to be better) |")
    _aucs(meta, "validation", (0.80, 0.70, 0.88), (0.575, 0.40, 0.75))
    assert "intervals overlap on malignant: not shown to be better" in _target_row(
        render(meta, tmp_path))
    _aucs(meta, "validation", (0.80, 0.70, 0.88), (0.78, 0.65, 0.90))
    assert _target_row(render(meta, tmp_path)) == "| beats the baseline on both AUCs | yes |"
    _aucs(meta, "validation", (0.40, 0.30, 0.50), (0.78, 0.65, 0.90))
    assert _target_row(render(meta, tmp_path)) == "| beats the baseline on both AUCs | no |"


def test_the_shipped_model_beats_the_baseline_clear_of_the_intervals() -> None:
    # 1.8.0's bilateral AUC intervals (the reading the targets are checked on) lie above the
    # baseline's: a plain yes, as its sealed card says.
    assert _target_row(render(SHIPPED.metadata, SHIPPED.directory)) == (
        "| beats the baseline on both AUCs | yes |")
