"""The watch loop: events and scans in, complete files registered and queued, results out.

One thread makes every decision; the watchdog observer thread only fills the inbox. Each
tick (0.2 s): check the folder is there, rescan when due, take the events, queue the files
that became ready, and (every poll interval) follow queued images to their end.

Shutdown (SIGTERM/SIGINT) sets a flag that is checked between steps, never inside one: a
block of files is always registered *and* sent, so nothing is left half-queued. After a
SIGKILL, rows committed but not sent have no ``enqueued_at``; the start-up scan sends them.
"""

from __future__ import annotations

import logging
import os
import signal
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from types import FrameType

from celery import Celery
from kombu.exceptions import OperationalError as KombuOperationalError
from sqlalchemy.exc import DBAPIError, OperationalError, StatementError
from sqlalchemy.orm import Session, sessionmaker

from producer.discovery import OwnFiles, link_problem
from producer.watch.actions import LEAVE, MOVE, AfterProcessing
from producer.watch.events import Change, InboxHandler
from producer.watch.folder import WatchFolder
from producer.watch.followup import FollowUp
from producer.watch.identity import Held, RegisteredFiles, unreadable_reason
from producer.watch.ingest import Ingested, Ingestor
from producer.watch.observer import FolderState, FolderWatch
from producer.watch.pending import Version
from producer.watch.scanner import KnownImage, known_images, walk
from producer.watch.stability import StabilityTracker
from shared.batches import is_watch_batch_of
from shared.config import Settings
from shared.enums import ImageState
from shared.errors import TransientError, UserFacingError, first_line
from shared.exams import studies_awaiting_result
from shared.notify import Notifier
from shared.recovery import BackgroundFollowUp, sweep

log = logging.getLogger("mammo.watch")
TICK_S = 0.2
OUTAGE_S = 5.0
BLOCK = 500
_TERMINAL = {s.value for s in ImageState.terminal()}
_UNAVAILABLE = (OperationalError, TransientError, KombuOperationalError)
_NAMED = 3  # files named in the line that sets a block aside


class EmbeddedWorkerStopped(UserFacingError):
    pass


@dataclass(frozen=True)
class WatchOptions:
    root: Path
    poll: bool = False
    mode: str = "distributed"  # or "embedded": the in-process worker drains the queue


