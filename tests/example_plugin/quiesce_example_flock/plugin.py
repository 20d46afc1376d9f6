"""The plugin module named by the entry point: registers the "flock" engine, the
``flock-probe`` command and the ``flock`` drill target; imports nothing heavy (the engine
module is imported by the factory, only when the engine is selected; the command's module by
the command hook, only when a command that is not built in is run; the drill target, by
reference, only by ``quiesce drill --engine flock``)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from quiesce.engine import EngineType, InstanceSettings, Quiescer
from quiesce.hookspecs import hookimpl
from quiesce.plugins import Command, CommandRegistry, EngineRegistry
from quiesce.schema import Field, Table

if TYPE_CHECKING:
    from quiesce.harness.drill.targets import DrillTargetRegistry

SCHEMA = Table({
    "path": Field(str, required=True, hint="an absolute path, e.g. /run/app/backup.lock",
                  doc="the file to lock; created if missing"),
    "sticky": Field(bool, default=False,
                    doc='also leave a "<path>.held" marker that outlives the process (like '
                        "MongoDB's fsyncLock count): exercises recovery_token() and the "
                        "guardian"),
    "password_file": Field(str, doc="a secret file the engine would read a password from "
                                    "(checked by the core: root-owned, mode 600)"),
    # Test knobs: fail on purpose in one step, or be slow.
    "fail_in": Field(str, default="", choices=("", "prepare", "quiesce", "release"),
                     doc="test knob: fail on purpose in this step"),
    "prepare_delay": Field((int, float), default=0, minimum=0,
                           doc="test knob: seconds prepare sleeps first"),
    "quiesce_delay": Field((int, float), default=0, minimum=0,
                           doc="test knob: seconds quiesce sleeps first"),
    "lock_wait_seconds": Field((int, float), default=5, minimum=0,
                               doc="seconds to wait for a lock another process holds"),
    "waiting_marker": Field(str, default="",
                            doc="test knob: quiesce creates this file when it first finds "
                                "the lock taken by another process (it is waiting from now)"),
    "stall_checks_while": Field(str, default="",
                                doc='test knob: check_alive stalls (up to 120 s) while this '
                                    'file exists, like a server that stopped answering; '
                                    '"<file>.seen" is created when a check starts stalling'),
    "release_imports_from": Field(str, default="",
                                  doc='test knob: release imports the module '
                                      '"quiesce_late_import" from this directory, for the '
                                      "first time in the holder (like a driver's lazy "
                                      "import during a release)"),
})


def _factory(settings: InstanceSettings) -> Quiescer:
    from quiesce_example_flock.engine import FlockQuiescer

    return FlockQuiescer(settings)


def _recover(settings: InstanceSettings, token: dict[str, Any]) -> None:
    from quiesce_example_flock.engine import recover

    recover(settings, token)


@hookimpl
def quiesce_register_engines(registry: EngineRegistry) -> None:
    registry.add(EngineType(
        name="flock",
        schema=SCHEMA,
        factory=_factory,
        description="holds an exclusive flock() on a file (example plugin)",
        secret_file_keys=("password_file",),
        recover=_recover,
    ))


@hookimpl
def quiesce_register_commands(registry: CommandRegistry) -> None:
    from quiesce_example_flock import probe

    registry.add(Command(
        name="flock-probe",
        help="say whether a file is flock()ed by another process (example plugin)",
        configure=probe.configure,
        main=probe.main,
    ))


@hookimpl
def quiesce_register_drill_targets(registry: DrillTargetRegistry) -> None:
    # A reference, imported only when the drill runs this target: the harness stays out of
    # every production command that loads this module.
    registry.add("flock", "quiesce_example_flock.drill_target:FlockTarget")
