"""``utc_day(column)``: the UTC calendar day of a stored time, in SQL.

``date(ts)`` on PostgreSQL takes the day in the session's time zone: a result stored at
23:30 UTC counted on the next day on a server in Berlin, outside a ``--since/--until`` range
given in UTC. The engine pins its sessions to UTC; this holds without that too (a
connection made elsewhere, a pooler handing a transaction another server session).
"""

from __future__ import annotations

from typing import Any

from sqlalchemy.ext.compiler import compiles
from sqlalchemy.sql.compiler import SQLCompiler
from sqlalchemy.sql.functions import FunctionElement


class utc_day(FunctionElement[Any]):
    """The UTC day of a ``DateTime(timezone=True)`` column: text on SQLite, a date on
    PostgreSQL; ``str()`` of either is ``YYYY-MM-DD``. Lower case, as the SQL functions
    it stands beside (SQLAlchemy's own ``func.date``)."""

    inherit_cache = True


@compiles(utc_day)
def _sqlite(element: utc_day, compiler: SQLCompiler, **kw: Any) -> str:
    # SQLite stores the UTC wall clock as text: its day is the text's.
    return f"date({compiler.process(element.clauses, **kw)})"


@compiles(utc_day, "postgresql")
def _postgresql(element: utc_day, compiler: SQLCompiler, **kw: Any) -> str:
    return f"date(timezone('UTC', {compiler.process(element.clauses, **kw)}))"