class Watcher:
    def __init__(self, settings: Settings, sessions: sessionmaker[Session], app: Celery,
                 options: WatchOptions) -> None:
        self.settings = settings
        self.sessions = sessions
        self.options = options
        # The database and the report folder may lie inside the drop folder (the defaults,
        # relative to the working directory, do when the watcher runs from there): never
        # images, and moving the database away would lose every result.
        self.own = OwnFiles.of(settings)
        self.folder = WatchFolder.of(options.root, settings.watch_ignore_patterns,
                                     own=self.own)
        self.inbox = InboxHandler()
        self.tracker = StabilityTracker(quiet_s=settings.watch_quiet_period_s,
                                        grace_s=settings.watch_incomplete_grace_s,
                                        close_events=not options.poll)
        self.ingestor = Ingestor(settings, sessions, app, self.folder, log, mode=options.mode)
        notifier = Notifier(settings, sessions)
        self.registered = RegisteredFiles()
        self.followup = FollowUp(sessions, self.folder,
                                 AfterProcessing(self.folder, settings.watch_after, log,
                                                 self.registered, sessions,
                                                 quiet_s=settings.watch_quiet_period_s,
                                                 remove_emptied=settings.watch_remove_emptied),
                                 log,
                                 exam_timeout_s=settings.exam_timeout_s, notifier=notifier,
                                 settle_s=settings.watch_incomplete_grace_s,
                                 register_again=self._register_again)
        # Embedded mode has no `mammo worker` whose sweeper would follow up.
        self.notifications = BackgroundFollowUp(settings, notifier, log)
        self.watch = FolderWatch(self.folder.root, self.inbox, log, poll=options.poll,
                                 interval_s=settings.watch_poll_interval_s, folder=self.folder)
        self._reported: set[Path] = set()  # permission denied / link escapes: said once
        self._duplicates: dict[Path, Version] = {}  # each copy as it was found
        # Files handed back by the follow-up as changed since their image failed.
        self._changed: set[Path] = set()
        self._replaced: set[Path] = set()  # names found reused: said once
        # Files whose block the database refused, each as it was then (``_refused``).
        self._set_aside: dict[Path, Version] = {}
        self._scans = 0

    # -- the loop ---------------------------------------------------------------------------

    def run(self, stop: threading.Event, worker_alive: Callable[[], bool] | None = None) -> None:
        s = self.settings
        due = {"scan": 0.0, "follow": 0.0, "exams": 0.0, "sweep": time.monotonic()}
        log.info("watching %s (%s, after processing: %s, quiet period %.1f s)",
                 self.folder.root, "polling" if self.options.poll else "inotify",
                 s.watch_after, s.watch_quiet_period_s)
        self._warn_own_files_inside()
        try:
            while not stop.is_set():
                try:
                    pause = self.tick(due, stop)
                except _UNAVAILABLE as exc:
                    # A database or broker blip must not end the watch: files stay on disk,
                    # committed rows without a message are re-sent by the next scan.
                    log.warning("database or broker unavailable (%s: %s); retrying in %.0f s",
                                type(exc).__name__, str(exc).splitlines()[0][:200], OUTAGE_S)
                    due["scan"], pause = 0.0, OUTAGE_S
                if worker_alive is not None and not worker_alive():
                    raise EmbeddedWorkerStopped(
                        "the embedded worker stopped unexpectedly; see the log above. Queued "
                        "files are kept and are sent again when `mammo watch` restarts.")
                stop.wait(pause)
        finally:
            self.watch.stop()
        log.info("stopped watching %s; %d file(s) not yet complete were left for the next "
                 "start", self.folder.root, len(self.tracker))

    def tick(self, due: dict[str, float], stop: threading.Event) -> float:
        """One pass of the loop; returns how long to pause before the next."""
        s = self.settings
        state = self.watch.check()
        if state is FolderState.MISSING:
            return max(1.0, min(5.0, s.watch_poll_interval_s))
        # Fallen back to polling (out of inotify watches): no close will come to end a write.
        self.tracker.close_events = not self.watch.poll
        now = time.monotonic()
        if state is FolderState.RESTARTED or now >= due["scan"]:
            self.scan()
            due["scan"] = now + s.watch_reconcile_interval_s
        self.take_events()
        self.queue_ready(stop)
        if now >= due["follow"]:
            self.followup.poll()
            due["follow"] = now + s.watch_poll_interval_s
        if now >= due["exams"]:
            self.exam_timeouts()
            due["exams"] = now + min(60.0, max(2.0, s.exam_timeout_s / 10))
        if self.options.mode == "embedded" and s.sweep_interval_s and now >= due["sweep"]:
            # No `mammo worker` runs here to sweep: after a crash, claims held by the dead
            # process expire and must be re-sent to this process's own queue.
            report = sweep(self.sessions, self.ingestor.app, s,
                           queued_older_than_s=s.requeue_after_s)
            if report.requeued:
                log.warning("sweeper: %s", report.summary())
            self.notifications.kick()
            due["sweep"] = now + s.sweep_interval_s
        return TICK_S

    # -- steps ------------------------------------------------------------------------------

    def scan(self) -> None:
        """Reconcile the folder with the database: new files to check, old ones to finish."""
        resend: dict[int, tuple[Path, str]] = {}
        first = self._scans == 0
        for path, known in known_images(self.sessions, walk(self.folder)):
            if known is None:
                self.consider(path, finished=False)
                continue
            held = self.registered.holds(path, known)
            if held is Held.UNREADABLE:
                self._unreadable(path, known)
            replaced = held is Held.OTHER
            if replaced:
                # The name was reused for another file (a scanner's counter, a resend): the
                # new file is registered on its own; the known image keeps its own result.
                if path not in self._replaced:
                    self._replaced.add(path)
                    log.info("%s now holds another file than image %d: looking at it as a "
                             "new file", self.folder.relative(path), known.image_id)
                self.consider(path, finished=False)
            if known.state in _TERMINAL:
                if not replaced:
                    self.followup.finish(path, known)
            else:
                self.followup.track(known.image_id, path)
                if self._owes_message(known, first=first):
                    resend[known.image_id] = (path, _why_resent(known, first=first))
        self._scans += 1
        if resend:
            self.ingestor.resend(resend)
            log.info("re-sent %d image(s) registered earlier whose message was never sent "
                     "or was lost with an earlier run", len(resend))

    def _owes_message(self, known: KnownImage, *, first: bool) -> bool:
        """Must this watcher send an active image it found registered?

        An embedded queue starts empty, so everything active needs a message. With Redis,
        rows committed but never sent do when this folder's watcher registered them (an
        earlier run killed in between), or their sender gave up (``owed``). Another
        sender's rows are left to it: a `mammo submit` of this folder registers every file
        before it sends any, and a watcher starting meanwhile sent them all a second time,
        each logged as left unsent by an earlier run. Should that sender die before
        sending, the sweeper sends them after MAMMO_REQUEUE_AFTER_S, as for any folder."""
        if first and self.options.mode == "embedded":
            return True
        return known.enqueued_at is None and (
            known.owed or is_watch_batch_of(self.folder.root, known.batch_name))

    def take_events(self) -> None:
        for seen in self.inbox.drain():
            if seen.change is Change.DELETED:
                self.tracker.forget(seen.path)
            elif seen.change is Change.NEW_FOLDER:
                for path in walk(self.folder, seen.path):
                    self.consider(path, finished=False)
            else:
                self.consider(seen.path, finished=seen.change is Change.FINISHED,
                              writing=seen.change is Change.WRITING)

    def consider(self, path: Path, *, finished: bool, writing: bool = False) -> None:
        if self.folder.ignored(path):
            return
        if os.path.islink(path):
            target = self._link_target(path)
            if target is None:
                return
            if self.folder.ignored(target):  # a link to the database, to processed/...
                return
            path = target
        if self._is_known_duplicate(path) or _unchanged(self._set_aside, path):
            return
        self.tracker.note(path, closed=finished, writing=writing)

    def queue_ready(self, stop: threading.Event) -> None:
        verdicts = self.tracker.poll()
        for path in verdicts.vanished:
            log.info("vanished %s: deleted before it was queued", self.folder.relative(path))
        for path in verdicts.denied:
            self._warn_once(path, "cannot read %s: permission denied; retried at the next scan")
        for path, reason in verdicts.unreadable.items():
            self._warn_once(path, "ignored %s: the system cannot read it (%s); retried at the "
                            "next scan", reason)
        for path, kind in verdicts.not_files.items():
            self._warn_once(path, "ignored %s: a %s, not a regular file", kind)
        ready = verdicts.ready
        for start in range(0, len(ready), BLOCK):
            if stop.is_set():
                break  # the rest stays on disk, unregistered: the next start-up scan finds it
            block = ready[start:start + BLOCK]
            out = self._ingest(block)
            if out is None:
                continue
            self._changed.difference_update(block)
            for image_id, path in [*out.queued.items(), *out.rejected.items()]:
                self._reported.discard(path)
                self.followup.track(image_id, path)
            for path, image_id, _state in out.duplicates:
                self._remember_duplicate(path)
                self.followup.track(image_id, path)

    def exam_timeouts(self) -> None:
        with self.sessions() as session:
            waiting = studies_awaiting_result(session)
        self.followup.refresh_exams(set(waiting))

    # -- helpers ----------------------------------------------------------------------------

    def _link_target(self, link: Path) -> Path | None:
        """A link inside the folder stands for its target; one leading outside, to nothing
        or round a loop is ignored (said once)."""
        problem = link_problem(link, self.folder.root, folder="the watched folder")
        if problem is not None:
            self._warn_once(link, "ignored %s: %s", problem)
            return None
        real_root = os.path.realpath(self.folder.root)
        return self.folder.root / os.path.relpath(os.path.realpath(link), real_root)

    def _warn_own_files_inside(self) -> None:
        """Said once at start: what the watcher leaves alone, or cannot, in its folder."""
        if self.folder.own_files:
            database = min(self.own.files, key=len)  # the database file, not a companion
            log.warning("the SQLite database %s lies inside the watched folder: the watcher "
                        "leaves it and its -wal, -shm and -journal files alone, but whoever "
                        "clears the folder may not; keep it elsewhere (MAMMO_DATABASE_URL)",
                        database)
        if self.settings.watch_after != MOVE:
            # Passed over whatever the action (``WatchFolder``): never a silent surprise.
            kept = [name for name in self.folder.reserved
                    if os.path.isdir(self.folder.root / name)]
            if kept:
                log.info("passing over %s inside the watched folder: the watcher's own "
                         "(--after move files images there), never read as dropped files",
                         " and ".join(f"{name}/" for name in kept))
        if os.path.realpath(self.settings.report_dir) == os.path.realpath(self.folder.root):
            log.warning("reports are written into the watched folder itself (MAMMO_REPORT_DIR"
                        "=%s), where they would be read as dropped files: give them a folder "
                        "of their own, for example a sub-folder of it", self.settings.report_dir)

    def _unreadable(self, path: Path, known: KnownImage) -> None:
        """A known file that cannot be read (``chmod 000``) is not taken for another one: it
        stays the image's until it can be read and told apart. Said once; where its image
        is finished and the action moves or deletes files, the action says it instead."""
        if known.state in _TERMINAL and self.settings.watch_after != LEAVE:
            return
        self._warn_once(path, "cannot read %s (%s): whether it still holds image %d cannot "
                        "be told until it can be read; it is looked at again at each scan",
                        unreadable_reason(path) or "unknown reason", known.image_id)

    def _warn_once(self, path: Path, message: str, *args: object) -> None:
        if path not in self._reported:
            self._reported.add(path)
            log.warning(message, self.folder.relative(path), *args)

    def _register_again(self, path: Path) -> None:
        """A file that may undo its image's failure: through the stability check again,
        even if it was found a copy before."""
        self._duplicates.pop(path, None)
        self._changed.add(path)  # seen changed here: registration need not trust its mtime
        self.tracker.note(path)

    def _ingest(self, block: list[Path]) -> Ingested | None:
        """``block`` registered and sent; None when the database refused it (``_refused``)."""
        try:
            return self.ingestor.ingest(block, changed=self._changed)
        except StatementError as exc:
            if isinstance(exc, OperationalError) or (
                    isinstance(exc, DBAPIError) and exc.connection_invalidated):
                raise  # unavailable: the loop waits, then rescans
            self._refused(block, exc)
            return None

    def _refused(self, block: list[Path], exc: StatementError) -> None:
        """A block the database would not register, for a reason that is neither an outage
        nor one file's value (registration records such a file as failed and registers the
        rest): not the watcher's end. It ended it before, and at each restart again, at the
        same files; now they are set aside, each until it changes or the watcher restarts,
        so that no scan reads and refuses them again."""
        for path in block:
            if (version := Version.of(path)) is not None:
                self._set_aside[path] = version
        named = ", ".join(str(self.folder.relative(path)) for path in block[:_NAMED])
        more = f" and {len(block) - _NAMED} more" if len(block) > _NAMED else ""
        log.error("the database refused to register %d file(s) (%s%s): %s: %s. They stay "
                  "where they are, unregistered, and are tried again when they change or "
                  "when `mammo watch` restarts. This is a fault of this software or of the "
                  "database, not of the files: check the database (`mammo db upgrade`), and "
                  "report this line if it persists", len(block), named, more,
                  type(exc).__name__, first_line(exc.orig or exc)[:300])

    def _remember_duplicate(self, path: Path) -> None:
        if (version := Version.of(path)) is not None:
            self._duplicates[path] = version

    def _is_known_duplicate(self, path: Path) -> bool:
        """Rescans must not re-read (and re-log) a copy already found to be a duplicate."""
        return _unchanged(self._duplicates, path)


