"""A typed facade over pluggy's PluginManager: load plugins, collect what they register.

Every plugin is checked as it is registered: a function marked ``@hookimpl`` whose name is not
a hook of :mod:`quiesce.hookspecs` (pluggy's ``check_pending``), a hook function with an
argument the hook does not pass, and a ``quiesce_*`` function left without ``@hookimpl`` are
errors that name the plugin and the function. Each would otherwise be ignored in silence, and
an ignored engine turns an application-consistent backup into a crash-consistent one.
"""

from __future__ import annotations

import argparse
import difflib
import importlib.metadata
import inspect
import re
from collections.abc import Callable, Collection, Iterable, Iterator
from dataclasses import dataclass
from typing import Any

import pluggy

from quiesce import hookspecs
from quiesce.engine import EngineType
from quiesce.errors import PluginError

#: A plugin command's name: lower-case words joined by '-', like the built-in commands.
COMMAND_NAME = re.compile(r"^[a-z][a-z0-9]*(-[a-z0-9]+)*$")
COMMAND_NAME_MAX = 40

_DOCS = "see docs/plugins.md"


def hook_names() -> list[str]:
    """The hooks a plugin may implement (every function of :mod:`quiesce.hookspecs` marked as
    a hookspec)."""
    marker = f"{hookspecs.PROJECT}_spec"
    return sorted(name for name, value in vars(hookspecs).items()
                  if callable(value) and hasattr(value, marker))


class EngineRegistry:
    """Handed to ``quiesce_register_engines``: ``registry.add(EngineType(...))``.

    Refuses anything that is not an :class:`EngineType` and two engines with one name, naming
    the plugins involved.
    """

    def __init__(self) -> None:
        self._engines: dict[str, EngineType] = {}
        self._owner: dict[str, str] = {}
        self._current = "?"

    def add(self, engine: EngineType) -> None:
        if not isinstance(engine, EngineType):
            raise PluginError(
                f"plugin {self._current!r} registered {engine!r}, which is not an EngineType",
                hint="pass quiesce.engine.EngineType(...) to registry.add")
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
        """The name of the plugin that registered engine ``name``."""
        return self._owner[name]


@dataclass(frozen=True)
class Command:
    """A subcommand a plugin adds to the ``quiesce`` command line: ``quiesce <name> ...``.

    ``configure(parser)`` adds the command's arguments to its argparse parser; ``main(args)``
    runs it with the parsed arguments and returns the exit status. A
    :class:`quiesce.errors.QuiesceError` raised by ``main`` is printed with its fix (and as
    JSON on stdout when the command has a ``--json`` flag that is set), exit status 2, as
    for the built-in commands.
    """

    name: str
    help: str
    configure: Callable[[argparse.ArgumentParser], None]
    main: Callable[[argparse.Namespace], int]


class CommandRegistry:
    """Handed to ``quiesce_register_commands``: ``registry.add(Command(...))``.

    Refuses names that are not lower-case words joined by '-', the names of built-in commands
    (``reserved``) and two commands with one name, naming the plugins involved.
    """

    def __init__(self, reserved: Collection[str] = ()) -> None:
        self._commands: dict[str, Command] = {}
        self._owner: dict[str, str] = {}
        self._reserved = frozenset(reserved)
        self._current = "?"

    def add(self, command: Command) -> None:
        plugin = self._current
        if not isinstance(command, Command):
            raise PluginError(
                f"plugin {plugin!r} registered {command!r}, which is not a Command",
                hint="pass quiesce.plugins.Command(name, help, configure, main) to "
                     "registry.add")
        name = command.name
        if not (isinstance(name, str) and COMMAND_NAME.match(name)
                and len(name) <= COMMAND_NAME_MAX):
            raise PluginError(
                f"plugin {plugin!r} registered a command named {name!r}",
                hint=f"name it with lower-case words joined by '-' (at most "
                     f"{COMMAND_NAME_MAX} characters), e.g. 'restore-label'")
        if name in self._reserved:
            raise PluginError(
                f"plugin {plugin!r} registered the command {name!r}, which is a built-in "
                "command of quiesce",
                hint="give the plugin's command another name, e.g. prefixed with its engine")
        if name in self._commands:
            raise PluginError(
                f"command {name!r} is registered twice: by {self._owner[name]!r} and by "
                f"{plugin!r}",
                hint="uninstall one of the two distributions")
        for what, value in (("configure", command.configure), ("main", command.main)):
            if not callable(value):
                raise PluginError(f"plugin {plugin!r}: the {what} of command {name!r} is "
                                  f"{value!r}, not a function", hint=_DOCS)
        self._commands[name] = command
        self._owner[name] = plugin

    def get(self, name: str) -> Command:
        return self._commands[name]

    def names(self) -> list[str]:
        return sorted(self._commands)

    def __contains__(self, name: object) -> bool:
        return name in self._commands

    def __iter__(self) -> Iterator[Command]:
        return iter([self._commands[n] for n in self.names()])

    def owner(self, name: str) -> str:
        """The name of the plugin that registered command ``name``."""
        return self._owner[name]


