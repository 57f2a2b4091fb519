"""`mammo evaluate` knows a model's training images by their pixels whatever container holds
them: the DICOM reader's float32 output and the same values in a 16-bit PNG have one digest
(px2), and models that recorded px1 digests are still matched."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from models.datasets import load_dataset
from models.prepared import PIXEL_DIGEST_VERSION, pixel_digest, pixel_digests
from producer.cli.main import cli
from shared.enums import Laterality, View
from shared.imaging.readers import decode
from shared.synthetic import synth_mammogram, write_dicom, write_png
from tests.unit.test_model_evaluate_overlap import _trained_with_predictions

# px1 digests of ``_SMALL`` as a float array and as an integer array, pinned from the
# release that wrote them (models trained then record these).
_SMALL = np.array([[0, 300, 65535], [7, 8, 9]])
_PX1_AS_FLOAT = "px1:8432927dd6dca7c259ad74a1faccbd750af449c778fc23122b2a069f8828c1e6"
_PX1_AS_INTEGER = "px1:1e653c22cd0af496fbff367334c07109e488e56333a583de49f0dfaf3530a1e7"


def _pixels(n: int) -> list[tuple[str, Laterality, np.ndarray]]:
    rng = np.random.default_rng(5)
    labels = ("normal", "benign", "malignant")
    return [(labels[k % 3], (Laterality.LEFT, Laterality.RIGHT)[k % 2],
             synth_mammogram(rng, (120, 96), laterality=(Laterality.LEFT,
                                                         Laterality.RIGHT)[k % 2]))
            for k in range(n)]


def _as_dicoms(root: Path, cases: list[tuple[str, Laterality, np.ndarray]]) -> Path:
    for k, (label, side, pixels) in enumerate(cases):
        (root / label).mkdir(parents=True, exist_ok=True)
        write_dicom(root / label / f"case{k}.dcm", pixels, laterality=side, view=View.MLO,
                    study_uid=f"1.2.826.0.1.3680043.10.998.{k + 1}",
                    sop_uid=f"1.2.826.0.1.3680043.10.998.{k + 1}.1", patient_id=f"P{k}")
    return root


def _as_pngs(root: Path, cases: list[tuple[str, Laterality, np.ndarray]]) -> Path:
    """The same pixels as 16-bit PNGs under other names, in a manifest."""
    root.mkdir(parents=True)
    rows = ["path,label,patient_id,laterality,view"]
    for k, (label, side, pixels) in enumerate(cases):
        write_png(root / f"img{k}.png", pixels)
        rows.append(f"img{k}.png,{label},Q{k},{side.value},MLO")
    (root / "set.csv").write_text("\n".join(rows) + "\n")
    return root / "set.csv"


def _evaluate(tmp_path: Path, data: Path, model: Path) -> tuple[str, dict[str, object]]:
    env = {"MAMMO_DATABASE_URL": f"sqlite:///{tmp_path / 'm.db'}", "MAMMO_MODEL": "default"}
    done = CliRunner().invoke(cli, ["evaluate", str(data), "--model", str(model),
                                    "--format", "json", "--single-image"], env=env)
    assert done.exit_code == 0, done.output
    return done.stderr, json.loads(done.stdout)


def test_a_dicom_and_a_png_of_the_same_pixels_have_one_digest(tmp_path: Path) -> None:
    ((_, side, pixels),) = _pixels(1)
    dicom = _as_dicoms(tmp_path / "d", [("normal", side, pixels)]) / "normal" / "case0.dcm"
    png = write_png(tmp_path / "p.png", pixels)
    from_dicom = decode(dicom, max_pixels=10**8).pixels
    from_png = decode(png, max_pixels=10**8).pixels
    assert from_dicom.dtype.kind == "f" and from_png.dtype.kind == "u"  # what px1 split on
    assert np.array_equal(from_dicom, from_png)
    assert pixel_digest(from_dicom) == pixel_digest(from_png)
    assert pixel_digest(from_dicom).startswith(f"{PIXEL_DIGEST_VERSION}:")
    # Values a float array holds that are not integers stay apart from their rounding.
    assert pixel_digest(from_png + 0.5) != pixel_digest(from_png + 1)


@pytest.mark.parametrize("dtype", [np.float32, np.float64, np.uint16, np.int32])
def test_digests_recorded_by_earlier_models_are_still_given(dtype: type) -> None:
    given = pixel_digests(_SMALL.astype(dtype), {"px1"})
    # Whatever container either side used: a px1 model trained on DICOMs recorded the
    # float form, one trained on PNGs the integer form.
    assert given == {_PX1_AS_FLOAT, _PX1_AS_INTEGER}
    assert pixel_digests(_SMALL.astype(dtype), {PIXEL_DIGEST_VERSION}) == {
        pixel_digest(_SMALL)}


@pytest.mark.parametrize("trained_on", ["dicom", "png"])
def test_training_images_in_the_other_container_are_named(tmp_path: Path,
                                                         tiny_model_dir: Path,
                                                         trained_on: str) -> None:
    cases = _pixels(6)
    dicoms = _as_dicoms(tmp_path / "dicoms", cases)
    pngs = _as_pngs(tmp_path / "pngs", cases)
    trained, other = (dicoms, pngs) if trained_on == "dicom" else (pngs, dicoms)
    model = _trained_with_predictions(tiny_model_dir, tmp_path / "model", trained)
    stderr, result = _evaluate(tmp_path, other, model)
    said = ("6 of 6 images have the content of one of tiny-test-model 0.0.1's training "
            "images (validation_predictions.json)")
    assert f"warning: {said}" in stderr
    assert result["n"] == 6  # the JSON keeps exactly PRODUCT.md's keys: the warning is stderr's


def _px1_as_float(pixels: np.ndarray) -> str:
    """What the release before px2 recorded for a DICOM's (float32) pixels."""
    values = pixels.astype("<f8")
    digest = hashlib.sha256(f"{values.shape}|{values.dtype.str}|".encode())
    digest.update(values.tobytes())
    return f"px1:{digest.hexdigest()}"


def test_a_model_that_recorded_px1_digests_still_knows_its_images(
        tmp_path: Path, tiny_model_dir: Path) -> None:
    assert _px1_as_float(_SMALL) == _PX1_AS_FLOAT
    cases = _pixels(6)
    dicoms = _as_dicoms(tmp_path / "dicoms", cases)
    model = _trained_with_predictions(tiny_model_dir, tmp_path / "model", dicoms)
    paths = {image.id: image.path for image in load_dataset(dicoms)}
    rows = json.loads((model / "validation_predictions.json").read_text())
    for row in rows:
        pixels = decode(paths[row["id"]], max_pixels=10**8).pixels
        assert pixels.dtype.kind == "f"
        row["pixels"] = _px1_as_float(pixels)
    (model / "validation_predictions.json").write_text(json.dumps(rows))
    stderr, _ = _evaluate(tmp_path, _as_pngs(tmp_path / "pngs", cases), model)
    assert "warning: 6 of 6 images have the content of one of" in stderr
