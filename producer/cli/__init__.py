"""The ``mammo`` command line."""

from producer.cli.main import main

__all__ = ["main"]
