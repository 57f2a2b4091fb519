"""Code used by both the producer and the worker: config, database, imaging, queue wiring."""

__all__: list[str] = []
