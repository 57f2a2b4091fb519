"""Info.txt rows are read case-insensitively; a row the loader cannot interpret is refused
with its line number, never dropped or relabelled."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from models.datasets import load_dataset
from shared.enums import Label
from shared.errors import DatasetError
from shared.synthetic import synth_mammogram, write_png


def _mias(root: Path, rows: str) -> Path:
    root.mkdir(parents=True)
    for n in range(1, 5):
        write_png(root / f"mdb{n:03d}.png", synth_mammogram(np.random.default_rng(n), (128, 96)))
    (root / "Info.txt").write_text("A header line\n\n" + rows, encoding="latin-1")
    return root


def test_lower_case_rows_are_read(tmp_path: Path) -> None:
    data = _mias(tmp_path / "m", "mdb001 g circ b 50 40 10\nMDB002 G NORM\n"
                 "mdb003 d calc m *note 3*\nmdb004\tF\tSPIC\tB\r\n")
    labels = {i.id: i.label for i in load_dataset(data)}
    assert labels == {"mdb001": Label.BENIGN, "mdb002": Label.NORMAL,
                      "mdb003": Label.MALIGNANT, "mdb004": Label.BENIGN}


@pytest.mark.parametrize(("row", "said"), [
    ("mdb003 G CIRC 50 40 10", "line 5: CIRC has no severity"),
    ("mdb003 G CIRC X 50 40 10", "line 5: severity 'X' is not B"),
    ("mdb003 G BLOB B", "line 5: class 'BLOB' is not NORM"),
    ("mdb003 G NORM B", "line 5: 'mdb003 G NORM B' is NORM but gives a severity"),
    ("mdb1000 G NORM", "line 5: 'mdb1000 G NORM' is not a truth row"),
])
def test_a_row_it_cannot_interpret_is_refused_with_its_line(tmp_path: Path, row: str,
                                                            said: str) -> None:
    data = _mias(tmp_path / "m", f"mdb001 G NORM\nmdb002 G NORM\n{row}\nmdb004 G NORM\n")
    with pytest.raises(DatasetError, match="Info.txt " + said.replace("(", r"\(")):
        load_dataset(data)
