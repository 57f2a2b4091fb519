"""Everything that does the work: Celery task wiring, the chunk pipeline, the classifier.

Importing this package never imports TensorFlow; the classifier loads it on first use, in
the worker child process (after the fork).
"""

__all__: list[str] = []
