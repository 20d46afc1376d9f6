"""The pluggy entry point of the PostgreSQL engine. Imports no database driver and nothing of
the harness: its drill target and fixtures load only when the drill or pytest asks."""

from __future__ import annotations

import argparse
import importlib
from typing import TYPE_CHECKING

from quiesce.engine import EngineType, InstanceSettings, Quiescer
from quiesce.hookspecs import hookimpl
from quiesce.plugins import Command, CommandRegistry, EngineRegistry
from quiesce_postgresql.config import SCHEMA

if TYPE_CHECKING:
    from quiesce.harness.drill.targets import DrillTargetRegistry
    from quiesce.harness.testing.fixtures import FixtureRegistry


def _factory(settings: InstanceSettings) -> Quiescer:
    from quiesce_postgresql.engine import PostgresQuiescer

    return PostgresQuiescer(settings)


ENGINE = EngineType(
    name="postgresql",
    schema=SCHEMA,
    factory=_factory,
    description="PostgreSQL 12+: backup mode (pg_backup_start/stop) or CHECKPOINT",
    secret_file_keys=("passfile",),
    # Imported by the holder while 'pre' still checks (quiesce.hold.warmup), not on the hold's
    # critical path; importing them has no side effects.
    extra={"preload": ("quiesce_postgresql.engine", "psycopg")},
)


@hookimpl
def quiesce_register_engines(registry: EngineRegistry) -> None:
    registry.add(ENGINE)


def _lazy_command(name: str, module: str, help_text: str) -> Command:
    """A command whose module is imported only when it is configured or run."""

    def configure(parser: argparse.ArgumentParser) -> None:
        importlib.import_module(module).configure(parser)

    def main(args: argparse.Namespace) -> int:
        return int(importlib.import_module(module).main(args))

    return Command(name, help_text, configure, main)


@hookimpl
def quiesce_register_commands(registry: CommandRegistry) -> None:
    registry.add(_lazy_command(
        "restore-label", "quiesce_postgresql.restore_label_command",
        "write a recorded backup_label/tablespace_map into a restored PostgreSQL data dir"))
    registry.add(_lazy_command(
        "restore-check", "quiesce_postgresql.restore_check_command",
        "check a restored PostgreSQL data dir before its first start"))


@hookimpl
def quiesce_register_drill_targets(registry: DrillTargetRegistry) -> None:
    registry.add("postgresql", "quiesce_postgresql.drill_target:PostgresTarget")


@hookimpl
def quiesce_register_fixtures(registry: FixtureRegistry) -> None:
    registry.add("quiesce_postgresql.fixtures")
