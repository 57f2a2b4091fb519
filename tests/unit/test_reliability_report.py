"""The README reliability section is rendered from recorded evidence, and only from it."""

from __future__ import annotations

from pathlib import Path

from tests.benchmarks.reliability_report import BEGIN, END, render, replace_section
from tests.helpers.db import Tally
from tests.helpers.reliability import Evidence, load_records, merge_records


def _tally(done: int, failed: int, predictions: int, predicted: int) -> Tally:
    return Tally(images=done + failed, done=done, failed=failed, processing=0,
                 predictions=predictions,
                 max_predictions_per_image=2 if predictions > predicted else 1,
                 predicted_images=predicted, failures={})


def test_records_merge_per_test_and_render_measured_counts(tmp_path: Path) -> None:
    record = tmp_path / "reliability.json"
    first = Evidence("tests/integration/test_faults.py::test_a")
    first.fault("worker killed", expected=10, tally=_tally(9, 0, 9, 9))  # one image lost
    merge_records(record, {first.test: first.entries})
    second = Evidence("tests/integration/test_faults.py::test_b")
    second.fault("redis restarted", expected=5, tally=_tally(5, 0, 6, 5))  # one duplicate
    second.load(images=5, workers=1, chunk_size=1, image_size=[8, 8], producer_peak_rss_mb=1.0,
                worker_child_peak_rss_mb=[2.0], worker_parent_peak_rss_mb=[1.0],
                worker_rss_at_2000_mb=[2.0], worker_rss_at_10000_mb=[2.5], max_growth_mb=0.5,
                growth_bound_mb=60.0, submit_to_done_s=1.0, test_wall_s=2.0)
    merge_records(record, {second.test: second.entries})
    data = load_records(record)
    assert sorted(data["tests"]) == [first.test, second.test]  # the second run kept the first

    section = render(data)
    assert "2 faults, 15 images in all: **1 lost, 1 duplicated**" in section
    assert "| worker killed | 10 | 9 | 0 | 1 | 0 | `test_faults.py::test_a` |" in section
    assert "largest growth 0.5 MB" in section
    readme = f"intro\n{BEGIN}\nold figures\n{END}\noutro\n"
    updated = replace_section(readme, section)
    assert "old figures" not in updated and updated.startswith("intro\n")
    assert updated.endswith(f"{END}\noutro\n")
