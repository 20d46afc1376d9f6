"""pre starts the holder before its own checks (quiesce.hold.warmup): the holder learns the
deadline and the Azure declaration only through the go message, and a pre whose checks fail
stops the holder it started, which has touched nothing."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from types import SimpleNamespace

import pytest

from quiesce.commands import pre

# Stands in for the holder: waits for go on --go-fd and answers with what it got (or, with
# FAKE_HOLDER_SLEEP, sleeps first, like a holder still importing).
FAKE_HOLDER = r"""
import json, os, sys, time
argv = sys.argv[1:]
go_fd = int(argv[argv.index("--go-fd") + 1])
ready_fd = int(argv[argv.index("--ready-fd") + 1])
time.sleep(float(os.environ.get("FAKE_HOLDER_SLEEP", "0")))
data = b""
while not data.endswith(b"\n"):
    chunk = os.read(go_fd, 4096)
    if not chunk:
        sys.exit(0)
    data += chunk
os.write(ready_fd, json.dumps({"ok": True, "go": json.loads(data), "argv": argv}).encode()
         + b"\n")
"""


@pytest.fixture
def fake_holder(monkeypatch: pytest.MonkeyPatch) -> list[subprocess.Popen[bytes]]:
    started: list[subprocess.Popen[bytes]] = []
    real = pre._start_holder

    def start(argv: Sequence[str], ready_fd: int, *fds: int) -> subprocess.Popen[bytes]:
        assert list(argv[:4]) == [sys.executable, "-B", "-m", "quiesce.hold.holder"]
        process = real([sys.executable, "-c", FAKE_HOLDER, *argv[4:]], ready_fd, *fds)
        started.append(process)
        return process

    monkeypatch.setattr(pre, "_start_holder", start)
    return started


def test_the_deadline_and_the_azure_declaration_travel_with_go(
        fake_holder: list[subprocess.Popen[bytes]], tmp_path: Path) -> None:
    env: dict[str, str] = {}
    declared = pre.declare_azure_freeze(SimpleNamespace(fs_freeze=True), env)
    assert declared == env == {"QUIESCE_AZURE_FS_FREEZE": "true"}
    holder = pre._Starting(str(tmp_path / "rt"), "/etc/q.toml", "postgresql")
    cutoff = time.monotonic() + 30
    raw = holder.go(cutoff, declared)
    assert raw is not None
    answer = json.loads(raw)
    assert answer["go"] == {"go": True, "deadline_at": cutoff,
                            "environ": {"QUIESCE_AZURE_FS_FREEZE": "true"}}
    argv = answer["argv"]
    assert argv[argv.index("--config") + 1] == "/etc/q.toml"
    assert argv[argv.index("--plugins") + 1] == "postgresql"
    assert "--deadline-at" not in argv  # the deadline is known only once pre's checks passed
    assert fake_holder[0].wait(30) == 0


def test_a_runners_declaration_wins_and_nothing_is_handed_over() -> None:
    env = {"QUIESCE_FREEZE_MOUNTS": '{"run_id": "x", "mounts": []}'}
    assert pre.declare_azure_freeze(SimpleNamespace(fs_freeze=True), env) == {}
    assert "QUIESCE_AZURE_FS_FREEZE" not in env


def test_failed_checks_stop_the_started_holder(
        fake_holder: list[subprocess.Popen[bytes]], monkeypatch: pytest.MonkeyPatch,
        tmp_path: Path) -> None:
    from quiesce.errors import ConfigError

    monkeypatch.setenv("FAKE_HOLDER_SLEEP", "60")  # still "importing": never reads the pipe
    args = SimpleNamespace(runtime_dir=str(tmp_path / "rt"), plugins=None,
                           config=str(tmp_path / "missing.toml"), azure_config=None,
                           deadline=None, json=False)
    started = time.monotonic()
    with pytest.raises(ConfigError):
        pre._main(args, started)  # type: ignore[arg-type]
    assert len(fake_holder) == 1
    process = fake_holder[0]
    assert process.returncode is not None  # killed and reaped, not left to finish its sleep
    assert time.monotonic() - started < 30
    assert not (tmp_path / "rt").exists()


def test_a_holder_that_dies_before_go_is_reported(
        fake_holder: list[subprocess.Popen[bytes]], tmp_path: Path) -> None:
    holder = pre._Starting(str(tmp_path / "rt"), "/etc/q.toml", None)
    holder.process.kill()
    holder.process.wait(30)
    # go to a dead holder: no exception (EPIPE), just EOF on the ready pipe
    assert holder.go(time.monotonic() + 10, {}) == b""


def test_the_plugin_list_is_parsed_like_the_settings_do(
        fake_holder: list[subprocess.Popen[bytes]], tmp_path: Path) -> None:
    """pre hands --plugins to the holder as given; the holder reads it with the settings' own
    parser, so both mean the same list."""
    from quiesce.settings import parse_plugin_list

    holder = pre._Starting(str(tmp_path / "rt"), "/etc/q.toml", " mysql , postgresql,,")
    raw = holder.go(time.monotonic() + 30, {})
    assert raw is not None
    argv = json.loads(raw)["argv"]
    assert parse_plugin_list(argv[argv.index("--plugins") + 1]) == ["mysql", "postgresql"]
    assert fake_holder[0].wait(30) == 0


def test_pre_starts_the_holder_before_it_imports_the_settings() -> None:
    """The point of the warm-up: nothing slow before the holder is started."""
    code = ("import sys\nfrom quiesce.commands import pre\n"
            "class Stop(Exception): pass\n"
            "def start(*a, **k):\n"
            "    print(sorted(m for m in sys.modules if m.startswith(('quiesce.settings',"
            " 'pluggy', 'importlib.metadata', 'psycopg', 'pymysql'))))\n"
            "    raise Stop\n"
            "pre._Starting = start\n"
            "import argparse\n"
            "args = argparse.Namespace(runtime_dir='/run/x-test', plugins=None, config='/x')\n"
            "try:\n    pre._main(args, 0.0)\nexcept Stop:\n    pass\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True, timeout=60, env={**os.environ, "PYTHONPATH": os.pathsep
                                                      .join(sys.path)}).stdout
    assert out.strip() == "[]"
