"""The sweeper's rule for a queued image whose message was sent: presumed lost once it has
waited past its priority's wait with no message left in the broker at its priority or a
more urgent one.

A probe killed a worker as it received an urgent message (kombu kept it in its unacked
hash) while 2,000 routine images waited: every sweep left the urgent images alone for as
long as any routine message waited, since it read the broker's total depth, and `mammo
status --health` said ``messages_lost: 0``. A worker takes an urgent message before any
routine one, so routine depth says nothing of an urgent image; and it is taken within one
chunk per worker process, so it waits ``MAMMO_URGENT_REQUEUE_AFTER_S`` (120 s), not the
10 minutes sized for a night's queue.
"""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from shared.config import Settings
from shared.enums import Priority
from shared.queue import create_celery_app, enqueue_chunks, queue_depth, queue_depths
from shared.recovery import LostAfter, SweepReport, lost_after, waiting_ahead

URGENT, ROUTINE = Priority.URGENT.broker_priority, Priority.ROUTINE.broker_priority
NIGHT = {URGENT: 0, 3: 0, ROUTINE: 500, 9: 7}  # a night's routine backlog, no urgent one


def test_an_urgent_image_is_judged_by_the_urgent_messages_alone() -> None:
    assert waiting_ahead(NIGHT, Priority.URGENT) == 0
    assert waiting_ahead(NIGHT, Priority.ROUTINE) == 500  # step 9 comes after routine
    assert waiting_ahead({**NIGHT, URGENT: 2}, Priority.URGENT) == 2
    assert waiting_ahead({**NIGHT, URGENT: 2}, Priority.ROUTINE) == 502
    assert waiting_ahead({}, Priority.ROUTINE) == 0


def _report(**priorities: Priority) -> SweepReport:
    ids = {int(name[1:]): priority for name, priority in priorities.items()}
    return SweepReport(stale_queued=sorted(ids), priorities=ids)


def test_sent_images_are_presumed_lost_by_the_depth_at_their_own_priority() -> None:
    report = _report(i1=Priority.ROUTINE, i2=Priority.URGENT, i3=Priority.URGENT)
    assert report.presumed_lost(NIGHT) == [2, 3]
    assert report.presumed_lost({**NIGHT, URGENT: 1}) == []  # an urgent message still waits
    assert report.presumed_lost({step: 0 for step in range(10)}) == [1, 2, 3]
    assert report.presumed_lost(None) == []  # the broker could not be asked


def test_overdue_images_are_presumed_lost_whatever_the_broker_holds() -> None:
    report = _report(i1=Priority.ROUTINE, i2=Priority.ROUTINE, i3=Priority.URGENT)
    report.overdue = [1]
    assert report.presumed_lost({**NIGHT, URGENT: 1}) == [1]
    assert report.presumed_lost(None) == [1]


def test_an_image_owed_a_message_is_never_judged_by_the_depth() -> None:
    report = SweepReport(stale_queued=[1, 2], owed=[2], priorities={1: Priority.URGENT})
    assert report.sent_before == [1]
    assert report.presumed_lost({}) == [1]


def _settings(**values: int) -> Settings:
    settings = Settings(database_url="sqlite:///unused.db", _env_file=None)  # type: ignore[call-arg]
    return settings.model_copy(update=values)


def test_an_urgent_image_waits_less_never_more_and_a_restart_cuts_both() -> None:
    assert lost_after(_settings(), None) == LostAfter(routine_s=600, urgent_s=120)
    assert lost_after(_settings(), 86_400.0) == LostAfter(600, 120)
    assert lost_after(_settings(), 42.7) == LostAfter(42, 42)  # Redis restarted 42 s ago
    assert lost_after(_settings(), 300.0) == LostAfter(300, 120)
    assert lost_after(_settings(urgent_requeue_after_s=900), None) == LostAfter(600, 600)
    assert lost_after(_settings(urgent_requeue_after_s=30, requeue_after_s=60),
                      None) == LostAfter(60, 30)


def test_the_urgent_wait_is_a_setting_of_at_least_a_second(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MAMMO_URGENT_REQUEUE_AFTER_S", "45")
    assert _settings().urgent_requeue_after_s == 45
    monkeypatch.setenv("MAMMO_URGENT_REQUEUE_AFTER_S", "0")
    with pytest.raises(ValidationError, match="urgent_requeue_after_s"):
        _settings()


def test_the_depths_are_read_per_priority_from_a_real_redis(
        redis_url: str, settings: Settings) -> None:
    app = create_celery_app(settings.model_copy(update={"broker_url": redis_url}))
    try:
        assert queue_depths(app) == dict.fromkeys(range(10), 0)  # no list at all yet
        enqueue_chunks(app, range(12), chunk_size=4, priority=Priority.ROUTINE)
        enqueue_chunks(app, [20, 21], chunk_size=4, priority=Priority.URGENT)
        assert queue_depths(app) == {**dict.fromkeys(range(10), 0), URGENT: 1, ROUTINE: 3}
        assert queue_depth(app) == 4
    finally:
        app.close()


def test_a_broker_without_priority_lists_has_its_depth_at_the_most_urgent_step(
        settings: Settings) -> None:
    app = create_celery_app(settings)  # the embedded in-memory queue
    assert queue_depths(app) == {URGENT: 0}
    enqueue_chunks(app, [1, 2, 3], chunk_size=2, priority=Priority.ROUTINE)
    assert queue_depths(app) == {URGENT: 2}  # none of them known to come after an image
    assert queue_depth(app) == 2


def test_an_unreachable_broker_has_no_depths(settings: Settings) -> None:
    app = create_celery_app(settings.model_copy(
        update={"broker_url": "redis://127.0.0.1:1/0"}))
    app.conf.broker_connection_max_retries = 0
    assert queue_depths(app) is None
    assert queue_depth(app) is None
