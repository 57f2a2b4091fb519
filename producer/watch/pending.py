"""A failed file that may yet be good: leave it in place for now, or register it again.

Some failures belong to the file's state, not to its content (registration's
``RETRIED_WHEN_THE_FILE_CHANGED``: truncated, unreadable, missing_file). Moving or deleting
such a file at once loses images:

- a writer that stalls past the grace period gets its half file queued, failed
  ``truncated`` and filed away while it still has it open. The image's own file is
  therefore left in place until it has stayed unchanged for the grace period after the
  failure; written to since the failure, it is registered again (and registration retries
  its image);
- a file renamed after it was queued (a temporary name the ignore patterns do not know)
  fails ``missing_file``, and the complete file under its new name, a copy of that image,
  would inherit the failure. A copy still here while the image's own file is gone is
  registered again under its own name instead.
"""

from __future__ import annotations

import os
from enum import Enum
from pathlib import Path

from producer.registration import RETRIED_WHEN_THE_FILE_CHANGED
from producer.watch.scanner import KnownImage
from shared.enums import ImageState


class Pending(Enum):
    WAIT = "wait"  # its writer may still be at it: decide again later
    CHANGED = "changed"  # written to since the failure: register it again
    COPY = "copy"  # a copy of an image whose own file vanished: register it again


def pending(path: Path, image: KnownImage, *, settle_s: float, now: float) -> Pending | None:
    """Why the file at ``path``, waiting on ``image``, must not be filed yet (None: it may).

    ``settle_s``: how long the file must stay unchanged after the failure; ``now``: wall
    clock seconds, as file times are.
    """
    if (image.state != ImageState.FAILED.value
            or image.error_code not in RETRIED_WHEN_THE_FILE_CHANGED):
        return None
    try:
        written = os.stat(path).st_mtime
    except OSError:
        return None  # no file to keep (or none readable): the action decides
    if not image.came_from(path):
        return None if os.path.lexists(image.source) else Pending.COPY
    failed_at = image.finished_at.timestamp() if image.finished_at else 0.0
    if written > failed_at:
        return Pending.CHANGED
    return Pending.WAIT if now < failed_at + settle_s else None


__all__ = ["Pending", "pending"]
