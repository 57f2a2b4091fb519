"""What every command gets: the settings, and database/broker handles built on demand."""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import cached_property
from typing import TYPE_CHECKING

import click
from sqlalchemy import Engine
from sqlalchemy.orm import Session, sessionmaker

from shared.config import Settings
from shared.db.engine import create_db_engine, ensure_schema, make_session_factory

if TYPE_CHECKING:
    from celery import Celery


@dataclass
class CliContext:
    settings: Settings
    _migrated: bool = field(default=False, init=False)

    @cached_property
    def engine(self) -> Engine:
        return create_db_engine(self.settings)

    @property
    def sessions(self) -> sessionmaker[Session]:
        """Sessions on a migrated schema (migrations run automatically on first use)."""
        if not self._migrated:
            ensure_schema(self.engine)
            self._migrated = True
        return make_session_factory(self.engine)

    @cached_property
    def celery(self) -> Celery:
        # Imported here: celery, kombu and redis cost every command that never queues
        # (`mammo results`, `worklist`, `stats`) a quarter of a second.
        from shared.queue import create_celery_app

        return create_celery_app(self.settings)


pass_cli = click.make_pass_decorator(CliContext)
