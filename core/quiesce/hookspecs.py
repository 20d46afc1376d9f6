"""The hooks a quiesce plugin can implement. Every hook name starts with ``quiesce_``.

A plugin is a module (or object) with functions decorated by :data:`hookimpl`, published in
the ``quiesce`` entry-point group of its distribution::

    [project.entry-points.quiesce]
    myengine = "my_package.plugin"
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import pluggy

if TYPE_CHECKING:
    from quiesce.plugins import EngineRegistry

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
