"""pre starts the holder through the scope decision: the wrapped argv runs, and the readiness
pipe (pass_fds) still reaches the holder through a systemd-run that execs in place."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

from quiesce import scope
from quiesce.commands import pre


def _fake_systemd_run(tmp_path: Path) -> Path:
    """Behaves like 'systemd-run --scope': records its arguments, then execs the command."""
    script = tmp_path / "systemd-run"
    script.write_text(
        "#!/bin/sh\n"
        f'printf "%s\\n" "$@" > {tmp_path}/args\n'
        'while [ "$1" != "--" ]; do shift; done\nshift\nexec "$@"\n')
    script.chmod(0o700)
    return script


@pytest.mark.parametrize("wrapped", [True, False])
def test_the_holder_starts_through_the_scope_decision(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, wrapped: bool) -> None:
    fake = _fake_systemd_run(tmp_path)

    def decide(argv: list[str], unit: str, **_: object) -> scope.ScopeDecision:
        wrapped_argv = (str(fake), "--scope", f"--unit={unit}", "--collect", "--quiet", "--",
                        *argv)
        return scope.ScopeDecision(argv=tuple(wrapped_argv) if wrapped else tuple(argv),
                                   wrapped=wrapped, reason="test", unit=unit)

    monkeypatch.setattr(scope, "in_own_scope", decide)
    read_fd, write_fd = os.pipe()
    argv = [sys.executable, "-c",
            f"import os; os.write({write_fd}, b'ready\\n')"]
    try:
        child = pre._start_holder(argv, write_fd)
    finally:
        os.close(write_fd)
    try:
        assert os.read(read_fd, 100) == b"ready\n"  # the inherited pipe reached the holder
    finally:
        os.close(read_fd)
    assert child.wait(30) == 0
    args_file = tmp_path / "args"
    if wrapped:
        recorded = args_file.read_text().splitlines()
        assert recorded[0] == "--scope" and recorded[1].startswith("--unit=quiesce-holder-")
    else:
        assert not args_file.exists()


def test_pre_declares_azures_freeze_unless_a_runner_declared_its_own() -> None:
    from types import SimpleNamespace

    env: dict[str, str] = {}
    pre.declare_azure_freeze(SimpleNamespace(fs_freeze=True), env)
    assert env == {"QUIESCE_AZURE_FS_FREEZE": "true"}
    env = {}
    pre.declare_azure_freeze(SimpleNamespace(fs_freeze=False), env)
    assert env == {"QUIESCE_AZURE_FS_FREEZE": "false"}
    env = {"QUIESCE_FREEZE_MOUNTS": '{"run_id": "x", "mounts": []}'}
    pre.declare_azure_freeze(SimpleNamespace(fs_freeze=True), env)
    assert "QUIESCE_AZURE_FS_FREEZE" not in env


def test_the_azure_deadline_is_the_timeout_less_the_poll_and_start_up() -> None:
    from types import SimpleNamespace

    azure = SimpleNamespace(timeout_seconds=30, poll_seconds=None)
    assert pre.deadline_seconds(60, None, azure) == 30 - 5 - 1
    assert pre.deadline_seconds(10, None, azure) == 10
    assert pre.deadline_seconds(60, 7.5, azure) == 7.5
    azure = SimpleNamespace(timeout_seconds=5000, poll_seconds=1)
    assert pre.deadline_seconds(3000, None, azure) == 1800 - 1 - 1  # Azure caps at 1800
    with pytest.raises(Exception, match="leaves no time"):
        pre.deadline_seconds(60, None, SimpleNamespace(timeout_seconds=3, poll_seconds=3))
