"""Heads that cannot serve are neither shipped by `mammo train` nor loaded nor activated:
a bilateral head that reads a breast by its partner alone (own weight 0), and an image head
whose calibrated outputs cannot vary (every slope 0). The shipped models stay usable."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from models.activation import activate, active_version
from models.bilateral import (
    BilateralHead,
    PairedScore,
    choose_scores,
    drop_reason,
    head_problem,
    partners,
)
from models.calibration import Platt, RankingHead, constant_outputs
from models.model_card import _bilateral
from models.registry import (
    MODELS_ROOT,
    resolve_model,
    sealed,
    shipped_models,
    usability_problem,
    verify_model,
)
from models.splits import patient_folds
from models.train_run import require_varying
from shared.config import Settings
from shared.db.engine import create_db_engine, ensure_schema, make_session_factory
from shared.errors import DatasetError, ModelNotFoundError
from shared.imaging.preprocess import PREPROCESSING_VERSION
from tests.helpers.processes import mammo_env, run_mammo

# The head the probe's training wrote: every paired score sigmoid(0.893 logit(partner) - 0.99).
PROBE_HEAD = {"abnormal": {"own": 0.0, "partner": 0.893, "bias": -0.99}, "malignant": None}


def _pairs(n_patients: int, seed: int, signal: float) -> tuple[np.ndarray, ...]:
    """Two breasts per patient with a shared offset; one breast of some patients abnormal,
    its own logit raised by ``signal``. Returns (probs, labels, patients, partner)."""
    rng = np.random.default_rng(seed)
    labels = np.zeros(2 * n_patients, np.int64)
    sick = rng.random(n_patients) < 0.4
    side = rng.integers(0, 2, n_patients)
    labels[2 * np.flatnonzero(sick) + side[sick]] = rng.integers(1, 3, int(sick.sum()))
    offset = np.repeat(rng.normal(0.0, 1.5, n_patients), 2)
    q_a = 1 / (1 + np.exp(-(offset + signal * (labels > 0) + rng.normal(0, 0.5, labels.size))))
    q_m = 1 / (1 + np.exp(-(offset + signal * (labels == 2) + rng.normal(0, 0.5, labels.size))))
    p_m = np.minimum(q_a, q_m)
    probs = np.stack([1 - q_a, q_a - p_m, p_m], axis=-1)
    patients = np.repeat(np.arange(n_patients), 2)
    keys = [(int(p), "L" if i % 2 == 0 else "R", "MLO") for i, p in enumerate(patients)]
    return probs, labels, patients, partners(keys)


def test_a_paired_score_is_shipped_only_when_it_reads_the_breast_itself() -> None:
    shipped = PairedScore(1.03, -0.69, -0.44)  # like models/default/1.8.0's
    assert drop_reason(shipped, 0.70, 0.74) is None
    # The probe's head: own 0, although pairing raised the AUC (0.357 -> 0.466).
    why = drop_reason(PairedScore(0.0, 0.893, -0.99), 0.357, 0.466)
    assert why is not None and "own score is 0.000" in why
    assert "not clearly positive" in (drop_reason(PairedScore(0.2, -0.1, 0.0), 0.6, 0.7) or "")
    # A good own weight, but pairing loses held-out AUC (0.672 alone, 0.462 paired).
    lost = drop_reason(shipped, 0.672, 0.462)
    assert lost is not None and "0.462, below 0.672" in lost
    assert "cannot be measured" in (drop_reason(shipped, None, 0.5) or "")


def test_choose_scores_keeps_a_helpful_head_and_drops_one_without_own_evidence() -> None:
    probs, labels, patients, partner = _pairs(150, seed=3, signal=1.5)
    folds = patient_folds(labels, patients, n_folds=5, seed=1)
    chosen = choose_scores(probs, labels, partner, folds, ("abnormal",))
    assert chosen.head.scores == ("abnormal",) and not chosen.dropped
    assert chosen.head.abnormal is not None and chosen.head.abnormal.own > 0.5
    # The images carry nothing of their labels: the fitted own weight is not clearly
    # positive, so the score is dropped with its reason, and the held-out probabilities
    # are each image's own.
    noise, _, _, _ = _pairs(150, seed=4, signal=0.0)
    chosen = choose_scores(noise, labels, partner, folds, ("abnormal", "malignant"))
    assert chosen.head.scores == () and set(chosen.dropped) == {"abnormal", "malignant"}
    for why in chosen.dropped.values():
        assert why["own"] < 0.5 and why["reason"]
    np.testing.assert_allclose(chosen.held_out, noise)


def test_constant_image_heads_are_recognised() -> None:
    zero = Platt(np.zeros(9), -0.7)
    varying = Platt(np.eye(9)[5] * 0.4, -0.6)
    assert constant_outputs(RankingHead(zero, Platt(np.zeros(9), -1.6)).describe())
    assert not constant_outputs(RankingHead(varying, Platt(np.zeros(9), -1.6)).describe())
    assert not constant_outputs({"kind": "another head"})


def test_training_refuses_to_write_a_model_whose_outputs_cannot_vary() -> None:
    head = RankingHead(Platt(np.zeros(9), -0.705), Platt(np.zeros(9), -1.64))
    with pytest.raises(DatasetError, match="identical for every image") as refused:
        require_varying(head, {"auc_abnormal": 0.312, "auc_malignant": 0.125}, 12, 6)
    assert "0.312" in str(refused.value) and "Nothing was written" in str(refused.value)
    varying = RankingHead(Platt(np.eye(9)[5] * 0.4, -0.6), Platt(np.zeros(9), -1.6))
    require_varying(varying, {"auc_abnormal": 0.7, "auc_malignant": None}, 12, 6)


def test_every_shipped_model_stays_usable_and_activatable(tmp_path: Path) -> None:
    specs = [s for s in shipped_models() if s.name == "default"]
    assert {s.version for s in specs} >= {"1.2.0", "1.3.0", "1.4.0", "1.7.0", "1.8.0"}
    settings = Settings(database_url=f"sqlite:///{tmp_path / 'a.db'}",  # type: ignore[call-arg]
                        _env_file=None)
    engine = create_db_engine(settings)
    ensure_schema(engine)
    sessions = make_session_factory(engine)
    for spec in specs:
        assert usability_problem(spec.metadata) is None, spec.directory
        verify_model(spec, preprocessing_version=spec.preprocessing_version)
        with sessions() as session:
            activate(session, spec)
            session.commit()
            active = active_version(session)
            assert active is not None and active.version == spec.version
    engine.dispose()


def _unusable_copy(root: Path, version: str, change: dict[str, object]) -> Path:
    """models/default/1.8.0 under another version with ``change`` in its metadata, sealed
    as `mammo train` would have written it."""
    target = root / "default" / version
    shutil.copytree(MODELS_ROOT / "default" / "1.8.0", target)
    meta = json.loads((target / "metadata.json").read_text())
    meta.update(version=version, **change)
    (target / "metadata.json").write_text(json.dumps(sealed(meta)))
    return target


def test_loading_and_activation_refuse_a_partner_only_head_and_a_constant_model(
        tmp_path: Path) -> None:
    own0 = _unusable_copy(tmp_path, "9.0.0", {"bilateral": {
        "scores": ["abnormal"], "head": PROBE_HEAD, "images_paired": 24}})
    meta = json.loads((own0 / "metadata.json").read_text())
    head = dict(meta["head"], abnormal=[0.0] * 9, malignant=[0.0] * 9)
    constant = _unusable_copy(tmp_path, "9.1.0", {"head": head, "bilateral": None})
    assert head_problem(BilateralHead.from_config(PROBE_HEAD)) is not None
    settings = Settings(database_url=f"sqlite:///{tmp_path / 'a.db'}",  # type: ignore[call-arg]
                        _env_file=None)
    engine = create_db_engine(settings)
    ensure_schema(engine)
    sessions = make_session_factory(engine)
    for directory, words in ((own0, "weight 0.000 on the breast's own score"),
                             (constant, "identical for every image")):
        spec = resolve_model(str(directory))
        with pytest.raises(ModelNotFoundError, match=words):
            verify_model(spec, preprocessing_version=PREPROCESSING_VERSION)
        with sessions() as session, pytest.raises(ModelNotFoundError, match=words):
            activate(session, spec)
        with sessions() as session:
            assert active_version(session) is None
    engine.dispose()
    # Through the CLI: exit 5, as other unusable models, before Keras loads anything.
    env = mammo_env(database_url=f"sqlite:///{tmp_path / 'cli.db'}")
    done = run_mammo(["models", "activate", str(constant)], env, tmp_path)
    assert done.returncode == 5, done.stderr
    assert "identical for every image" in done.stderr and "Retrain" in done.stderr
    done = run_mammo(["models", "activate", str(own0)], env, tmp_path)
    assert done.returncode == 5 and "other breast alone" in done.stderr


def test_the_card_says_why_a_bilateral_head_was_not_shipped() -> None:
    why = {"own": 0.0, "partner": 0.893, "bias": -0.99, "auc_alone": 0.357,
           "auc_paired": 0.466, "reason": "its fitted weight on the breast's own score is "
           "0.000 (partner 0.893), not clearly positive"}
    text = _bilateral({"bilateral": None, "bilateral_dropped": {"abnormal": why}})
    assert "P(abnormal) is read from each image alone" in text and "0.000" in text
    partly = _bilateral({"bilateral": {"scores": ["abnormal"], "head": {},
                                       "dropped": {"malignant": why}}})
    assert "Bilateral reading" in partly and "P(malignant) is read from each image" in partly
