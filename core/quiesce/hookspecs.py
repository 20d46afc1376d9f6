"""The hooks a quiesce plugin can implement. Every hook name starts with ``quiesce_``.

A plugin is a module (or object) with functions decorated by :data:`hookimpl`, published in
the ``quiesce`` entry-point group of its distribution::

    [project.entry-points.quiesce]
    myengine = "my_package.plugin"

In a plugin, names starting with ``quiesce_`` are reserved for hook functions: a function
marked ``@hookimpl`` whose name is not one of the hooks below (a misspelling), or a
``quiesce_*`` function without ``@hookimpl``, is refused when the plugin loads, with an error
naming the plugin and the function (:meth:`quiesce.plugins.Plugins.register`). A hook
function may take fewer arguments than its hook passes, never others.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import pluggy

if TYPE_CHECKING:  # types only: the harness is never imported at run time from here
    from quiesce.harness.drill.targets import DrillTargetRegistry
    from quiesce.harness.testing.fixtures import FixtureRegistry
    from quiesce.plugins import CommandRegistry, EngineRegistry

PROJECT = "quiesce"
ENTRY_POINT_GROUP = "quiesce"

hookspec = pluggy.HookspecMarker(PROJECT)
hookimpl = pluggy.HookimplMarker(PROJECT)


@hookspec
def quiesce_register_engines(registry: EngineRegistry) -> None:
    """Add the plugin's engine types with ``registry.add(EngineType(...))``.

    Called once when plugins load. Must not import database drivers or connect anywhere:
    drivers are imported by the engine's factory, only for engines that are selected.
    """


@hookspec
def quiesce_register_commands(registry: CommandRegistry) -> None:
    """Add the plugin's CLI subcommands with ``registry.add(Command(name, help, configure,
    main))`` (:class:`quiesce.plugins.Command`).

    Called only when ``quiesce`` is run with a command that is not built in (or for
    ``quiesce --help``), never for ``pre``, ``post`` or ``status``, so plugins cost those
    commands nothing. A name of a built-in command, or one another plugin already added, is an
    error naming both. Import what the command needs inside its ``main``.
    """


@hookspec
def quiesce_register_drill_targets(registry: DrillTargetRegistry) -> None:
    """Add drill targets with ``registry.add(name, factory)``; ``factory(backend, name)``
    returns a :class:`quiesce.harness.drill.targets.base.Target` (its throwaway server,
    workload, invariants, integrity and log checks).

    Called only by ``quiesce drill`` and the test harness. Import the drill module inside the
    factory: the plugin module itself must not import the harness, which production commands
    never load.
    """


@hookspec
def quiesce_register_fixtures(registry: FixtureRegistry) -> None:
    """Name the plugin's pytest fixture modules with ``registry.add("pkg.fixtures")``; the
    quiesce pytest plugin registers them when a test session starts."""
