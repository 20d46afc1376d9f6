"""Plugin commands through the real CLI: the example plugin's ``flock-probe`` runs as
``python -m quiesce flock-probe``; plugins are loaded only for a command that is not built in.

A canary plugin (an entry point whose import writes a line to a file) shows which commands
import plugins at all; it can also be made to fail its import.
"""

from __future__ import annotations

import fcntl
import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

EXAMPLE = Path(__file__).resolve().parent.parent / "example_plugin"

CANARY = '''\
import os

with open(os.environ["QUIESCE_TEST_CANARY"], "a", encoding="ascii") as handle:
    handle.write("imported\\n")
if os.environ.get("QUIESCE_TEST_CANARY_FAIL"):
    raise ImportError("the canary fails on purpose")
'''


@pytest.fixture
def canary(tmp_path: Path) -> Path:
    """A directory holding the canary plugin, found through its entry point like any other."""
    site = tmp_path / "site"
    info = site / "quiesce_canary-0.1.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: quiesce-canary\n"
                                   "Version: 0.1\n")
    (info / "entry_points.txt").write_text("[quiesce]\ncanary = quiesce_canary\n")
    (site / "quiesce_canary.py").write_text(CANARY)
    return site


@pytest.fixture
def runtime_dir(tmp_path: Path) -> Path:
    path = tmp_path / "rt"
    path.mkdir(mode=0o700)
    return path


def run(canary: Path, *argv: str, fail: bool = False) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(EXAMPLE), str(canary)])
    env["QUIESCE_TEST_CANARY"] = str(canary / "imports.log")
    env.pop("QUIESCE_TEST_CANARY_FAIL", None)
    if fail:
        env["QUIESCE_TEST_CANARY_FAIL"] = "1"
    return subprocess.run([sys.executable, "-m", "quiesce", *argv], capture_output=True,
                          text=True, timeout=60, check=False, env=env)


def imports(canary: Path) -> int:
    log = canary / "imports.log"
    return len(log.read_text().splitlines()) if log.exists() else 0


@pytest.fixture
def locked(tmp_path: Path) -> Iterator[Path]:
    """A file this process holds an flock() on, for the probe to find."""
    path = tmp_path / "app.lock"
    path.write_text("")
    fd = os.open(path, os.O_RDWR)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield path
    finally:
        os.close(fd)


def test_the_plugin_command_runs(canary: Path, tmp_path: Path) -> None:
    free = tmp_path / "free.lock"
    free.write_text("")
    out = run(canary, "flock-probe", str(free))
    assert (out.returncode, out.stdout, out.stderr) == (0, f"{free}: free\n", "")
    out = run(canary, "flock-probe", str(free), "--json")
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout) == {"path": str(free), "locked": False}


def test_the_plugin_command_sees_a_held_lock(canary: Path, locked: Path) -> None:
    out = run(canary, "flock-probe", "--json", str(locked))
    assert out.returncode == 1, out.stderr
    assert json.loads(out.stdout) == {"path": str(locked), "locked": True}


def test_a_plugin_commands_error_is_reported_like_a_built_in_ones(canary: Path,
                                                                   tmp_path: Path) -> None:
    missing = tmp_path / "missing.lock"
    out = run(canary, "flock-probe", str(missing))
    assert out.returncode == 2
    assert out.stderr == (f"quiesce flock-probe: cannot open {missing}: No such file or "
                          "directory\n  fix: give the path of an existing file\n")
    out = run(canary, "flock-probe", "--json", str(missing))
    assert out.returncode == 2
    assert json.loads(out.stdout)["error"]["hint"] == "give the path of an existing file"


def test_help_lists_plugin_commands(canary: Path) -> None:
    out = run(canary, "--help")
    assert out.returncode == 0, out.stderr
    assert "flock-probe" in out.stdout
    assert "say whether a file is flock()ed by another process" in out.stdout
    out = run(canary, "flock-probe", "--help")
    assert out.returncode == 0, out.stderr
    assert "the file a [[flock]] section locks" in out.stdout


def test_pre_post_and_status_load_no_plugin(canary: Path, runtime_dir: Path,
                                            tmp_path: Path) -> None:
    rt = str(runtime_dir)
    status = run(canary, "status", "--runtime-dir", rt)
    assert status.returncode == 0, status.stderr
    post = run(canary, "post", "--runtime-dir", rt)
    assert "no hold is active" in post.stderr
    pre = run(canary, "pre", "--config", str(tmp_path / "none.toml"), "--runtime-dir", rt)
    assert "no such file" in pre.stderr  # refused before any engine was looked for
    assert imports(canary) == 0
    # The canary itself works: a plugin command loads every plugin, once.
    out = run(canary, "flock-probe", str(canary / "quiesce_canary.py"))
    assert out.returncode == 0, out.stderr
    assert imports(canary) == 1


def test_a_broken_plugin_hides_only_its_own_commands(canary: Path, tmp_path: Path) -> None:
    target = tmp_path / "free.lock"
    target.write_text("")
    out = run(canary, "flock-probe", str(target), fail=True)
    assert (out.returncode, out.stderr) == (0, "")
    # Asked for a command no plugin gave, the broken plugin is named: it may be the reason.
    out = run(canary, "canary-command", fail=True)
    assert out.returncode == 2
    assert ("quiesce: plugin 'canary' (quiesce_canary) failed to import: the canary fails on "
            "purpose\n") in out.stderr
    assert "invalid choice: 'canary-command'" in out.stderr
