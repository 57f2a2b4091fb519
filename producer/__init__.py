"""Everything that finds work and queues it: CLI entry points, discovery, registration.

The producer reads headers only and never imports TensorFlow.
"""

__all__: list[str] = []
