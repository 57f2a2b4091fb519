"""Follow queued files to their end: poll the database, then act and refresh exams.

Workers may run on other machines, so the database is the only place that knows when an
image is finished. The watcher remembers which paths wait on which image (a file copied
under a second name waits on the first one's image) and asks in blocks.
"""

from __future__ import annotations

import logging
from collections import defaultdict
from pathlib import Path

from sqlalchemy.orm import Session, sessionmaker

from producer.watch.actions import AfterProcessing
from producer.watch.folder import WatchFolder
from producer.watch.scanner import KnownImage, lookup_ids
from shared.enums import ImageState
from shared.exams import refresh_exam_results
from shared.notify import Notifier

_TERMINAL = {s.value for s in ImageState.terminal()}


class FollowUp:
    def __init__(self, sessions: sessionmaker[Session], folder: WatchFolder,
                 actions: AfterProcessing, log: logging.Logger, *, exam_timeout_s: float,
                 notifier: Notifier | None = None) -> None:
        self.sessions = sessions
        self.notifier = notifier
        self.folder = folder
        self.actions = actions
        self.log = log
        self.exam_timeout_s = exam_timeout_s
        self._waiting: dict[int, set[Path]] = defaultdict(set)

    def __len__(self) -> int:
        return len(self._waiting)

    def track(self, image_id: int, path: Path) -> None:
        self._waiting[image_id].add(path)

    def finish(self, path: Path, image: KnownImage) -> None:
        """A file whose image is already terminal (found by a scan, or just rejected)."""
        self.actions.apply(path, image)

    def poll(self) -> int:
        """Act on every tracked image that reached done/failed; return how many did."""
        if not self._waiting:
            return 0
        with self.sessions() as session:
            states = lookup_ids(session, list(self._waiting))
        finished = {i: k for i, k in states.items() if k.state in _TERMINAL}
        for image_id, image in finished.items():
            for path in sorted(self._waiting.pop(image_id)):
                self.log.info("%s %s (image %d)%s", image.state, self.folder.relative(path),
                              image_id, f": {image.error_code}" if image.error_code else "")
                self.actions.apply(path, image)
        for image_id in set(self._waiting) - set(states):
            self._waiting.pop(image_id)  # row deleted by an admin: nothing left to follow
        self.refresh_exams({k.study_id for k in finished.values() if k.study_id is not None})
        return len(finished)

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
