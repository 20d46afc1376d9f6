"""The pluggy entry point of the PostgreSQL engine. Imports no database driver."""

from __future__ import annotations

from quiesce.engine import EngineType, InstanceSettings, Quiescer
from quiesce.hookspecs import hookimpl
from quiesce.plugins import EngineRegistry
from quiesce_postgresql.config import SCHEMA


def _factory(settings: InstanceSettings) -> Quiescer:
    from quiesce_postgresql.engine import PostgresQuiescer

    return PostgresQuiescer(settings)


ENGINE = EngineType(
    name="postgresql",
    schema=SCHEMA,
    factory=_factory,
    description="PostgreSQL 12+: backup mode (pg_backup_start/stop) or CHECKPOINT",
    secret_file_keys=("passfile",),
)


@hookimpl
def quiesce_register_engines(registry: EngineRegistry) -> None:
    registry.add(ENGINE)
