"""The plugin module named by the entry point: registers the "flock" engine, imports nothing
heavy (the engine module is imported by the factory, only when the engine is selected)."""

from __future__ import annotations

from typing import Any

from quiesce.engine import EngineType, InstanceSettings, Quiescer
from quiesce.hookspecs import hookimpl
from quiesce.schema import Field, Table

SCHEMA = Table({
    # The file to lock; created if missing.
    "path": Field(str, required=True, hint="an absolute path, e.g. /run/app/backup.lock"),
    # Also leave a "<path>.held" marker that outlives the process (like MongoDB's fsyncLock
    # count): exercises recovery_token() and the guardian.
    "sticky": Field(bool, default=False),
    # A secret file the engine would read a password from (checked by the core).
    "password_file": Field(str),
    # Test knobs: fail on purpose in one step, or be slow.
    "fail_in": Field(str, default="", choices=("", "prepare", "quiesce", "release")),
    "prepare_delay": Field((int, float), default=0, minimum=0),
    "quiesce_delay": Field((int, float), default=0, minimum=0),
    "lock_wait_seconds": Field((int, float), default=5, minimum=0),
    # check_alive stalls (up to 120 s) while this file exists, like a server that stopped
    # answering; "<file>.seen" is created when a check starts stalling.
    "stall_checks_while": Field(str, default=""),
    # release imports the module "quiesce_late_import" from this directory, for the first
    # time in the holder (like a driver's lazy import during a release).
    "release_imports_from": Field(str, default=""),
})


def _factory(settings: InstanceSettings) -> Quiescer:
    from quiesce_example_flock.engine import FlockQuiescer

    return FlockQuiescer(settings)


def _recover(settings: InstanceSettings, token: dict[str, Any]) -> None:
    from quiesce_example_flock.engine import recover

    recover(settings, token)


@hookimpl
def quiesce_register_engines(registry: Any) -> None:
    registry.add(EngineType(
        name="flock",
        schema=SCHEMA,
        factory=_factory,
        description="holds an exclusive flock() on a file (example plugin)",
        secret_file_keys=("password_file",),
        recover=_recover,
    ))
