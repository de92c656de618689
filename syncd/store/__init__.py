"""Persistence: tables, migrations and the repository of reads and batch writes."""

from .database import open_engine, sqlite_url, upgrade

__all__ = ["open_engine", "sqlite_url", "upgrade"]
