"""`mammo evaluate`'s labels, accuracy and confusion matrix count the label the pipeline stores
(normal only at P(normal) >= 0.5, else the more probable of benign and malignant, a tie
malignant), not the top of the three probabilities; ECE stays the standard top-label ECE."""

from __future__ import annotations

import json
from collections import deque
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import pytest

from models import metrics
from models.datasets import load_dataset
from models.registry import ModelSpec
from shared.enums import CLASSES, Label
from shared.imaging.preprocess import PREPROCESSING_VERSION
from shared.scoring import LABEL_RULE, label_indices, label_of
from shared.synthetic import synth_mammogram, write_png

# Truth and probabilities, each row worked out by hand under both rules.
CASES = {
    # id: (truth, (p_normal, p_benign, p_malignant)), label by the rule / by argmax
    "normal0": ("normal", (0.80, 0.10, 0.10)),     # normal / normal
    "normal1": ("normal", (0.45, 0.30, 0.25)),     # benign (wrong) / normal (right)
    "benign0": ("benign", (0.40, 0.35, 0.25)),     # benign (right) / normal (wrong)
    "benign1": ("benign", (0.20, 0.70, 0.10)),     # benign / benign
    "malignant0": ("malignant", (0.30, 0.35, 0.35)),  # malignant (tie, right) / benign (wrong)
    "malignant1": ("malignant", (0.10, 0.20, 0.70)),  # malignant / malignant
}
RULE_LABELS = {"normal0": "normal", "normal1": "benign", "benign0": "benign",
               "benign1": "benign", "malignant0": "malignant", "malignant1": "malignant"}
# Rows truth normal/benign/malignant, columns the label: 5 of 6 right (argmax: 4 of 6, with
# [[2, 0, 0], [1, 1, 0], [0, 1, 1]]).
RULE_CONFUSION = [[1, 1, 0], [0, 2, 0], [0, 0, 2]]


def _arrays() -> tuple[np.ndarray, np.ndarray]:
    truth = np.array([CLASSES.index(Label(t)) for t, _ in CASES.values()], dtype=np.int64)
    return truth, np.array([p for _, p in CASES.values()], dtype=np.float64)


def test_the_vectorised_label_is_label_of_row_by_row() -> None:
    _, probs = _arrays()
    assert [CLASSES[k].value for k in label_indices(probs)] == list(RULE_LABELS.values())
    assert [CLASSES[k] for k in label_indices(probs)] == [label_of(*row) for row in probs]
    # The boundary: even odds of abnormal read normal; a benign/malignant tie malignant.
    edge = np.array([[0.5, 0.3, 0.2], [0.4999, 0.3001, 0.2], [0.4, 0.3, 0.3]])
    assert label_indices(edge).tolist() == [0, 1, 2]
    assert label_indices(edge.astype(np.float32)).tolist() == [0, 1, 2]


def test_accuracy_and_confusion_count_the_label_not_the_top_class() -> None:
    truth, probs = _arrays()
    summary = metrics.summary(truth, probs)
    assert summary["confusion_matrix"] == RULE_CONFUSION
    assert summary["accuracy"] == pytest.approx(5 / 6)
    assert metrics.INTERVAL_METRICS["accuracy"](truth, probs) == pytest.approx(5 / 6)
    # The probe's case alone: truth benign, (0.40, 0.35, 0.25) is labelled benign.
    one = np.array([[0.40, 0.35, 0.25]])
    assert metrics.summary(np.array([1]), one)["accuracy"] == 1.0
    assert metrics.confusion(np.array([1]), one) == [[0, 0, 0], [0, 1, 0], [0, 0, 0]]


def test_the_accuracy_interval_counts_the_label() -> None:
    # Every image right by the label (argmax would get the benign ones wrong): any resample
    # of patients has accuracy 1.
    truth = np.array([1, 1, 0, 0])
    probs = np.array([[0.40, 0.35, 0.25]] * 2 + [[0.9, 0.05, 0.05]] * 2)
    interval = metrics.bootstrap_intervals(truth, probs, np.array([0, 0, 1, 1]),
                                           rounds=50, seed=0)["accuracy"]
    assert interval == (1.0, 1.0)


def test_ece_stays_the_top_label_calibration_error() -> None:
    # One image, truth benign, (0.40, 0.35, 0.25): the top class (normal, 0.40) is wrong,
    # so |0 - 0.40| = 0.40, although the label (benign) is right.
    assert metrics.expected_calibration_error(
        np.array([1]), np.array([[0.40, 0.35, 0.25]])) == pytest.approx(0.40)


