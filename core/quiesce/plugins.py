"""A typed facade over pluggy's PluginManager: load plugins, collect their engine types."""

from __future__ import annotations

import importlib.metadata
from collections.abc import Iterable

import pluggy

from quiesce import hookspecs
from quiesce.engine import EngineType
from quiesce.errors import PluginError


class EngineRegistry:
    """Handed to ``quiesce_register_engines``; refuses two engines with one name."""

    def __init__(self) -> None:
        self._engines: dict[str, EngineType] = {}
        self._owner: dict[str, str] = {}
        self._current = "?"

    def add(self, engine: EngineType) -> None:
        if not isinstance(engine, EngineType):
            raise PluginError(
                f"plugin {self._current!r} registered {engine!r}, which is not an EngineType"
            )
        if engine.name in self._engines:
            raise PluginError(
                f"engine {engine.name!r} is registered twice: by {self._owner[engine.name]!r} "
                f"and by {self._current!r}",
                hint="uninstall one of the two distributions",
            )
        self._engines[engine.name] = engine
        self._owner[engine.name] = self._current

    def get(self, name: str) -> EngineType:
        return self._engines[name]

    def names(self) -> list[str]:
        return sorted(self._engines)

    def __contains__(self, name: object) -> bool:
        return name in self._engines

    def owner(self, name: str) -> str:
        return self._owner[name]


class Plugins:
    """Loads plugins from the ``quiesce`` entry-point group (or given objects) exactly once."""

    def __init__(self) -> None:
        self.manager = pluggy.PluginManager(hookspecs.PROJECT)
        self.manager.add_hookspecs(hookspecs)
        self._registry: EngineRegistry | None = None

    def load_entry_points(self, only: Iterable[str] | None = None) -> None:
        """Import the plugins of the entry-point group; ``only`` limits which names load.

        A plugin that fails to import is an error naming it: a selected engine that silently
        disappears would turn an application-consistent backup into a crash-consistent one.
        """
        wanted = set(only) if only is not None else None
        found: set[str] = set()
        for ep in importlib.metadata.entry_points(group=hookspecs.ENTRY_POINT_GROUP):
            if wanted is not None and ep.name not in wanted:
                continue
            if self.manager.get_plugin(ep.name) is not None:
                found.add(ep.name)
                continue
            try:
                plugin = ep.load()
            except Exception as exc:
                raise PluginError(
                    f"plugin {ep.name!r} ({ep.value}) failed to import: {exc}",
                    hint="reinstall the distribution that provides it, or deselect it",
                ) from exc
            self.manager.register(plugin, name=ep.name)
            found.add(ep.name)
        if wanted is not None and (missing := wanted - found):
            installed = sorted(
                ep.name for ep in importlib.metadata.entry_points(group=hookspecs.ENTRY_POINT_GROUP)
            )
            raise PluginError(
                f"no plugin named {', '.join(sorted(missing))} is installed "
                f"(installed: {', '.join(installed) or 'none'})",
                hint="check the spelling in 'plugins', or install the distribution providing it",
            )

    def register(self, plugin: object, name: str | None = None) -> None:
        """Register a plugin object directly (tests, embedding)."""
        self.manager.register(plugin, name=name)

    @property
    def engines(self) -> EngineRegistry:
        if self._registry is None:
            registry = EngineRegistry()
            # One call per hook implementation (not a bare 1:N hook call), so an error names
            # the plugin that caused it instead of stopping silently at the first exception.
            for impl in self.manager.hook.quiesce_register_engines.get_hookimpls():
                registry._current = impl.plugin_name
                try:
                    impl.function(registry=registry)
                except PluginError:
                    raise
                except Exception as exc:
                    raise PluginError(
                        f"plugin {impl.plugin_name!r} failed while registering its engines: {exc}"
                    ) from exc
            self._registry = registry
        return self._registry
