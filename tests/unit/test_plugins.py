"""The plugin facade: engines and commands come from hook implementations; every error
(a failing hook, a misspelled or unmarked hook, a duplicate) names the plugin."""

from __future__ import annotations

import re

import pluggy
import pytest

from quiesce.engine import EngineType
from quiesce.errors import PluginError
from quiesce.hookspecs import hookimpl
from quiesce.plugins import Command, CommandRegistry, Plugins, hook_names
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


# ------------------------------------------------------------------ hooks checked on register
class _Misspelled:
    """``quiesce_register_engine`` (no s): pluggy would keep it and never call it."""

    @hookimpl
    def quiesce_register_engine(self, registry):
        registry.add(_engine("never"))


class _Unmarked:
    """The right name, but no @hookimpl: pluggy does not even see it."""

    def quiesce_register_engines(self, registry):
        registry.add(_engine("never"))


class _UnknownUnmarked:
    def quiesce_register_engine(self, registry):
        registry.add(_engine("never"))


class _WrongArgument:
    @hookimpl
    def quiesce_register_engines(self, registery):
        registery.add(_engine("never"))


class _Helper:
    """Attributes that are not functions may use the prefix; so may any other name."""

    quiesce_version = "1.0"

    def register_engines(self, registry):
        raise AssertionError("not a hook, never called")

    @hookimpl
    def quiesce_register_engines(self, registry):
        registry.add(_engine("helper"))


def test_a_misspelled_hook_names_the_plugin_and_the_hook() -> None:
    plugins = Plugins()
    with pytest.raises(PluginError) as caught:
        plugins.register(_Misspelled(), name="typo-plugin")
    assert str(caught.value) == (
        "plugin 'typo-plugin' implements 'quiesce_register_engine', which is not a quiesce "
        "hook (a misspelled hook name would never be called)")
    assert caught.value.hint.startswith("rename it: did you mean 'quiesce_register_engines'?")
    assert isinstance(caught.value.__cause__, pluggy.PluginValidationError)
    # Refused plugins are not left half-registered: the manager still works without it.
    assert plugins.manager.get_plugin("typo-plugin") is None
    plugins.register(_One(), name="one-plugin")
    assert plugins.engines.names() == ["one"]


def test_a_hook_without_hookimpl_is_refused() -> None:
    with pytest.raises(PluginError, match=r"plugin 'bare' defines quiesce_register_engines "
                                          r"without @hookimpl") as caught:
        Plugins().register(_Unmarked(), name="bare")
    assert caught.value.hint == "decorate it with @quiesce.hookspecs.hookimpl"


def test_an_unmarked_misspelled_hook_is_refused() -> None:
    with pytest.raises(PluginError, match=r"defines quiesce_register_engine, which is not a "
                                          r"quiesce hook") as caught:
        Plugins().register(_UnknownUnmarked(), name="bare")
    assert "did you mean 'quiesce_register_engines'?" in caught.value.hint


def test_a_hook_argument_the_hook_does_not_pass_is_refused() -> None:
    plugins = Plugins()
    with pytest.raises(PluginError, match=r"plugin 'args'.*\{'registery'\}") as caught:
        plugins.register(_WrongArgument(), name="args")
    assert "takes only arguments its hook passes" in caught.value.hint
    assert plugins.manager.get_plugin("args") is None


def test_other_names_and_non_functions_are_left_alone() -> None:
    plugins = Plugins()
    plugins.register(_Helper(), name="helper")
    assert plugins.engines.names() == ["helper"]


def test_a_module_plugin_is_checked_too(tmp_path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "quiesce_typo_module.py").write_text(
        "from quiesce.hookspecs import hookimpl\n\n"
        "@hookimpl\n"
        "def quiesce_register_comands(registry):\n"
        "    pass\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    import quiesce_typo_module

    with pytest.raises(PluginError, match="'quiesce_register_comands', which is not a") as caught:
        Plugins().register(quiesce_typo_module, name="typo")
    assert "did you mean 'quiesce_register_commands'?" in caught.value.hint


def test_the_hook_names_are_the_hookspecs() -> None:
    assert hook_names() == ["quiesce_register_commands", "quiesce_register_drill_targets",
                            "quiesce_register_engines", "quiesce_register_fixtures"]


def test_the_bundled_plugins_pass_the_checks() -> None:
    plugins = Plugins()
    plugins.load_entry_points(only=["postgresql", "mysql", "mongodb"])
    assert plugins.engines.names() == ["mongodb", "mysql", "postgresql"]


# ------------------------------------------------------------------ commands
def _command(name: str) -> Command:
    return Command(name=name, help=f"the {name} command", configure=lambda parser: None,
                   main=lambda args: 0)


class _Commands:
    def __init__(self, *names: str) -> None:
        self.names = names

    @hookimpl
    def quiesce_register_commands(self, registry: CommandRegistry) -> None:
        for name in self.names:
            registry.add(_command(name))


def test_commands_from_every_plugin_with_their_owner() -> None:
    plugins = Plugins()
    plugins.register(_Commands("alpha", "beta-two"), name="first")
    plugins.register(_Commands("gamma"), name="second")
    registry = plugins.commands(reserved=["pre", "post"])
    assert registry.names() == ["alpha", "beta-two", "gamma"]
    assert [c.name for c in registry] == ["alpha", "beta-two", "gamma"]
    assert registry.owner("gamma") == "second"


def test_a_command_named_like_a_built_in_is_refused() -> None:
    plugins = Plugins()
    plugins.register(_Commands("post"), name="greedy")
    with pytest.raises(PluginError, match="plugin 'greedy' registered the command 'post', "
                                          "which is a built-in command"):
        plugins.commands(reserved=["pre", "post"])


def test_two_plugins_cannot_register_the_same_command() -> None:
    plugins = Plugins()
    plugins.register(_Commands("alpha"), name="first")
    plugins.register(_Commands("alpha"), name="second")
    with pytest.raises(PluginError, match="'alpha' is registered twice: by 'first' and by "
                                          "'second'"):
        plugins.commands()


@pytest.mark.parametrize("name", ["Upper", "with space", "-dash", "trailing-", "a__b", "",
                                  "x" * 41])
def test_a_badly_named_command_is_refused(name: str) -> None:
    plugins = Plugins()
    plugins.register(_Commands(name), name="odd")
    with pytest.raises(PluginError, match=f"plugin 'odd' registered a command named "
                                          f"{re.escape(repr(name))}"):
        plugins.commands()


def test_a_failing_command_hook_is_collected_when_asked() -> None:
    class Broken:
        @hookimpl
        def quiesce_register_commands(self, registry: CommandRegistry) -> None:
            raise RuntimeError("boom")

    plugins = Plugins()
    plugins.register(Broken(), name="broken")
    plugins.register(_Commands("alpha"), name="fine")
    errors: list[PluginError] = []
    assert plugins.commands(errors=errors).names() == ["alpha"]
    assert [str(e) for e in errors] == [
        "plugin 'broken' failed while registering its commands: boom"]
    with pytest.raises(PluginError, match="'broken' failed while registering its commands"):
        plugins.commands()
