"""quiesce.scope: when the holder, guardian and freeze watchdog get a systemd scope of their
own, decided from facts given as parameters (these machines do not run systemd as PID 1)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from quiesce.scope import in_own_scope, scope_decision, scope_unit_name

ARGV = ["/usr/bin/python3", "-I", "/opt/q/watchdog.py", "--timeout", "30.0", "5"]
UNIT = "quiesce-watchdog-42.scope"


def decide(**facts: object) -> object:
    given = {"systemd_booted": True, "pid1_name": "systemd\n",
             "systemd_run": "/usr/bin/systemd-run", "euid": 0, **facts}
    return scope_decision(ARGV, UNIT, **given)  # type: ignore[arg-type]


def test_systemd_as_pid1_wraps_the_argv_in_a_collected_quiet_scope() -> None:
    decision = decide()
    assert decision.wrapped and decision.unit == UNIT
    assert decision.argv == ("/usr/bin/systemd-run", "--scope", f"--unit={UNIT}", "--collect",
                             "--quiet", "--", *ARGV)
    assert decision.reason.startswith("systemd is PID 1")


@pytest.mark.parametrize(("facts", "reason"), [
    ({"systemd_booted": False, "pid1_name": "tini"}, "systemd is not PID 1 here (PID 1 is "
                                                       "'tini')"),
    ({"systemd_booted": False, "pid1_name": None}, "systemd is not PID 1 here (PID 1 could "
                                                     "not be identified)"),
    # systemd's binary as PID 1 without the booted marker (e.g. a container's init stub).
    ({"systemd_booted": False}, "systemd is not PID 1 here (/run/systemd/system does not "
                                "exist)"),
    # The marker directory left by a host bind mount while PID 1 is something else.
    ({"pid1_name": "process_api"}, "systemd is not PID 1 here (PID 1 is 'process_api')"),
    ({"systemd_run": None}, "systemd is PID 1 but systemd-run was not found"),
    ({"euid": 1000}, "quiesce runs as uid 1000, not root"),
])
def test_otherwise_the_argv_is_unchanged_with_the_reason(facts: dict[str, object],
                                                         reason: str) -> None:
    decision = decide(**facts)
    assert not decision.wrapped and decision.unit is None
    assert decision.argv == tuple(ARGV)
    assert decision.reason.startswith(reason), decision.reason


def test_unit_names_are_made_valid_and_checked() -> None:
    assert scope_unit_name("holder", "run 2026/11/30 #1-77") == \
        "quiesce-holder-run_2026_11_30__1-77.scope"
    with pytest.raises(ValueError, match="not a valid scope unit name"):
        scope_decision(ARGV, "quiesce holder.service", systemd_booted=True,
                       pid1_name="systemd", systemd_run="/usr/bin/systemd-run", euid=0)
    with pytest.raises(ValueError, match="argv is empty"):
        scope_decision([], UNIT, systemd_booted=True, pid1_name="systemd",
                       systemd_run="/usr/bin/systemd-run", euid=0)


def test_in_own_scope_reads_the_facts_from_the_paths_it_is_given(tmp_path: Path) -> None:
    run_dir = tmp_path / "run-systemd-system"
    comm = tmp_path / "comm"
    bindir = tmp_path / "bin"
    bindir.mkdir()
    tool = bindir / "systemd-run"
    tool.write_text("#!/bin/sh\n")
    tool.chmod(0o755)

    def probe(euid: int = 0) -> object:
        return in_own_scope(ARGV, UNIT, run_dir=str(run_dir), pid1_comm=str(comm),
                            search_path=str(bindir), euid=euid)

    assert probe().reason.startswith("systemd is not PID 1 here (PID 1 could not be")
    comm.write_text("systemd\n")
    assert probe().reason.startswith("systemd is not PID 1 here (/run/systemd/system")
    run_dir.mkdir()
    decision = probe()
    assert decision.wrapped and decision.argv[0] == str(tool)
    assert not probe(euid=1000).wrapped
    tool.unlink()
    assert probe().reason.startswith("systemd is PID 1 but systemd-run was not found")


def test_this_machine_is_decided_without_error() -> None:
    """Whatever this machine runs as PID 1, the probe agrees with its facts."""
    decision = in_own_scope(ARGV, UNIT)
    booted = os.path.isdir("/run/systemd/system")
    try:
        pid1 = Path("/proc/1/comm").read_text().strip()
    except OSError:
        pid1 = ""
    if not (booted and pid1 == "systemd"):
        assert not decision.wrapped
        assert decision.reason.startswith("systemd is not PID 1 here")
    else:
        assert decision.wrapped or os.geteuid() != 0 or "systemd-run was not found" in \
            decision.reason
