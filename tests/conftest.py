"""Shared test configuration. Integration tests need root for loop devices and FIFREEZE."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        if "/integration/" in str(item.fspath):
            item.add_marker(pytest.mark.integration)


@pytest.fixture
def require_root() -> None:
    if os.geteuid() != 0:
        pytest.skip("needs root: loop devices, mount and FIFREEZE are root-only")


@pytest.fixture
def quiesce_cmd() -> list[str]:
    """argv prefix running the installed quiesce CLI with this interpreter."""
    return [sys.executable, "-m", "quiesce"]
