"""Registers the ``mysql`` engine (MySQL 8.0+ and MariaDB 10.4+). Imports no driver."""

from __future__ import annotations

from typing import TYPE_CHECKING

from quiesce.engine import EngineType, InstanceSettings, Quiescer
from quiesce.hookspecs import hookimpl
from quiesce.plugins import EngineRegistry
from quiesce_mysql.config import SCHEMA, section_problems

if TYPE_CHECKING:  # the harness loads only for the drill and tests
    from quiesce.harness.drill.targets import DrillTargetRegistry
    from quiesce.harness.testing.fixtures import FixtureRegistry


def make_quiescer(settings: InstanceSettings) -> Quiescer:
    from quiesce_mysql.engine import MySQLQuiescer

    return MySQLQuiescer(settings)


ENGINE = EngineType(
    name="mysql",
    schema=SCHEMA,
    factory=make_quiescer,
    description="MySQL/MariaDB: LOCK INSTANCE FOR BACKUP, BACKUP STAGE or FLUSH TABLES WITH "
                "READ LOCK, held in one verified session",
    secret_file_keys=("password_file",),
    section_problems=section_problems,
    # Imported by the holder while 'pre' still checks (quiesce.hold.warmup), not on the hold's
    # critical path; importing them has no side effects.
    extra={"preload": ("quiesce_mysql.engine", "pymysql", "pymysql.cursors")},
)


@hookimpl
def quiesce_register_engines(registry: EngineRegistry) -> None:
    registry.add(ENGINE)


@hookimpl
def quiesce_register_drill_targets(registry: DrillTargetRegistry) -> None:
    registry.add("mysql", "quiesce_mysql.drill_target:MySQLTarget")
    registry.add("mariadb", "quiesce_mysql.drill_target:MySQLTarget")


@hookimpl
def quiesce_register_fixtures(registry: FixtureRegistry) -> None:
    registry.add("quiesce_mysql.fixtures")
