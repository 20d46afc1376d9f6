"""Registers the ``mongodb`` engine. Imports no driver: pymongo loads only when selected."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from quiesce.engine import EngineType, InstanceSettings, Quiescer
from quiesce.hookspecs import hookimpl
from quiesce.plugins import EngineRegistry
from quiesce_mongodb.config import SCHEMA, section_problems

if TYPE_CHECKING:  # the harness loads only for the drill and tests
    from quiesce.harness.drill.targets import DrillTargetRegistry
    from quiesce.harness.testing.fixtures import FixtureRegistry


def make_quiescer(settings: InstanceSettings) -> Quiescer:
    from quiesce_mongodb.engine import MongoQuiescer

    return MongoQuiescer(settings)


def recover(settings: InstanceSettings, token: dict[str, Any]) -> None:
    from quiesce_mongodb.recovery import recover as run

    run(settings, token)


ENGINE = EngineType(
    name="mongodb",
    schema=SCHEMA,
    factory=make_quiescer,
    description="MongoDB: fsync lock with lockCount bookkeeping (mongod or, opt-in, mongos)",
    secret_file_keys=("uri_file",),
    recover=recover,
    section_problems=section_problems,
    # Imported by the holder while 'pre' still checks (quiesce.hold.warmup), not on the hold's
    # critical path; importing them has no side effects.
    extra={"preload": ("quiesce_mongodb.engine", "pymongo")},
)


@hookimpl
def quiesce_register_engines(registry: EngineRegistry) -> None:
    registry.add(ENGINE)


@hookimpl
def quiesce_register_drill_targets(registry: DrillTargetRegistry) -> None:
    registry.add("mongodb", "quiesce_mongodb.drill_target:MongoTarget")


@hookimpl
def quiesce_register_fixtures(registry: FixtureRegistry) -> None:
    registry.add("quiesce_mongodb.fixtures")
