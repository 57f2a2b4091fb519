"""Database: typed SQLAlchemy models, engine factory, Alembic migrations, repository functions."""

__all__: list[str] = []
