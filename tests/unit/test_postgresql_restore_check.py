"""quiesce restore-check on hand-built data directories: read-only, problems in order, exits.

(The WAL checks against real WAL run in tests/integration/test_postgresql_restore.py and in
the drill.)
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from helpers.pg_control import control_bytes
from quiesce_postgresql.checklist import check_restored, parse_settings


def run_check(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "quiesce", "restore-check", *args],
                          capture_output=True, text=True, timeout=60, check=False)


def tree_digest(root: Path) -> dict[str, str]:
    out = {}
    for path in sorted(root.rglob("*")):
        st = path.lstat()
        key = str(path.relative_to(root))
        if path.is_symlink():
            out[key] = "-> " + os.readlink(path)
        elif path.is_file():
            out[key] = hashlib.sha256(path.read_bytes()).hexdigest() + f" {st.st_mode:o}"
        else:
            out[key] = f"dir {st.st_mode:o}"
    return out


@pytest.fixture
def copy(tmp_path: Path) -> Path:
    """A restored copy with everything wrong a DBA meets: a stale pid file, config kept
    elsewhere, recovery.signal without restore_command, a dangling pg_wal link."""
    d = tmp_path / "restored"
    (d / "global").mkdir(parents=True)
    (d / "PG_VERSION").write_text("15\n")
    (d / "global" / "pg_control").write_bytes(control_bytes(state=6))
    (d / "pg_wal").symlink_to(tmp_path / "no-such-wal-disk")
    dead = subprocess.Popen(["true"])
    dead.wait()
    (d / "postmaster.pid").write_text(f"{dead.pid}\n/var/lib/postgresql/15/main\n")
    (d / "recovery.signal").write_text("")
    (d / "postgresql.auto.conf").write_text("archive_mode = 'on'  # copied\n")
    d.chmod(0o700)
    if os.geteuid() == 0:
        os.chown(d, 65534, 65534)  # not root-owned: that check stays quiet
    return d


def test_problems_are_listed_with_their_fixes_in_order_and_nothing_changes(copy: Path) -> None:
    before = tree_digest(copy.parent)
    out = run_check(str(copy))
    assert out.returncode == 1, out.stdout + out.stderr
    assert tree_digest(copy.parent) == before  # read only
    text = out.stdout
    assert "PROBLEM  postmaster.pid" in text
    assert "PROBLEM  configuration: postgresql.conf (and pg_hba.conf" in text
    assert "PROBLEM  pg_wal:" in text and "no-such-wal-disk, which does not exist" in text
    assert "PROBLEM  recovery: recovery.signal is present but restore_command is not set" in text
    assert "note     archiving: archive_mode is on" in text
    steps = text.split("what to do, in order:")[1]
    order = [steps.index(s) for s in (f"rm {copy}/postmaster.pid", "config_file=",
                                      "ln -sfn", "set restore_command", "start the server",
                                      "pg_amcheck")]
    assert order == sorted(order)


def test_json_output(copy: Path) -> None:
    out = run_check("--json", str(copy))
    assert out.returncode == 1
    doc = json.loads(out.stdout)
    assert doc["ok"] is False
    problems = [c["name"] for c in doc["checks"] if c["status"] == "problem"]
    assert problems == ["postmaster.pid", "configuration", "pg_wal", "recovery"]
    assert doc["steps"][0] == f"rm {copy}/postmaster.pid"


def test_not_a_data_dir_is_bad_usage(tmp_path: Path) -> None:
    out = run_check(str(tmp_path))
    assert out.returncode == 2
    assert "not a PostgreSQL data directory (no PG_VERSION)" in out.stderr
    out = run_check()
    assert out.returncode == 2


def test_a_damaged_pg_control_is_a_problem(copy: Path) -> None:
    (copy / "global" / "pg_control").write_bytes(b"\0" * 8192)
    checklist = check_restored(copy)
    (item,) = [i for i in checklist.items if i.name == "pg_control"]
    assert item.status == "problem" and "fails its CRC check" in item.text


def test_postgresql_conf_syntax() -> None:
    text = ("restore_command = 'cp /arch/%f \"%p\"' # fetch\n"
            "primary_conninfo='host=a application_name=''x'''\n"
            "archive_mode on\n#restore_command = 'ignored'\n  recovery_target_lsn = '0/3'\n")
    assert parse_settings(text) == {"restore_command": 'cp /arch/%f "%p"',
                                    "primary_conninfo": "host=a application_name='x'",
                                    "archive_mode": "on", "recovery_target_lsn": "0/3"}
