"""Database URLs with TLS options (URL-encoded paths) or '%' in a password still migrate."""

from __future__ import annotations

from sqlalchemy import create_engine

from shared.db.engine import alembic_config, head_revisions


def test_percent_signs_in_the_url_survive_the_alembic_config() -> None:
    # sslrootcert=/etc/... is rendered URL-encoded (%2F), a password may hold "%"; ConfigParser
    # would read either as an interpolation and refuse it. No connection is made here.
    engine = create_engine("postgresql+psycopg://mammo:50%25off@db-host/mammo"
                           "?sslmode=verify-full&sslrootcert=/etc/mammo/ca.crt")
    rendered = engine.url.render_as_string(hide_password=False)
    assert "%" in rendered
    assert alembic_config(engine).get_main_option("sqlalchemy.url") == rendered
    assert head_revisions(engine)  # reads the migration scripts through that config