def _unchanged(seen: dict[Path, Version], path: Path) -> bool:
    """Whether ``path`` is still the version ``seen`` holds of it (gone counts, as there is
    nothing to look at); a version rewritten under the same name leaves ``seen``."""
    version_seen = seen.get(path)
    if version_seen is None:
        return False
    version = Version.of(path)
    if version is None:
        seen.pop(path, None)
        return True
    if version == version_seen:
        return True
    del seen[path]  # rewritten under the same name: look at it again
    return False


def _why_resent(known: KnownImage, *, first: bool) -> str:
    """Why an active image found by a scan is sent again, for its ``queued`` line."""
    if known.enqueued_at is not None:  # embedded: the queue it was in ended with its process
        return "sent again: left queued by an earlier run"
    if first and not known.owed:
        return "registered by an earlier run that stopped before sending it"
    return "registered earlier, but its message could not be sent then"


@contextmanager
def stop_on_signals() -> Iterator[threading.Event]:
    """SIGTERM, SIGINT and SIGHUP set the returned event instead of killing the process
    mid-step. SIGHUP (the terminal it was started from closed) killed it at once, with no
    line in its log; one started under ``nohup`` ignores SIGHUP, and still does."""
    stop = threading.Event()

    def _handler(signum: int, _frame: FrameType | None) -> None:
        log.info("received %s; finishing the current step, then stopping",
                 signal.Signals(signum).name)
        stop.set()

    stopping = [signal.SIGTERM, signal.SIGINT]
    if signal.getsignal(signal.SIGHUP) is not signal.SIG_IGN:
        stopping.append(signal.SIGHUP)
    previous = {sig: signal.signal(sig, _handler) for sig in stopping}
    try:
        yield stop
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def run_watch(settings: Settings, sessions: sessionmaker[Session], app: Celery,
              options: WatchOptions, *, worker_alive: Callable[[], bool] | None = None) -> None:
    """Watch until SIGTERM/SIGINT."""
    watcher = Watcher(settings, sessions, app, options)
    with stop_on_signals() as stop:
        watcher.run(stop, worker_alive)


__all__ = ["KnownImage", "WatchOptions", "Watcher", "run_watch", "stop_on_signals"]
