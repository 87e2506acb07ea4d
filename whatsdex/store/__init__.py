"""The only package that opens SQLite. Imports neither Litestar nor neonize."""

from whatsdex.store.database import Store

__all__ = ["Store"]