class Plugins:
    """Loads plugins from the ``quiesce`` entry-point group (or given objects) exactly once."""

    def __init__(self) -> None:
        self.manager = pluggy.PluginManager(hookspecs.PROJECT)
        self.manager.add_hookspecs(hookspecs)
        self._registry: EngineRegistry | None = None

    def load_entry_points(self, only: Iterable[str] | None = None, *,
                          errors: list[PluginError] | None = None) -> None:
        """Import the plugins of the entry-point group; ``only`` limits which names load.

        A plugin that fails to import or to validate is an error naming it: a selected engine
        that silently disappears would turn an application-consistent backup into a
        crash-consistent one. With ``errors`` (a list), such failures are appended to it and
        the other plugins still load (for listing plugin commands, where one broken plugin
        must not hide the others' commands).
        """
        wanted = set(only) if only is not None else None
        found: set[str] = set()
        failed: set[str] = set()
        for ep in importlib.metadata.entry_points(group=hookspecs.ENTRY_POINT_GROUP):
            if wanted is not None and ep.name not in wanted:
                continue
            if self.manager.get_plugin(ep.name) is not None:
                found.add(ep.name)
                continue
            try:
                try:
                    plugin = ep.load()
                except Exception as exc:
                    raise PluginError(
                        f"plugin {ep.name!r} ({ep.value}) failed to import: {exc}",
                        hint="reinstall the distribution that provides it, or deselect it",
                    ) from exc
                self.register(plugin, name=ep.name)
            except PluginError as exc:
                if errors is None:
                    raise
                errors.append(exc)
                failed.add(ep.name)
                continue
            found.add(ep.name)
        if wanted is not None and (missing := wanted - found - failed):
            installed = sorted(
                ep.name for ep in importlib.metadata.entry_points(group=hookspecs.ENTRY_POINT_GROUP)
            )
            raise PluginError(
                f"no plugin named {', '.join(sorted(missing))} is installed "
                f"(installed: {', '.join(installed) or 'none'})",
                hint="check the spelling in 'plugins', or install the distribution providing it",
            )

    def register(self, plugin: object, name: str | None = None) -> None:
        """Register a plugin object (entry points, tests, embedding) and check its hooks.

        Raises PluginError naming the plugin and the function when a hook is unknown (a
        misspelled name), takes an argument its hook does not pass, or a ``quiesce_*``
        function lacks ``@hookimpl``; the plugin is then not registered.
        """
        label = name or getattr(plugin, "__name__", None) or repr(plugin)
        problem = _unmarked_hook(self.manager, plugin, label)
        if problem is not None:
            raise problem
        try:
            self.manager.register(plugin, name=name)
        except pluggy.PluginValidationError as exc:
            raise PluginError(f"plugin {label!r}: {_one_line(exc)}",
                              hint="a hook function takes only arguments its hook passes "
                                   f"(hooks and their arguments: {_DOCS})") from exc
        try:
            self.manager.check_pending()
        except pluggy.PluginValidationError as exc:
            error = _unknown_hook_error(self.manager, plugin, label, exc)
            self.manager.unregister(plugin)
            raise error from exc
        self._registry = None

    @property
    def engines(self) -> EngineRegistry:
        """Every engine the registered plugins add (computed once)."""
        if self._registry is None:
            registry = EngineRegistry()
            for plugin_name, function in self._impls("quiesce_register_engines"):
                registry._current = plugin_name
                _call(plugin_name, "registering its engines", function, registry)
            self._registry = registry
        return self._registry

    def commands(self, reserved: Collection[str] = (), *,
                 errors: list[PluginError] | None = None) -> CommandRegistry:
        """Every CLI command the registered plugins add; ``reserved`` are the built-in names.

        With ``errors``, a plugin whose hook fails is appended there (its commands are left
        out) instead of raising.
        """
        registry = CommandRegistry(reserved)
        for plugin_name, function in self._impls("quiesce_register_commands"):
            registry._current = plugin_name
            try:
                _call(plugin_name, "registering its commands", function, registry)
            except PluginError as exc:
                if errors is None:
                    raise
                errors.append(exc)
        return registry

    def fill(self, hook: str, registry: Any, doing: str) -> None:
        """Call every implementation of a registering ``hook`` with ``registry``, one plugin
        at a time (an error names the plugin); ``registry._current`` names the caller."""
        for plugin_name, function in self._impls(hook):
            registry._current = plugin_name
            _call(plugin_name, doing, function, registry)

    def _impls(self, hook: str) -> list[tuple[str, Callable[..., Any]]]:
        # One call per hook implementation (not a bare 1:N hook call), so an error names the
        # plugin that caused it instead of stopping silently at the first exception.
        caller = getattr(self.manager.hook, hook)
        return [(impl.plugin_name, impl.function) for impl in caller.get_hookimpls()]