class _FixedClassifier:
    """Stands in for worker.classifier.Classifier: the probabilities of ``CASES`` in the
    order the evaluation scores the images (load_dataset's)."""

    queue: ClassVar[deque[tuple[float, float, float]]] = deque()

    def __init__(self, spec: ModelSpec, *, batch_size: int, preprocessing_version: str) -> None:
        self.batch_size = batch_size

    def load(self) -> None:
        pass

    def predict(self, batch: np.ndarray) -> Any:
        from worker.classifier import ForwardPass

        rows = [self.queue.popleft() for _ in range(len(batch))]
        return ForwardPass(probabilities=np.array(rows, dtype=np.float32), seconds=0.0)


def test_evaluate_json_labels_and_figures_follow_the_stored_label(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import worker.classifier
    from models.evaluation import evaluate

    rng = np.random.default_rng(5)
    data = tmp_path / "data"
    for image_id, (truth, _) in CASES.items():
        (data / truth).mkdir(parents=True, exist_ok=True)
        write_png(data / truth / f"{image_id}.png", synth_mammogram(rng, (200, 160)))
    order = [image.path.stem for image in load_dataset(data)]  # ids are "class/stem"
    assert sorted(order) == sorted(CASES)
    _FixedClassifier.queue = deque(CASES[i][1] for i in order)
    monkeypatch.setattr(worker.classifier, "Classifier", _FixedClassifier)
    spec = ModelSpec(name="fixed", version="0.0.1", directory=tmp_path / "model",
                     sha256="0" * 64, classes=tuple(c.value for c in CLASSES),
                     input_size=(96, 80), preprocessing_version=PREPROCESSING_VERSION,
                     metadata={})
    result = evaluate(spec, data, max_pixels=10_000_000, batch_size=4)
    assert list(result) == ["n", "accuracy", "confusion_matrix", "auc_abnormal",
                            "auc_malignant", "sensitivity_at_90_specificity", "ece", "model",
                            "predictions"]
    assert {Path(p["id"]).name: p["label"] for p in result["predictions"]} == RULE_LABELS
    assert result["confusion_matrix"] == RULE_CONFUSION
    assert result["accuracy"] == pytest.approx(5 / 6)
    # The JSON agrees with itself: accuracy and the matrix are those of its own labels.
    right = sum(p["label"] == p["truth"] for p in result["predictions"])
    assert result["accuracy"] == pytest.approx(right / result["n"])
    json.dumps(result)  # still plain JSON


def test_a_training_run_records_the_rule_its_accuracy_counts() -> None:
    from models.train_run import TrainConfig, validation_report

    truth, probs = _arrays()
    report = validation_report(truth, probs, np.arange(len(truth)),
                               TrainConfig(bootstrap_rounds=20))
    assert report["label_rule"] == LABEL_RULE
    assert report["accuracy"] == pytest.approx(5 / 6)
    assert report["confusion_matrix"] == RULE_CONFUSION


def test_the_card_says_which_decision_its_confusion_matrices_count() -> None:
    from models.model_card import render
    from models.registry import resolve_model

    spec = resolve_model("default:1.8.0")
    meta = json.loads(json.dumps(spec.metadata))
    blocks = (meta["validation"], meta["baseline"], meta["bilateral"]["validation"])
    for block in blocks:  # figures recorded before the rule was recorded with them
        block.pop("label_rule", None)
    old = render(meta, spec.directory)
    assert "columns the most probable class" in old and "columns the label" not in old
    assert "recorded counting the most probable of the three classes" in old
    assert LABEL_RULE in old
    blocks[0]["label_rule"] = blocks[2]["label_rule"] = LABEL_RULE
    mixed = render(meta, spec.directory)  # the baseline's figures still counted the top class
    assert mixed.count("columns the label;") == 2
    assert "those of the feature baseline were recorded counting the most probable" in mixed
    blocks[1]["label_rule"] = LABEL_RULE
    new = render(meta, spec.directory)
    assert "columns the most probable class" not in new and "recorded counting" not in new
    assert f"Accuracy and the confusion matrices count the label readers see: {LABEL_RULE}." \
        in new


def test_the_reliability_diagram_plots_top_label_calibration(
        monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    from matplotlib.figure import Figure

    from models import plots

    saved: list[Figure] = []
    save = Figure.savefig

    def keep(self: Figure, *args: Any, **kwargs: Any) -> None:
        saved.append(self)
        save(self, *args, **kwargs)

    monkeypatch.setattr(Figure, "savefig", keep)
    # Truth benign: the top class (normal, 0.40) is wrong, though the label is right.
    plots.reliability(np.array([1]), np.array([[0.40, 0.35, 0.25]]), tmp_path / "r.png")
    model_line = saved[0].axes[0].get_lines()[1]
    assert model_line.get_xdata().tolist() == pytest.approx([0.40])
    assert model_line.get_ydata().tolist() == [0.0]
