"""A PostgreSQL migration that needs a table another transaction holds (a long report query, a
still-running old worker) neither waits in silence nor stalls the site: it retries, names
the holder, and gives up with exit 9 after ``lock_wait_s``. A process waiting for another
one's migration says so."""

from __future__ import annotations

import functools
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import psycopg
import pytest
from sqlalchemy import Engine, create_engine, inspect, text

from producer.cli import commands_db
from producer.cli.exit_codes import ExitCode
from shared.config import Settings
from shared.db import migration_connection
from shared.db.engine import create_db_engine, head_revisions, upgrade
from tests.helpers.cli import invoke_cli
from tests.helpers.old_schema import migrated_to

# All but 0008, which adds images.archived_path: what is left to migrate needs `images`.
ONE_BEHIND = ("0002", "0004", "0006", "0007")
HOLDER_APP = "nightly-report"


def _one_migration_behind(url: str) -> None:
    migrated_to(url, ONE_BEHIND)


@contextmanager
def _held(url: str, sql: str, *, for_s: float) -> Iterator[int]:
    """A second client, named HOLDER_APP, that runs ``sql`` in a transaction it ends after
    ``for_s`` (or on leaving the block); yields its server pid."""
    conn = psycopg.connect(url.replace("+psycopg", ""), application_name=HOLDER_APP)
    conn.execute(sql)
    release = threading.Timer(for_s, conn.rollback)
    release.start()
    try:
        yield conn.info.backend_pid
    finally:
        release.cancel()
        release.join()
        conn.close()


def _read_images_later(url: str, after_s: float, outcome: list[object]) -> threading.Timer:
    """A reader of `images` that would rather fail than queue for long behind a migration."""
    def read() -> None:
        try:
            with psycopg.connect(url.replace("+psycopg", "")) as conn:
                conn.execute("SET lock_timeout = '3s'")
                outcome.append(conn.execute("SELECT count(*) FROM images").fetchone())
        except psycopg.Error as exc:
            outcome.append(exc)

    reader = threading.Timer(after_s, read)
    reader.start()
    return reader


def _engine(url: str) -> Engine:
    return create_db_engine(Settings(database_url=url, _env_file=None))  # type: ignore[call-arg]


@pytest.fixture
def short_lock_waits(monkeypatch: pytest.MonkeyPatch) -> None:
    # One second per statement (five in production) keeps the retries quick; the watch
    # that names the holder looks twice a second.
    monkeypatch.setattr(migration_connection, "PG_STATEMENT_LOCK_WAIT_S", 1.0)


@pytest.mark.usefixtures("short_lock_waits")
def test_blocked_migration_names_the_holder_and_finishes_once_it_is_released(
        postgres_url: str, caplog: pytest.LogCaptureFixture) -> None:
    _one_migration_behind(postgres_url)
    engine = _engine(postgres_url)
    read: list[object] = []
    caplog.set_level("WARNING", logger=migration_connection.__name__)

    with _held(postgres_url, "LOCK TABLE images IN ACCESS SHARE MODE", for_s=4) as pid:
        reader = _read_images_later(postgres_url, 1.5, read)
        started = time.monotonic()
        before, after = upgrade(engine)
        took = time.monotonic() - started
        reader.join()

    assert before == "+".join(ONE_BEHIND)
    assert after is not None and set(after.split("+")) == head_revisions(engine)
    assert took > 3  # it did wait for the holder
    blocked = [r.getMessage() for r in caplog.records if "waits for a lock" in r.getMessage()]
    assert blocked, caplog.text
    assert all(f"server process {pid} (application '{HOLDER_APP}', idle in transaction"
               in message for message in blocked), blocked
    assert "LOCK TABLE" not in caplog.text  # never the holder's query: it may hold data
    # The site kept reading `images` while the migration waited for it.
    assert read == [(0,)], read
    engine.dispose()


@pytest.mark.usefixtures("short_lock_waits")
def test_migration_blocked_past_the_wait_fails_with_exit_9_naming_the_holder(
        postgres_url: str, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    _one_migration_behind(postgres_url)
    monkeypatch.setattr(commands_db, "upgrade", functools.partial(upgrade, lock_wait_s=2))

    with _held(postgres_url, "LOCK TABLE images IN ACCESS SHARE MODE", for_s=30) as pid:
        code, out = invoke_cli(["db", "upgrade"], monkeypatch, tmp_path,
                               database_url=postgres_url)

    assert code == ExitCode.MIGRATION_FAILED, out
    assert "from revision 0002+0004+0006+0007" in out
    assert f"held by server process {pid} (application '{HOLDER_APP}'" in out
    assert "Nothing was changed" in out and "stop that process" in out
    assert "report this message to the maintainers" not in out  # nothing for them to fix
    engine = create_engine(postgres_url)
    with engine.connect() as conn:
        assert set(conn.execute(text("SELECT version_num FROM alembic_version")).scalars()) \
            == set(ONE_BEHIND)
        assert "archived_path" not in {c["name"] for c in inspect(conn).get_columns("images")}
    engine.dispose()


def test_process_waiting_for_another_migration_says_so_once(
        postgres_url: str, caplog: pytest.LogCaptureFixture) -> None:
    _one_migration_behind(postgres_url)
    engine = _engine(postgres_url)
    caplog.set_level("WARNING", logger=migration_connection.__name__)
    take_lock = f"SELECT pg_advisory_xact_lock({migration_connection.PG_MIGRATION_LOCK})"

    with _held(postgres_url, take_lock, for_s=4) as pid:
        started = time.monotonic()
        _, after = upgrade(engine)
        took = time.monotonic() - started

    assert took > 3 and after is not None
    waiting = [r.getMessage() for r in caplog.records
               if "Waiting for the database migration" in r.getMessage()]
    assert len(waiting) == 1, caplog.text
    assert f"server process {pid} (application '{HOLDER_APP}'" in waiting[0]
    engine.dispose()
