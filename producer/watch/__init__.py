"""``mammo watch``: the drop folder a scanner or PACS router writes into.

The flow, one module each: ``events`` (watchdog callbacks into an inbox) and ``scanner``
(start-up and periodic full scans, reconciled against the database) feed ``stability``
(act only on complete files); ``ingest`` registers and queues them; ``followup`` waits for
their terminal state in the database and runs ``actions`` (leave, move, delete) and the exam
refresh; ``observer`` keeps the watchdog observer alive across a folder that disappears;
``service`` is the loop that ties them together.
"""

from producer.watch.service import WatchOptions, run_watch

__all__ = ["WatchOptions", "run_watch"]
