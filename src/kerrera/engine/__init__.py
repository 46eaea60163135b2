"""The storage seam. Only modules in this package run SQL."""

from kerrera.engine.base import AckBatch, Engine
from kerrera.engine.postgres import PostgresEngine
from kerrera.engine.sync import SyncPostgresEngine

__all__ = ["AckBatch", "Engine", "PostgresEngine", "SyncPostgresEngine"]
