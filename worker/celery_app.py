"""The Celery app for the ``celery`` command line: ``celery -A worker.celery_app ...``.

Celery's own tools (``inspect ping``, ``flower``, ``status``) must talk to the broker with
the same transport options as ``mammo worker``: mammo's app sets the Redis key separator
(``sep``) to ``:``, and a client built from ``--broker=URL`` alone binds its reply queue
with kombu's default separator, which the worker cannot parse; it drops the reply
(``ValueError: not enough values to unpack``), so every ping times out. The compose
healthcheck and Flower therefore load this app instead of passing ``--broker``.

Importing this module reads the settings (environment and ``.env``) and builds the app
only; it registers no tasks and never imports TensorFlow, so a healthcheck stays cheap.
"""

from __future__ import annotations

from shared.config import load_settings
from shared.queue import create_celery_app

app = create_celery_app(load_settings())

__all__ = ["app"]
