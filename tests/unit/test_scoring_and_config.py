from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from shared.config import EMBEDDED_BROKER_URL, Settings, load_settings
from shared.enums import Label
from shared.errors import ConfigurationError
from shared.scoring import label_of, suspicion

unit = st.floats(0.0, 1.0, allow_nan=False)


@settings(deadline=None)  # a pause on a loaded CI host is not a failure
@given(unit, unit)
def test_suspicion_is_in_range_and_monotone(p_benign: float, p_malignant: float) -> None:
    score = suspicion(p_benign, p_malignant)
    assert 1 <= score <= 10
    assert suspicion(p_benign, min(1.0, p_malignant + 0.2)) >= score


def test_suspicion_extremes() -> None:
    assert suspicion(0.0, 0.0) == 1
    assert suspicion(0.0, 1.0) == 10


def test_label_is_the_top_class_when_one_holds_most_of_the_probability() -> None:
    assert label_of(0.1, 0.2, 0.7) is Label.MALIGNANT
    assert label_of(0.2, 0.7, 0.1) is Label.BENIGN
    assert label_of(0.9, 0.05, 0.05) is Label.NORMAL


def test_a_view_more_likely_abnormal_than_not_is_never_labelled_normal() -> None:
    # The probe's case: normal is the top class, but P(abnormal) = 0.63.
    assert label_of(0.37, 0.33, 0.30) is Label.BENIGN
    assert label_of(0.37, 0.30, 0.33) is Label.MALIGNANT
    assert label_of(0.49, 0.02, 0.49) is Label.MALIGNANT


def test_label_boundary_at_even_odds_of_abnormal() -> None:
    assert label_of(0.5, 0.3, 0.2) is Label.NORMAL  # P(abnormal) = 0.5: not more likely
    assert label_of(0.5, 0.0, 0.5) is Label.NORMAL
    assert label_of(0.4999, 0.3001, 0.2) is Label.BENIGN
    # A benign/malignant tie reads as the graver class.
    assert label_of(0.4, 0.3, 0.3) is Label.MALIGNANT


@settings(deadline=None)
@given(unit, unit)
def test_label_is_normal_exactly_when_p_abnormal_is_at_most_half(q_a: float, q_m: float
                                                                  ) -> None:
    # Probabilities as the model's head builds them from P(abnormal) and P(malignant).
    p_m = min(q_m, q_a)
    label = label_of(1.0 - q_a, q_a - p_m, p_m)
    assert (label is Label.NORMAL) == (1.0 - q_a >= 0.5)


def test_settings_from_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MAMMO_BROKER_URL", "redis://example:6379/3")
    monkeypatch.setenv("MAMMO_CHUNK_SIZE", "8")
    s = Settings(_env_file=None)  # type: ignore[call-arg]
    assert s.broker_url == "redis://example:6379/3" and s.chunk_size == 8
    assert not s.is_embedded
    assert s.embedded().effective_broker_url == EMBEDDED_BROKER_URL


def test_a_dead_workers_claims_expire_long_before_its_time_limit_and_redelivery() -> None:
    # Live workers renew their claims every heartbeat: the lease need only outlast a few
    # missed beats, and a redelivered message must still find the rows reclaimable.
    s = Settings(_env_file=None)  # type: ignore[call-arg]
    assert s.claim_lease_s == 4 * s.claim_heartbeat_s
    assert s.claim_lease_s < s.task_time_limit_s < s.visibility_timeout_s


def test_invalid_setting_is_one_readable_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MAMMO_CHUNK_SIZE", "lots")
    with pytest.raises(ConfigurationError, match="MAMMO_"):
        load_settings(_env_file=None)


def test_patient_key_has_no_default() -> None:
    assert Settings(_env_file=None).patient_id_key is None  # type: ignore[call-arg]
