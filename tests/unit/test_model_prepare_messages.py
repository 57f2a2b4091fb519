"""When no training image can be read, the reasons come first and the refusal names one."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from models.datasets import LabelledImage
from models.prepared import prepare
from shared.enums import Label
from shared.errors import DatasetError


def test_every_image_unreadable_logs_the_reasons_before_refusing(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    images = []
    for name in ("a", "b"):
        path = tmp_path / f"{name}.png"
        path.write_bytes(b"not an image")
        images.append(LabelledImage(id=name, path=path, label=Label.NORMAL, patient_id=name))
    with caplog.at_level(logging.WARNING, logger="models.prepared"), \
            pytest.raises(DatasetError) as refused:
        prepare(images, (64, 64), max_pixels=10_000_000)
    assert [r.getMessage().split(":")[0] for r in caplog.records] == ["skipped a", "skipped b"]
    assert "None of the 2 images could be read (the first, a: " in str(refused.value)
