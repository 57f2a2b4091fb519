"""How long the sweeper waits before it presumes a queued image's message lost: the
ordinary MAMMO_REQUEUE_AFTER_S, cut short when the Redis broker started since."""

from __future__ import annotations

import redis

from shared.config import Settings
from shared.queue import broker_uptime_s, create_celery_app
from shared.recovery import lost_message_age_s


def test_the_wait_is_the_time_since_the_broker_started_when_that_is_shorter() -> None:
    assert lost_message_age_s(600, None) == 600  # a transport that cannot tell
    assert lost_message_age_s(600, 42.9) == 42  # Redis restarted 42.9 s ago
    assert lost_message_age_s(600, 0.4) == 0
    assert lost_message_age_s(600, 86_400.0) == 600  # up for a day: the ordinary wait


def test_the_uptime_is_read_from_a_real_redis_and_unknown_elsewhere(
        redis_url: str, settings: Settings) -> None:
    app = create_celery_app(settings.model_copy(update={"broker_url": redis_url}))
    expected = redis.Redis.from_url(redis_url).info("server")["uptime_in_seconds"]
    uptime = broker_uptime_s(app)
    assert uptime is not None and expected <= uptime <= expected + 5
    assert broker_uptime_s(create_celery_app(settings)) is None  # the embedded queue


def test_an_unreachable_broker_has_no_uptime(settings: Settings) -> None:
    app = create_celery_app(settings.model_copy(
        update={"broker_url": "redis://127.0.0.1:1/0"}))
    app.conf.broker_connection_max_retries = 0
    assert broker_uptime_s(app) is None
