"""One GPU per worker process.

TensorFlow places every op on the first GPU it sees, so on a machine with several GPUs all
prefork children would share GPU 0 while the others idle. Each child therefore narrows
``CUDA_VISIBLE_DEVICES`` to one GPU, by its pool index (round-robin when there are more
children than GPUs), at ``worker_process_init``: after the fork, before TensorFlow is
imported (the parent never imports it). A list the operator already set is respected: the
children share out those GPUs only.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from typing import Any

log = logging.getLogger(__name__)
VISIBLE = "CUDA_VISIBLE_DEVICES"


def device_for_child(index: int, visible: str | None, gpus: int) -> str | None:
    """The CUDA_VISIBLE_DEVICES value for pool child ``index``; None: leave it as it is
    (one GPU or none: nothing to share out)."""
    ids = ([v.strip() for v in visible.split(",") if v.strip()] if visible is not None
           else [str(i) for i in range(gpus)])
    if len(ids) <= 1:
        return None
    return ids[index % len(ids)]


def pin_child_to_gpu(gpus: int) -> Callable[..., None]:
    """A ``worker_process_init`` receiver; connect it before anything loads TensorFlow."""
    def pin(**_signal: Any) -> None:
        from billiard.process import current_process

        index = getattr(current_process(), "index", None)  # set by billiard's pool
        if index is None:
            return
        device = device_for_child(int(index), os.environ.get(VISIBLE), gpus)
        if device is not None:
            os.environ[VISIBLE] = device
            log.info("worker process %d (pid %d) uses GPU %s", index, os.getpid(), device)
    return pin
