"""Helpers the test modules share (importable as ``helpers``: pyproject's pytest ``pythonpath``).

- :func:`wait_for`: poll a condition until it holds, or fail the test saying what never came.
- :func:`private_dir`: a root-owned 0700 directory under /run, removed at the end. quiesce
  trusts configs, scripts and secrets only in directories no one but root can write, every
  parent included; pytest's tmp_path is under the world-writable /tmp, which that refuses.
- :func:`trusted_python`: a Python interpreter quiesce will accept in a script's ``#!`` line.
- :func:`example_plugin_env`: this environment with the example plugin (tests/example_plugin)
  importable and no QUIESCE_RUNTIME_DIR/QUIESCE_RUN_ID leaking in from the caller.
- ``helpers.cli``: the real quiesce CLI driven from a test's own directory.
- ``helpers.mongodb``: probing and unlocking a MongoDB server a test locked.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

EXAMPLE_PLUGIN = Path(__file__).resolve().parents[1] / "example_plugin"


def example_plugin_env(base: dict[str, str] | None = None) -> dict[str, str]:
    """A copy of ``base`` (default: os.environ) for quiesce subprocesses that must find the
    example ``flock`` engine (its dist-info and package are on PYTHONPATH) and must not
    inherit a runtime dir or run id from whoever runs the tests."""
    env = dict(os.environ if base is None else base)
    env["PYTHONPATH"] = os.pathsep.join(
        [str(EXAMPLE_PLUGIN), *filter(None, [env.get("PYTHONPATH")])])
    env.pop("QUIESCE_RUNTIME_DIR", None)
    env.pop("QUIESCE_RUN_ID", None)
    return env


def wait_for(condition: Callable[[], Any], timeout: float = 60.0, what: str = "",
             *, interval: float = 0.05) -> Any:
    """The first truthy value of ``condition()``; AssertionError after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:g} s waiting for "
                                 f"{what or condition}")
        time.sleep(interval)


@contextlib.contextmanager
def private_dir(prefix: str = "quiesce-test-") -> Iterator[Path]:
    """A root-owned 0700 directory under /run (a root-only path), removed at the end."""
    path = Path(tempfile.mkdtemp(prefix=prefix, dir="/run"))
    os.chmod(path, 0o700)
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def trusted_python() -> str:
    """A Python interpreter that passes quiesce's trust check for a script's ``#!`` line.

    The test run's own interpreter is used when it qualifies; a checkout under a world-writable
    directory (CI may clone into /tmp) makes its .venv interpreter untrusted, exactly as it
    should, so the system's /usr/bin/python3 stands in for scripts that need only the stdlib.
    """
    import sys

    import pytest

    from quiesce.security import executable_problems

    for candidate in (sys.executable, "/usr/bin/python3"):
        if os.path.exists(candidate) and not executable_problems(candidate):
            return candidate
    pytest.skip(f"no Python interpreter that quiesce trusts as root: {sys.executable} sits in "
                "a directory others can write, and there is no root-owned /usr/bin/python3")
    raise AssertionError("unreachable")
