"""A broker that goes away in the middle of a send, and what the images then hold."""

from __future__ import annotations

from typing import Any

import pytest
from celery import Celery
from kombu.exceptions import OperationalError as KombuOperationalError
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from shared.db.schema import Image

REFUSED = "Error 111 connecting to 127.0.0.1:6379. Connection refused."


def broker_gone_after(app: Celery, monkeypatch: pytest.MonkeyPatch, chunks: int,
                      error: BaseException | None = None) -> None:
    """The first ``chunks`` messages go out; every later send meets ``error`` (by default
    Redis refusing the connection)."""
    real = app.send_task
    sent: list[object] = []

    def send(*args: Any, **kwargs: Any) -> object:
        if len(sent) >= chunks:
            raise error if error is not None else KombuOperationalError(REFUSED)
        sent.append(real(*args, **kwargs))
        return sent[-1]

    monkeypatch.setattr(app, "send_task", send)


def send_states(sessions: sessionmaker[Session]) -> dict[int, tuple[str, object, str | None]]:
    """Each image's state, send stamp and claim token."""
    with sessions() as session:
        return {i: (state, sent, token) for i, state, sent, token in session.execute(
            select(Image.id, Image.state, Image.enqueued_at, Image.claim_token))}
