"""Drill targets come from the engine plugins: :func:`target_for` picks one by ``--engine``.

Each engine plugin implements ``quiesce_register_drill_targets(registry)`` and adds one or
more names with a reference ``"package.module:Class"`` to its Target class (or a callable);
the registry imports it only when that target is created, so the plugin module (loaded by
``pre``/``post`` too) never imports the harness. The class is called as ``Class(backend,
name)``. A third-party engine that registers a target is drilled like the bundled ones.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import TYPE_CHECKING

from quiesce.errors import DrillError
from quiesce.harness.drill.targets.base import Backend, Target

if TYPE_CHECKING:
    from quiesce.harness.servers.docker import DockerProfile

TargetFactory = Callable[[Backend, str], Target]


class DrillTargetRegistry:
    """Drill target names -> factories, filled by the plugins' hook."""

    def __init__(self) -> None:
        self._factories: dict[str, tuple[str, str]] = {}
        self._current = ""  # the plugin whose hook is running (set by quiesce.plugins)

    def add(self, name: str, reference: str) -> None:
        """``reference``: ``"package.module:Attribute"``, called as ``Attribute(backend, name)``."""
        module, _, attribute = reference.partition(":")
        if not module or not attribute:
            raise DrillError(f"plugin {self._current!r} registers drill target {name!r} as "
                             f"{reference!r}", hint="give 'package.module:Class'")
        if not name or not name.replace("-", "").isalnum():
            raise DrillError(f"plugin {self._current!r} registers a drill target with a bad "
                             f"name {name!r}", hint="use letters, digits and '-'")
        if name in self._factories:
            raise DrillError(f"drill target {name!r} is registered by both "
                             f"{self._factories[name][0]!r} and {self._current!r}",
                             hint="uninstall or deselect one of the two plugins")
        self._factories[name] = (self._current, reference)

    def names(self) -> list[str]:
        return sorted(self._factories)

    def _load(self, name: str) -> tuple[str, str, object]:
        if name not in self._factories:
            known = ", ".join(self.names()) or "none"
            raise DrillError(f"no installed plugin provides a drill target {name!r} "
                             f"(available: {known})",
                             hint="pick one of those with --engine, or install the plugin")
        owner, reference = self._factories[name]
        return owner, reference, _import_reference(reference, owner, f"its drill target {name!r}")

    def docker_profile(self, name: str) -> DockerProfile:
        """The Docker profile of target ``name``: its factory's ``docker_profile`` attribute,
        ``"package.module:callable"``, called with the target name. Raises ServerError when the
        plugin has none (it cannot run on the Docker backend)."""
        from quiesce.errors import ServerError

        owner, _reference, factory = self._load(name)
        ref = getattr(factory, "docker_profile", "") or ""
        if not ref:
            raise ServerError(f"plugin {owner!r} gives its drill target {name!r} no Docker "
                              "profile: it cannot run on the Docker backend",
                              hint="use --backend local")
        make = _import_reference(ref, owner, f"the Docker profile of {name!r}")
        profile: DockerProfile = make(name)  # type: ignore[operator]
        return profile

    def create(self, name: str, backend: Backend) -> Target:
        if name not in self._factories:
            known = ", ".join(self.names()) or "none"
            raise DrillError(f"no installed plugin provides a drill target {name!r} "
                             f"(available: {known})",
                             hint="pick one of those with --engine, or install the plugin")
        _owner, _reference, factory = self._load(name)
        target: Target = factory(backend, name)  # type: ignore[operator]
        return target


def _import_reference(reference: str, owner: str, what: str) -> object:
    module, _, attribute = reference.partition(":")
    try:
        return getattr(importlib.import_module(module), attribute)
    except (ImportError, AttributeError) as exc:
        raise DrillError(f"plugin {owner!r}: {what} ({reference}) cannot be loaded: {exc}",
                         hint="reinstall the plugin with its drill extras") from exc


def drill_targets() -> DrillTargetRegistry:
    """Every drill target of the installed plugins (the ``quiesce`` entry-point group)."""
    from quiesce.plugins import Plugins

    plugins = Plugins()
    plugins.load_entry_points()
    registry = DrillTargetRegistry()
    plugins.fill("quiesce_register_drill_targets", registry, "registering its drill targets")
    return registry


def target_for(engine: str, backend: Backend) -> Target:
    return drill_targets().create(engine, backend)


__all__ = ["Backend", "DrillTargetRegistry", "Target", "drill_targets", "target_for"]