def _call(plugin_name: str, doing: str, function: Callable[..., Any], registry: object) -> None:
    try:
        function(registry=registry)
    except PluginError:
        raise
    except Exception as exc:
        raise PluginError(f"plugin {plugin_name!r} failed while {doing}: {exc}") from exc


def _one_line(exc: BaseException) -> str:
    return "; ".join(line.strip() for line in str(exc).splitlines() if line.strip())


def _closest_hook(name: str) -> str:
    known = hook_names()
    match = difflib.get_close_matches(name, known, n=1, cutoff=0.6)
    if match:
        return f"did you mean {match[0]!r}? (the hooks are: {', '.join(known)})"
    return f"the hooks are: {', '.join(known)} ({_DOCS})"


def _unknown_hook_error(manager: pluggy.PluginManager, plugin: object, label: str,
                        exc: pluggy.PluginValidationError) -> PluginError:
    """pluggy's check_pending refusal as a PluginError naming the plugin and the hook."""
    unknown = [caller.name for caller in manager.get_hookcallers(plugin) or ()
               if not caller.has_spec()]
    if not unknown:
        match = re.search(r"unknown hook '([^']+)'", str(exc))
        unknown = [match.group(1)] if match else []
    if not unknown:
        return PluginError(f"plugin {label!r}: {_one_line(exc)}", hint=_DOCS)
    names = ", ".join(repr(n) for n in unknown)
    return PluginError(
        f"plugin {label!r} implements {names}, which is not a quiesce hook (a misspelled "
        "hook name would never be called)",
        hint=f"rename it: {_closest_hook(unknown[0])}")


def _unmarked_hook(manager: pluggy.PluginManager, plugin: object,
                   label: str) -> PluginError | None:
    """A ``quiesce_*`` function of the plugin without ``@hookimpl``, which pluggy would skip.

    Names starting with ``quiesce_`` are reserved for hook functions in a plugin object.
    """
    prefix = f"{hookspecs.PROJECT}_"
    known = set(hook_names())
    for name in sorted(dir(plugin)):
        if not name.startswith(prefix):
            continue
        value = inspect.getattr_static(plugin, name, None)
        if isinstance(value, staticmethod | classmethod):
            value = value.__func__
        if not inspect.isfunction(value):
            continue
        if manager.parse_hookimpl_opts(plugin, name) is not None:
            continue
        if name in known:
            return PluginError(
                f"plugin {label!r} defines {name} without @hookimpl, so quiesce would never "
                "call it",
                hint="decorate it with @quiesce.hookspecs.hookimpl")
        return PluginError(
            f"plugin {label!r} defines {name}, which is not a quiesce hook (names starting "
            f"with {prefix!r} are reserved for hooks)",
            hint=f"{_closest_hook(name)}; or rename a helper so it does not start with "
                 f"{prefix!r}")
    return None
