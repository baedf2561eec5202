"""The results store: SQLAlchemy models, sessions and Alembic migrations."""

from advbench.store.db import Store, open_store, resolve_url

__all__ = ["Store", "open_store", "resolve_url"]
