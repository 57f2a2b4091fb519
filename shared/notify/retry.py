"""Retry a delivery with capped exponential backoff and jitter.

Only ``NotificationError`` is retried, and not its ``NotificationRejectedError`` subclass
(bad credentials or a 4xx answer will not get better by asking again).
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass

from shared.config import Settings
from shared.errors import NotificationError, NotificationRejectedError


@dataclass(frozen=True)
class RetryPolicy:
    retries: int
    base_s: float
    cap_s: float

    @classmethod
    def from_settings(cls, settings: Settings) -> RetryPolicy:
        return cls(settings.notify_retries, settings.notify_backoff_s,
                   settings.notify_backoff_max_s)

    def longest_s(self, attempt_timeout_s: float) -> float:
        """The longest one delivery can take: every attempt timing out, full backoff."""
        backoff = sum(min(self.cap_s, self.base_s * 2 ** n) for n in range(self.retries))
        return attempt_timeout_s * (self.retries + 1) + backoff

    def delays(self, rng: random.Random) -> Iterator[float]:
        """The pause before each retry: base, 2x base, 4x base... capped, times [0.5, 1)."""
        for n in range(self.retries):
            # "Equal jitter": never less than half the step, so a retry storm from several
            # workers spreads out without collapsing to zero delay.
            yield min(self.cap_s, self.base_s * 2 ** n) * rng.uniform(0.5, 1.0)


@dataclass(frozen=True)
class Delivery:
    attempts: int
    error: str | None  # None: delivered

    @property
    def ok(self) -> bool:
        return self.error is None


def deliver_with_retry(send: Callable[[], None], policy: RetryPolicy, *,
                       sleep: Callable[[float], None] = time.sleep,
                       rng: random.Random | None = None) -> Delivery:
    delays = policy.delays(rng or random.Random())
    attempts = 0
    while True:
        attempts += 1
        try:
            send()
            return Delivery(attempts, None)
        except NotificationRejectedError as exc:
            return Delivery(attempts, str(exc))
        except NotificationError as exc:
            pause = next(delays, None)
            if pause is None:
                return Delivery(attempts, str(exc))
            sleep(pause)
