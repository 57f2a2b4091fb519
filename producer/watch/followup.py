"""Follow queued files to their end: poll the database, then act and refresh exams.

Workers may run on other machines, so the database is the only place that knows when an
image is finished. The watcher remembers which paths wait on which image (a file copied
under a second name waits on the first one's image) and asks in blocks. A failure that a
new attempt may fix is not acted on at once (``pending``): the file is left in place a while,
or handed back to be registered again.
"""

from __future__ import annotations

import logging
import os
import time
from collections import defaultdict
from collections.abc import Callable
from datetime import datetime
from pathlib import Path

from sqlalchemy.orm import Session, sessionmaker

from producer.watch.actions import AfterProcessing
from producer.watch.folder import WatchFolder
from producer.watch.pending import Clock, Pending, PendingFiles
from producer.watch.scanner import KnownImage, lookup_ids
from shared.enums import ErrorCode, ImageState
from shared.exams import refresh_exam_results
from shared.notify import Notifier

_TERMINAL = {s.value for s in ImageState.terminal()}
_AGAIN = {
    Pending.CHANGED: "and this file changed since it was queued",
    Pending.COPY: "with its own file gone, and this copy is here",
    Pending.BACK: "though its file is here (away when the worker looked: a share unmounted "
                  "for a while?)",
}


def _why_kept(image: KnownImage) -> str:
    """Why a file failed for its state is left where it is a while."""
    if image.error_code == ErrorCode.MISSING_FILE.value:
        # Handed back once already (``PendingFiles``), or a file that cannot be read.
        return ("though a file is here (a worker that sees another folder at this path, "
                "the share gone again, or a file it cannot read?)")
    return "and its writer may not have finished"


class FollowUp:
    def __init__(self, sessions: sessionmaker[Session], folder: WatchFolder,
                 actions: AfterProcessing, log: logging.Logger, *, exam_timeout_s: float,
                 notifier: Notifier | None = None, settle_s: float = 0.0,
                 register_again: Callable[[Path], None] | None = None,
                 clock: Clock = time.monotonic) -> None:
        """``settle_s``: how long a file failed for its state (e.g. truncated) must stay
        unchanged before it is moved or deleted; ``register_again``: hands a file back to
        be registered (None: its own events or the next scan's will); ``clock``: monotonic
        seconds, for that wait."""
        self.sessions = sessions
        self.notifier = notifier
        self.folder = folder
        self.actions = actions
        self.log = log
        self.exam_timeout_s = exam_timeout_s
        self.settle_s = settle_s
        self.files = PendingFiles(settle_s=settle_s, clock=clock, holds=actions.registered.holds)
        self.register_again = register_again
        self._waiting: dict[int, set[Path]] = defaultdict(set)
        self._kept: set[Path] = set()  # left in place after a failure: said once
        # Handed back to registration, for which failure: said once (a scan and a poll of the
        # same tick both find it before it is registered again).
        self._handed: dict[Path, tuple[int, datetime | None]] = {}

    def __len__(self) -> int:
        return len(self._waiting)

    def track(self, image_id: int, path: Path) -> None:
        self._waiting[image_id].add(path)
        self.files.follow(path)
        self._handed.pop(path, None)

    def finish(self, path: Path, image: KnownImage) -> None:
        """A file whose image is already terminal (found by a scan, or just rejected)."""
        if self._settled(path, image):
            self._act(path, image)

    def poll(self) -> int:
        """Act on every tracked image that reached done/failed; return how many did. The
        folders emptied by earlier polls and scans are removed once they stayed so."""
        self.actions.tidy()
        if not self._waiting:
            return 0
        with self.sessions() as session:
            states = lookup_ids(session, list(self._waiting))
        finished = {i: k for i, k in states.items() if k.state in _TERMINAL}
        for image_id, image in finished.items():
            for path in sorted(self._waiting.pop(image_id)):
                if not self._settled(path, image):
                    continue
                self.log.info("%s %s (image %d)%s", image.state, self.folder.relative(path),
                              image_id, f": {image.error_code}" if image.error_code else "")
                self._act(path, image)
        for image_id in set(self._waiting) - set(states):
            # Row deleted by an admin: nothing left to follow.
            for path in self._waiting.pop(image_id):
                self.files.forget(path)
        self.refresh_exams({k.study_id for k in finished.values() if k.study_id is not None})
        return len(finished)

    def _act(self, path: Path, image: KnownImage) -> None:
        self.actions.apply(path, image)
        self._handed.pop(path, None)
        if not os.path.lexists(path):  # filed away: nothing left to judge (left: kept known)
            self.files.forget(path)

    def _settled(self, path: Path, image: KnownImage) -> bool:
        """Whether the action may be done now; if not, the file is followed further."""
        why = self.files.pending(path, image)
        if why is None:
            self._kept.discard(path)
            return True
        if why is Pending.WAIT:
            self.track(image.image_id, path)  # looked at again at the next poll
            if path not in self._kept:
                self._kept.add(path)
                self.log.info("kept %s in place: image %d failed (%s), %s; filed if it stays "
                              "unchanged for %.0f s", self.folder.relative(path),
                              image.image_id, image.error_code, _why_kept(image), self.settle_s)
            return False
        self._kept.discard(path)  # a new failure of it is said again
        if self._handed.get(path) != (image.image_id, image.finished_at):
            self._handed[path] = (image.image_id, image.finished_at)
            self.log.info("looking at %s again: image %d failed (%s) %s",
                          self.folder.relative(path), image.image_id, image.error_code,
                          _AGAIN[why])
        # Registration decides: it retries the image under this file, and the watcher
        # follows whatever image the file then belongs to.
        if self.register_again is not None:
            self.register_again(path)
        return False

    def refresh_exams(self, study_ids: set[int]) -> None:
        if not study_ids:
            return
        with self.sessions() as session:
            changes = refresh_exam_results(session, study_ids, timeout_s=self.exam_timeout_s)
            session.commit()
        for change in changes:
            replaced = f", supersedes version {change.superseded}" if change.superseded else ""
            self.log.info("exam result for study %d: version %d, %s%s", change.study_id,
                          change.version, change.status, replaced)
        if self.notifier is not None:  # e.g. an exam scored here when its views timed out
            self.notifier.exams_changed({change.study_id for change in changes})
