"""The pytest plugin: the engine-neutral fixtures, plus each engine plugin's own fixtures.

Engine plugins name their fixture modules through ``quiesce_register_fixtures(registry)``;
they are registered with pytest when a session starts. Importing this module stays cheap and
free of side effects: pytest loads it in every session of every project that has quiesce
installed, and engine plugins are loaded only in ``pytest_configure``.
"""

from __future__ import annotations

import importlib

import pytest

from quiesce.harness.testing.disks import *  # noqa: F403


class FixtureRegistry:
    """Module names of pytest plugins with an engine's fixtures."""

    def __init__(self) -> None:
        self.modules: list[str] = []
        self._current = ""

    def add(self, module: str) -> None:
        if module not in self.modules:
            self.modules.append(module)


def engine_fixture_modules() -> list[str]:
    from quiesce.plugins import Plugins

    plugins = Plugins()
    plugins.load_entry_points()
    registry = FixtureRegistry()
    plugins.fill("quiesce_register_fixtures", registry, "registering its fixtures")
    return registry.modules


def pytest_configure(config: pytest.Config) -> None:
    for name in engine_fixture_modules():
        if not config.pluginmanager.has_plugin(name):
            config.pluginmanager.register(importlib.import_module(name), name)
