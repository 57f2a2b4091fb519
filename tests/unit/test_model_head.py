"""The image head (Platt-scaled read-outs of the evidence) and flip test-time augmentation."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from models import metrics
from models.calibration import EVIDENCE_NAMES, fit_head, fit_platt, readout


def _evidence(rng: np.random.Generator, labels: np.ndarray) -> np.ndarray:
    evidence = rng.normal(0, 1, (len(labels), len(EVIDENCE_NAMES)))
    evidence[:, EVIDENCE_NAMES.index("topk_abnormal")] += 1.5 * (labels > 0)
    evidence[:, EVIDENCE_NAMES.index("topk_malignant")] += 1.5 * (labels == 2)
    return evidence


def test_head_keeps_the_ranking_of_its_evidence_and_sums_to_one() -> None:
    rng = np.random.default_rng(3)
    labels = rng.choice(3, 400, p=[0.64, 0.2, 0.16])
    evidence = _evidence(rng, labels)
    head = fit_head(evidence, labels)
    probs = head.probabilities(evidence)
    assert probs.shape == (400, 3) and probs.min() >= 0.0
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, atol=1e-5)
    assert np.all(probs[:, 2] <= probs[:, 1] + probs[:, 2] + 1e-7)
    abnormal_score = evidence[:, EVIDENCE_NAMES.index("topk_abnormal")]
    # Monotone head: the AUC of the probabilities is the AUC of the raw evidence.
    assert metrics.auc(labels > 0, probs[:, 1] + probs[:, 2]) == pytest.approx(
        metrics.auc(labels > 0, abnormal_score), abs=1e-3)
    # Calibrated: the mean predicted P(abnormal) matches the prevalence.
    assert (probs[:, 1] + probs[:, 2]).mean() == pytest.approx((labels > 0).mean(), abs=0.02)
    assert metrics.expected_calibration_error(labels, probs) < 0.1


def test_platt_scaling_fixes_overconfidence_and_never_inverts() -> None:
    rng = np.random.default_rng(2)
    positive = rng.random(600) < 0.3
    score = (positive * 1.0 + rng.normal(0, 1, 600)) * 5.0  # 5x too spread out
    direction = readout("max_abnormal")
    platt = fit_platt(score, positive, direction)
    slope = float(platt.weights @ direction)
    assert 0.1 < slope < 0.4  # roughly 1/5 of the true log-odds slope (~1)
    # A score that goes the wrong way gets slope 0 (prevalence), not an inverted ranking.
    inverted = fit_platt(-score, positive, direction)
    assert float(inverted.weights @ direction) == 0.0
    # One class only (a tiny set): a constant at that prevalence.
    constant = fit_platt(score, np.zeros(600, bool), direction)
    assert not constant.weights.any() and constant.bias < -5


def test_flip_tta_model_saves_and_loads_in_safe_mode(tmp_path: Path) -> None:
    import keras

    from models.architecture import build_trunk, build_whole_image_model
    from models.layers import Flip

    keras.utils.set_random_seed(1)
    trunk = build_trunk("t", widths=(2, 2, 2, 2, 2))
    rng = np.random.default_rng(0)
    head = fit_head(_evidence(rng, np.repeat([0, 1, 2], 20)), np.repeat([0, 1, 2], 20))
    stats = [(np.zeros(9), np.ones(9))]
    model = build_whole_image_model([trunk], input_size=(64, 64), patch=32,
                                    evidence_stats=stats, head=head.layer_config(),
                                    flips=((), (2,)))
    plain = build_whole_image_model([trunk], input_size=(64, 64), patch=32,
                                    evidence_stats=stats, head=head.layer_config(), flips=((),))
    x = rng.random((2, 64, 64, 1)).astype(np.float32)
    out = model(x)
    assert out["probabilities"].shape == (2, 3) and out["heatmap"].shape == (2, 3, 3)
    # TTA = the mean of the trunk's map and the mirrored image's map mirrored back.
    mirrored = np.asarray(Flip((2,))(trunk(x[:, :, ::-1])))
    expected = (np.asarray(trunk(x)) + mirrored) / 2
    # By type: Keras numbers auto-named layers per process ("average_1" after another test's).
    (tta,) = [layer for layer in model.layers if isinstance(layer, keras.layers.Average)]
    tta_map = keras.Model(model.input, tta.output)
    np.testing.assert_allclose(np.asarray(tta_map(x)), expected, atol=1e-5)
    assert not np.allclose(np.asarray(plain(x)["heatmap"]), np.asarray(out["heatmap"]))
    model.save(tmp_path / "m.keras")
    loaded = keras.models.load_model(tmp_path / "m.keras", compile=False, safe_mode=True)
    np.testing.assert_allclose(np.asarray(loaded(x)["probabilities"]),
                               np.asarray(out["probabilities"]), atol=1e-6)
