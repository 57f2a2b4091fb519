"""Say what a command waits on when one of its statements waits for another session's lock.

An administrator's ``LOCK TABLE images IN SHARE MODE`` (a migration, a ``VACUUM FULL``, a
``BEGIN`` left open in psql) holds every INSERT into the table until it ends: `mammo submit`
waited 50 s printing nothing, then succeeded. A nightly submit should wait (its night's
files must get in, and giving up would leave them for a person to notice in the morning),
but not in silence: after ``NOTICE_AFTER_S`` (the wait `mammo status --health` allows a
read before giving up) it says on stderr what it waits on, then again every
``NOTICE_EVERY_S`` while it still waits:

- PostgreSQL: the lock (table and mode) and each session holding it up: its pid, user,
  application, state and how long its transaction has been open, read from ``pg_locks``,
  ``pg_blocking_pids()`` and ``pg_stat_activity``; never its query, which may quote a
  patient's data. A statement that is slow without waiting on a lock is not named.
- SQLite: the file, which another process most likely holds locked; SQLite waits for it
  up to ``SQLITE_BUSY_TIMEOUT_S``, then the command exits 7.

The command keeps waiting. The limit, where a site wants one, is the server's
``lock_timeout`` (``ALTER ROLE mammo SET lock_timeout = '30min'``): past it the statement is
cancelled and the command exits 7 naming the lock (``shared.db.refusals``).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from types import TracebackType
from typing import Any

from sqlalchemy import Engine, NullPool, create_engine, event, text
from sqlalchemy.engine import ExceptionContext

from shared.db.engine import SQLITE_BUSY_TIMEOUT_S, sqlite_file
from shared.errors import first_line
from shared.formatting import without_control

NOTICE_AFTER_S = 10.0  # also how long `mammo status --health` waits (HEALTH_LOCK_WAIT_S)
NOTICE_EVERY_S = 300.0
_POLL_S = 1.0
_HOLDERS_NAMED = 3
# The diagnostic's own statements: never left waiting themselves.
_DIAGNOSTIC_TIMEOUT_MS = 5000

_WANTED = text(
    "SELECT l.locktype, l.relation::regclass::text, l.mode FROM pg_locks l "
    "WHERE l.pid = :pid AND NOT l.granted LIMIT 1")
# No ``query`` column: a statement's text may quote header values (a patient's name).
_HOLDERS = text(
    "SELECT a.pid, a.usename, a.application_name, a.state, "
    "extract(epoch FROM clock_timestamp() - a.xact_start) "
    "FROM pg_stat_activity a WHERE a.pid = ANY(pg_blocking_pids(:pid)) ORDER BY a.pid")


@dataclass
class _Statement:
    started: float  # time.monotonic()
    backend_pid: int | None  # the PostgreSQL server process running it
    look_at: float  # when the watcher looks at it (again)


class LockWaitNotices:
    """While open, watch ``engine``'s statements and ``say`` what holds up any that has run
    ``after_s``, again every ``every_s`` while it waits. A context manager."""

    def __init__(self, engine: Engine, say: Callable[[str], None], *,
                 after_s: float | None = None, every_s: float | None = None,
                 poll_s: float | None = None) -> None:
        self.engine = engine
        self.say = say
        # Read when made, not when defined: a test shortens them on the module.
        self.after_s = NOTICE_AFTER_S if after_s is None else after_s
        self.every_s = NOTICE_EVERY_S if every_s is None else every_s
        self.poll_s = min(_POLL_S, self.after_s / 4) if poll_s is None else poll_s
        self._running: dict[int, _Statement] = {}  # by the thread executing it
        self._guard = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._diagnostic: Engine | None = None
        self._postgres = engine.dialect.name == "postgresql"

    def __enter__(self) -> LockWaitNotices:
        event.listen(self.engine, "before_cursor_execute", self._started)
        event.listen(self.engine, "after_cursor_execute", self._ended)
        event.listen(self.engine, "handle_error", self._failed)
        self._thread = threading.Thread(target=self._watch, name="mammo-lock-wait",
                                        daemon=True)
        self._thread.start()
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        event.remove(self.engine, "before_cursor_execute", self._started)
        event.remove(self.engine, "after_cursor_execute", self._ended)
        event.remove(self.engine, "handle_error", self._failed)
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=_DIAGNOSTIC_TIMEOUT_MS / 1000 + 1)
        if self._diagnostic is not None:
            self._diagnostic.dispose()

    # -- the executing threads' side: cheap, no I/O
    def _started(self, conn: Any, *_args: Any) -> None:
        info = getattr(conn.connection.dbapi_connection, "info", None)
        pid = getattr(info, "backend_pid", None)  # psycopg: no round trip
        now = time.monotonic()
        with self._guard:
            self._running[threading.get_ident()] = _Statement(
                now, pid if isinstance(pid, int) else None, now + self.after_s)

    def _ended(self, *_args: Any) -> None:
        with self._guard:
            self._running.pop(threading.get_ident(), None)

    def _failed(self, _context: ExceptionContext) -> None:
        self._ended()

    # -- the watching thread's side
    def _watch(self) -> None:
        while not self._stop.wait(self.poll_s):
            now = time.monotonic()
            with self._guard:
                due = [(ident, s) for ident, s in self._running.items() if now >= s.look_at]
            for ident, statement in due:
                line = self._describe(statement, now - statement.started)
                with self._guard:
                    if self._running.get(ident) is not statement:
                        continue  # ended while it was looked at
                    # Said: again in a while. Running but not waiting on a lock (a slow
                    # statement): looked at again as soon as it could have been said.
                    statement.look_at = now + (self.every_s if line else self.after_s)
                if line is not None:
                    self.say(line)

    def _describe(self, statement: _Statement, waited: float) -> str | None:
        if not self._postgres:
            return self._sqlite_line(waited)
        if statement.backend_pid is None:
            return None
        try:
            found = self._holders(statement.backend_pid)
        except Exception as exc:  # the notice is a courtesy: the command goes on waiting
            return (f"waited {waited:.0f} s for the database, and could not read what holds "
                    f"it up ({type(exc).__name__}: {first_line(exc)}); still waiting")
        if found is None:
            return None
        return _postgres_line(waited, *found)

    def _holders(self, pid: int) -> tuple[tuple[Any, ...] | None, list[tuple[Any, ...]],
                                          str] | None:
        """(the lock ``pid`` waits for, the sessions holding it up, the lock_timeout in
        force), or None when it waits for none. On a connection of its own, outside the
        engine's pool (which the waiting command may have used up) and its events."""
        if self._diagnostic is None:
            self._diagnostic = create_engine(
                self.engine.url, poolclass=NullPool, hide_parameters=True,
                connect_args={"connect_timeout": 5})
        with self._diagnostic.connect() as conn:
            conn.execute(text(f"SET LOCAL statement_timeout = {_DIAGNOSTIC_TIMEOUT_MS}"))
            holders = [tuple(row) for row in conn.execute(_HOLDERS, {"pid": pid})]
            if not holders:
                return None
            wanted = conn.execute(_WANTED, {"pid": pid}).first()
            # The database's or role's, as the waiting session took it (unless it SET its own).
            limit = conn.execute(text("SELECT current_setting('lock_timeout')")).scalar()
            conn.rollback()
        return (tuple(wanted) if wanted else None), holders, str(limit or "0")

    def _sqlite_line(self, waited: float) -> str:
        path = sqlite_file(self.engine.url)
        return (f"waited {waited:.0f} s for the SQLite file {path}: another process most "
                "likely holds it locked (a worker or `mammo run` writing, a backup); still "
                f"waiting, for up to {SQLITE_BUSY_TIMEOUT_S} s in all, then this command "
                "gives up (exit 7) with nothing of the statement written")


