"""Shared test configuration. Integration tests need root for loop devices and FIFREEZE."""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from helpers import private_dir

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


@pytest.fixture
def root_dir() -> Iterator[Path]:
    """A root-owned 0700 directory under /run, removed at the end: quiesce trusts configs,
    scripts and secrets only where no one but root can write (pytest's tmp_path is under the
    world-writable /tmp, which it refuses by design)."""
    if os.geteuid() != 0:
        pytest.skip("needs root: quiesce trusts configs, scripts and secrets only in "
                    "root-owned directories (this one is made under /run)")
    with private_dir() as path:
        yield path
