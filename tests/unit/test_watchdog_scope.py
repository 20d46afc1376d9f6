"""The freeze watchdog's spawn goes through quiesce.scope: wrapped in ``systemd-run --scope``
when the decision says so, and started plainly again when systemd-run fails.

These machines do not run systemd as PID 1, so the decision is forced and ``systemd-run`` is
a stand-in script that does what the real ``--scope`` mode does with its process: it checks
its options and ``exec``\\ s the command in place. That shows the watchdog's protocol (the
inherited directory descriptor, the ready line on stdout, the control socket on stdin) works
through the wrapper. Nothing is frozen: the watchdog is told "done" and exits.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence
from pathlib import Path

import pytest

import quiesce.scope as scope_module
from quiesce.freezing.freeze import _WatchdogProcess
from quiesce.scope import ScopeDecision

# A stand-in for systemd-run --scope: refuses anything but the options quiesce passes, records
# the unit name, then execs the command in place (same pid, same descriptors).
FAKE_SYSTEMD_RUN = """#!/bin/sh
[ "$1" = --scope ] || { echo "unexpected $1" >&2; exit 1; }
case "$2" in --unit=quiesce-watchdog-*.scope) ;; *) echo "bad unit $2" >&2; exit 1 ;; esac
[ "$3 $4 $5" = "--collect --quiet --" ] || { echo "unexpected $3 $4 $5" >&2; exit 1; }
echo "$2" > "{log}"
shift 5
exec "$@"
"""

FAILING_SYSTEMD_RUN = """#!/bin/sh
echo "Failed to connect to bus: No such file or directory" >&2
exit 1
"""


@pytest.fixture
def dir_fd(tmp_path: Path) -> Iterator[int]:
    fd = os.open(tmp_path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        yield fd
    finally:
        os.close(fd)


def force_scope(monkeypatch: pytest.MonkeyPatch, tool: Path) -> None:
    def decide(argv: Sequence[str], unit: str, **_: object) -> ScopeDecision:
        return scope_module.scope_decision(argv, unit, systemd_booted=True,
                                           pid1_name="systemd", systemd_run=str(tool), euid=0)

    monkeypatch.setattr(scope_module, "in_own_scope", decide)


def write_tool(path: Path, text: str) -> Path:
    path.write_text(text)
    path.chmod(0o755)
    return path


def test_the_watchdog_starts_through_systemd_run_scope(tmp_path: Path, dir_fd: int,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    log = tmp_path / "unit"
    tool = write_tool(tmp_path / "systemd-run", FAKE_SYSTEMD_RUN.replace("{log}", str(log)))
    force_scope(monkeypatch, tool)
    watchdog = _WatchdogProcess([dir_fd], 30.0)
    watchdog.start()  # raises FreezeError unless the watchdog said "R" through the wrapper
    try:
        assert watchdog.scope_reason.startswith("systemd is PID 1: started in its own scope")
        assert log.read_text().startswith("--unit=quiesce-watchdog-")
        pid = watchdog.pid
        assert pid is not None
        # exec in place: the process we started is the watchdog itself, not a shell.
        assert b"watchdog" in Path(f"/proc/{pid}/cmdline").read_bytes()
    finally:
        assert watchdog.stand_down() is False  # told "done": it had not fired
    assert watchdog.returncode == 0


def test_a_failing_systemd_run_falls_back_to_a_plain_start(tmp_path: Path, dir_fd: int,
                                                           monkeypatch: pytest.MonkeyPatch,
                                                           ) -> None:
    tool = write_tool(tmp_path / "systemd-run", FAILING_SYSTEMD_RUN)
    force_scope(monkeypatch, tool)
    watchdog = _WatchdogProcess([dir_fd], 30.0)
    watchdog.start()
    try:
        assert watchdog.scope_reason.startswith("systemd-run failed (")
        assert "Failed to connect to bus" in watchdog.scope_reason
        assert watchdog.scope_reason.endswith("started in the caller's cgroup")
        assert watchdog.pid is not None
    finally:
        assert watchdog.stand_down() is False
    assert watchdog.returncode == 0


def test_where_systemd_is_not_pid1_the_reason_is_kept(dir_fd: int,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    def decide(argv: Sequence[str], unit: str, **_: object) -> ScopeDecision:
        return scope_module.scope_decision(argv, unit, systemd_booted=False, pid1_name="init",
                                           systemd_run=None, euid=0)

    monkeypatch.setattr(scope_module, "in_own_scope", decide)
    watchdog = _WatchdogProcess([dir_fd], 30.0)
    watchdog.start()
    try:
        assert watchdog.scope_reason == "systemd is not PID 1 here (PID 1 is 'init')"
    finally:
        watchdog.stand_down()
