"""The plugin facade: engines come from hook implementations; errors name the plugin."""

from __future__ import annotations

import pytest

from quiesce.engine import EngineType
from quiesce.errors import PluginError
from quiesce.hookspecs import hookimpl
from quiesce.plugins import Plugins
from quiesce.schema import Table


def _engine(name: str) -> EngineType:
    return EngineType(name=name, schema=Table({}), factory=lambda settings: None)  # type: ignore[arg-type,return-value]


class _One:
    @hookimpl
    def quiesce_register_engines(self, registry):
        registry.add(_engine("one"))


class _Two:
    @hookimpl
    def quiesce_register_engines(self, registry):
        registry.add(_engine("two"))


class _Broken:
    @hookimpl
    def quiesce_register_engines(self, registry):
        raise RuntimeError("boom")


class _Duplicate:
    @hookimpl
    def quiesce_register_engines(self, registry):
        registry.add(_engine("one"))


class _NotAnEngine:
    @hookimpl
    def quiesce_register_engines(self, registry):
        registry.add("postgresql")


def test_engines_from_every_plugin() -> None:
    plugins = Plugins()
    plugins.register(_One(), name="one-plugin")
    plugins.register(_Two(), name="two-plugin")
    assert plugins.engines.names() == ["one", "two"]
    assert plugins.engines.owner("two") == "two-plugin"


def test_a_failing_plugin_is_named() -> None:
    plugins = Plugins()
    plugins.register(_One(), name="fine")
    plugins.register(_Broken(), name="broken")
    with pytest.raises(PluginError, match=r"'broken'.*boom"):
        _ = plugins.engines


def test_two_plugins_cannot_register_the_same_engine() -> None:
    plugins = Plugins()
    plugins.register(_One(), name="first")
    plugins.register(_Duplicate(), name="second")
    with pytest.raises(PluginError, match="registered twice"):
        _ = plugins.engines


def test_registering_something_else_is_refused() -> None:
    plugins = Plugins()
    plugins.register(_NotAnEngine(), name="odd")
    with pytest.raises(PluginError, match="not an EngineType"):
        _ = plugins.engines


def test_unknown_plugin_name_lists_installed_ones() -> None:
    with pytest.raises(PluginError, match="no plugin named nosuchengine"):
        Plugins().load_entry_points(only=["nosuchengine"])


def test_plugin_errors_map_to_incorrect_pluginhost_file() -> None:
    assert PluginError("x").code is not None
    assert PluginError("x").code.text == "IncorrectPluginhostFile"
    assert PluginError("x").code.number == 304
