"""`mammo run` on a mammogram and a copy of it stored upside down (Patient Orientation
"A\\HL": the head at the bottom). The copy was scored upside down, its heatmap peak at the
mirrored place and its exam PDF upside down, with no note; now it is turned the right way
up in the reader, so it is scored and mapped as the original, and its prediction says so."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pydicom
from sqlalchemy import create_engine, select

from models.heatmaps import decode_png
from shared.db.schema import Image, Prediction
from shared.enums import Laterality, View
from shared.imaging.reader_version import READER_VERSION
from shared.synthetic import synth_mammogram, write_dicom
from tests.helpers.processes import mammo_env, run_mammo


def _view(path: Path, pixels: np.ndarray, orientation: list[str], study: str) -> None:
    write_dicom(path, pixels, study_uid=study,
                sop_uid=pydicom.uid.generate_uid(entropy_srcs=[path.name]),
                laterality=Laterality.LEFT, view=View.MLO)
    ds = pydicom.dcmread(path)
    ds.PatientOrientation = orientation
    ds.save_as(path, enforce_file_format=True)


def test_an_upside_down_copy_is_scored_and_mapped_as_the_upright_original(
        tmp_path: Path, tiny_model_dir: Path) -> None:
    folder = tmp_path / "exams"
    folder.mkdir()
    pixels = synth_mammogram(np.random.default_rng(5), size=(512, 416))
    pixels[90:130, 60:100] = 4095  # a dense spot high in the breast: top and bottom differ
    _view(folder / "upright.dcm", pixels, ["A", "FL"], "1.2.826.0.1.3680043.8.498.71")
    _view(folder / "upside_down.dcm", np.ascontiguousarray(pixels[::-1]), ["A", "HL"],
          "1.2.826.0.1.3680043.8.498.72")
    db = tmp_path / "run.db"
    env = mammo_env(database_url=f"sqlite:///{db}", model=str(tiny_model_dir),
                    report_dir=str(tmp_path / "reports"))
    done = run_mammo(["run", str(folder), "--format", "json"], env, tmp_path)
    assert done.returncode == 0, done.stderr
    rows = {Path(row["source"]).stem: row for row in json.loads(done.stdout)}
    assert [rows[name]["state"] for name in ("upright", "upside_down")] == ["done", "done"]
    assert "orientation" not in rows["upright"]["input_notes"]
    assert rows["upside_down"]["input_notes"]["orientation"] == (
        "stored upside down ((0020,0020) Patient Orientation 'A\\HL'): turned the right way "
        "up for scoring and display")

    engine = create_engine(f"sqlite:///{db}")
    with engine.connect() as conn:
        stored = conn.execute(select(Image.source, Prediction.heatmap_png,
                                     Prediction.input_notes, Prediction.reader_version)
                              .join(Prediction, Prediction.image_id == Image.id)).all()
    engine.dispose()
    saved = {Path(source).stem: (blob, notes or {}, version)
             for source, blob, notes, version in stored}
    assert saved["upside_down"][1]["orientation"].startswith("stored upside down")
    assert {version for *_, version in saved.values()} == {READER_VERSION}
    heat = {name: decode_png(blob) for name, (blob, *_) in saved.items() if blob is not None}
    assert set(heat) == {"upright", "upside_down"}
    assert heat["upright"].max() > heat["upright"].min()  # a map with a place to point at
    peaks = {name: np.unravel_index(int(np.argmax(m)), m.shape) for name, m in heat.items()}
    # Same input frame, same map: the copy's peak is the original's, not its mirror image.
    assert peaks["upside_down"] == peaks["upright"]
    assert np.abs(heat["upside_down"] - heat["upright"]).max() <= 2 / 255
    assert rows["upside_down"]["suspicion"] == rows["upright"]["suspicion"]