def _postgres_line(waited: float, wanted: tuple[Any, ...] | None,
                   holders: list[tuple[Any, ...]], limit: str) -> str:
    if wanted is None:
        lock = "a lock"
    else:
        locktype, relation, mode = wanted
        lock = (f"a lock on table {relation} ({mode})" if relation
                else f"a {locktype} lock ({mode})")
    named = "; ".join(_holder(*row) for row in holders[:_HOLDERS_NAMED])
    more = f"; and {len(holders) - _HOLDERS_NAMED} more" if len(holders) > _HOLDERS_NAMED else ""
    pids = [str(row[0]) for row in holders[:_HOLDERS_NAMED]]
    end = (f"SELECT pg_terminate_backend({pids[0]})" if len(pids) == 1
           else f"SELECT pg_terminate_backend(PID), PID one of {', '.join(pids)}")
    until = ("for as long as it is held" if limit == "0" else
             f"up to the lock_timeout of {limit} set for this database or role, then it "
             "gives up (exit 7)")
    return (f"waited {waited:.0f} s for {lock} held by another session: {named}{more}. "
            f"Still waiting, {until}: let that session finish, or end it ({end})"
            + (". A lock_timeout set on the database or role makes this command give up "
               "instead (exit 7)" if limit == "0" else ""))


def _holder(pid: int, user: str | None, application: str | None, state: str | None,
            open_s: float | None) -> str:
    parts = [f"user {_shown(user)}"]
    if application:
        parts.append(f"application {_shown(application)}")
    # Another role's session shows none of these without pg_read_all_stats.
    parts.append(state or "state not visible to this database user")
    if open_s is not None:
        parts.append(f"its transaction open {float(open_s):.0f} s")
    return f"pid {pid} ({', '.join(parts)})"


def _shown(value: str | None) -> str:
    return without_control(value, one_line=True) if value else "?"
