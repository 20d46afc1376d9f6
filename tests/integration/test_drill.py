"""`quiesce drill` end to end: real servers, real loop disks, real `quiesce run` cycles.

Every test runs the CLI as a subprocess with its own QUIESCE_DRILL_DIR and checks afterwards
that nothing is left: no mount, loop device, server/holder process, runtime or work dir.
"""

from __future__ import annotations

import glob
import json
import os
import shutil
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

pytestmark = pytest.mark.usefixtures("require_root")

DRILL_TIMEOUT = 900


def _have_postgres() -> bool:
    return bool(glob.glob("/usr/lib/postgresql/*/bin/initdb")) or bool(shutil.which("initdb"))


def _have_mariadb() -> bool:
    return any(os.access(p, os.X_OK) for p in ("/usr/sbin/mariadbd", "/usr/sbin/mysqld")) or \
        bool(shutil.which("mariadbd"))


needs_pg = pytest.mark.skipif(not _have_postgres(),
                              reason="no PostgreSQL server binaries (apt-get install postgresql)")
needs_mariadb = pytest.mark.skipif(not _have_mariadb(),
                                   reason="no MariaDB server (apt-get install mariadb-server)")


def _leftovers(base: Path) -> dict[str, Any]:
    """What a drill under ``base`` could leave behind, as seen by the whole machine."""
    key = str(base)
    with open("/proc/self/mountinfo", encoding="utf-8") as fh:
        mounts = [line.split()[4] for line in fh if key in line]
    loops = [line for line in subprocess.run(["losetup", "-a"], capture_output=True, text=True,
                                             check=False).stdout.splitlines() if key in line]
    procs = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) == os.getpid():
            continue
        try:
            with open(f"/proc/{entry}/cmdline", "rb") as fh:
                cmd = fh.read().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if key in cmd:
            procs.append(f"{entry}: {cmd[:200]}")
    return {"mounts": mounts, "loops": loops, "procs": procs, "base_exists": base.exists()}


@pytest.fixture
def drill_base() -> Iterator[Path]:
    base = Path(f"/var/lib/quiesce-drill-test-{uuid.uuid4().hex[:8]}")
    runtime_before = set(glob.glob("/run/quiesce-drill-*"))
    yield base
    left = _leftovers(base)
    runtime_after = set(glob.glob("/run/quiesce-drill-*")) - runtime_before
    # Clean up whatever a failing test left, so the machine stays usable, then judge.
    for mount in left["mounts"]:
        subprocess.run(["umount", "-l", mount], check=False)
    for line in left["loops"]:
        subprocess.run(["losetup", "-d", line.split(":")[0]], check=False)
    shutil.rmtree(base, ignore_errors=True)
    assert left == {"mounts": [], "loops": [], "procs": [], "base_exists": False}, left
    assert not runtime_after, f"runtime dirs left: {runtime_after}"


def run_drill(base: Path, *args: str, env: dict[str, str] | None = None,
              timeout: float = DRILL_TIMEOUT) -> subprocess.CompletedProcess[str]:
    full_env = {**os.environ, "QUIESCE_DRILL_DIR": str(base), **(env or {})}
    return subprocess.run([sys.executable, "-m", "quiesce", "drill", *args], env=full_env,
                          capture_output=True, text=True, timeout=timeout, check=False)


def _json(done: subprocess.CompletedProcess[str]) -> dict[str, Any]:
    try:
        return json.loads(done.stdout)
    except json.JSONDecodeError:
        pytest.fail(f"stdout is not exactly one JSON document (exit {done.returncode}):\n"
                    f"{done.stdout[-2000:]}\nstderr:\n{done.stderr[-3000:]}")


def _failed(doc: dict[str, Any]) -> list[list[str]]:
    return [[name for name, c in cycle["checks"].items() if not c["ok"]]
            for cycle in doc["cycles"]]


@needs_pg
def test_postgresql_quiesced_loop_verifies_with_json_contract(drill_base: Path) -> None:
    done = run_drill(drill_base, "--engine", "postgresql", "--cycles", "2", "--json")
    doc = _json(done)
    assert done.returncode == 0, done.stderr[-3000:]
    assert {"engine", "version", "backend", "disks", "mode", "cycles", "summary"} <= set(doc)
    assert (doc["engine"], doc["backend"], doc["disks"], doc["mode"]) == (
        "postgresql", "local", "loop", "quiesced")
    assert doc["version"]
    assert len(doc["cycles"]) == 2 and doc["summary"]["verified"] is True
    for cycle in doc["cycles"]:
        assert cycle["verified"] is True
        for key in ("checks", "freeze_window_ms", "write_stall_ms", "recovery_seconds"):
            assert key in cycle
        assert cycle["consistency"] == "application"
        assert cycle["freeze_window_ms"] > 0 and cycle["write_stall_ms"] > 0
        assert cycle["recovery_seconds"] > 0
        assert cycle["acked_before_pre"] > 0
        for name in ("server_started", "balance_total", "balances_match_ledger",
                     "acked_writes_present", "consistent_cut", "amcheck", "snapshot_cycle"):
            assert cycle["checks"][name]["ok"], (name, cycle["checks"][name])
    # Progress went to stderr as it happened.
    assert "cycle 1/2: snapshot" in done.stderr and "cycle 2/2: verify" in done.stderr


@needs_pg
def test_postgresql_unsafe_staggered_is_never_verified(drill_base: Path) -> None:
    done = run_drill(drill_base, "--engine", "postgresql", "--cycles", "2",
                     "--mode", "unsafe-staggered", "--json")
    doc = _json(done)
    assert done.returncode == 1
    assert doc["summary"]["verified"] is False and doc["summary"]["cycles_verified"] == 0
    for cycle in doc["cycles"]:
        assert cycle["verified"] is False
        # Why: the data disk holds a checkpoint the earlier WAL copy has never seen.
        started = cycle["checks"]["server_started"]
        assert not started["ok"]
        assert "checkpoint record" in started["detail"], started


@needs_pg
def test_postgresql_crash_mode_freeze_only_verifies(drill_base: Path) -> None:
    done = run_drill(drill_base, "--engine", "postgresql", "--cycles", "1", "--mode", "crash",
                     "--json")
    doc = _json(done)
    assert done.returncode == 0, done.stderr[-3000:]
    (cycle,) = doc["cycles"]
    assert cycle["verified"] and cycle["freeze_window_ms"] > 0
    assert not cycle["backup_label_installed"]


@needs_pg
def test_postgresql_dir_disks_restore_with_backup_label(drill_base: Path) -> None:
    done = run_drill(drill_base, "--engine", "postgresql", "--disks", "dir", "--cycles", "2",
                     "--json")
    doc = _json(done)
    assert done.returncode == 0, done.stderr[-3000:]
    assert doc["disks"] == "dir"
    for cycle in doc["cycles"]:
        assert cycle["verified"]
        assert cycle["freeze_window_ms"] is None  # nothing can be frozen
        assert cycle["backup_label_installed"] is True


@needs_mariadb
def test_mariadb_quiesced_loop_verifies(drill_base: Path) -> None:
    done = run_drill(drill_base, "--engine", "mariadb", "--cycles", "2", "--json")
    doc = _json(done)
    assert done.returncode == 0, done.stderr[-3000:]
    assert doc["engine"] == "mariadb"
    for cycle in doc["cycles"]:
        assert cycle["verified"], cycle["checks"]
        for name in ("myisam_mirror_behind_innodb", "myisam_pairs_whole", "check_table"):
            assert cycle["checks"][name]["ok"]


@needs_mariadb
def test_mariadb_unsafe_staggered_is_never_verified(drill_base: Path) -> None:
    done = run_drill(drill_base, "--engine", "mariadb", "--cycles", "2",
                     "--mode", "unsafe-staggered", "--json")
    doc = _json(done)
    assert done.returncode == 1
    for cycle, failed in zip(doc["cycles"], _failed(doc), strict=True):
        assert not cycle["verified"]
        assert failed, cycle
        if "server_started" in failed:
            # InnoDB refuses pages newer than the redo log it was given.
            assert "InnoDB" in cycle["checks"]["server_started"]["detail"]


@needs_mariadb
def test_mysql_maps_to_local_mariadb_and_says_so(drill_base: Path) -> None:
    from quiesce_mysql.server import find_server_binary, server_flavour

    if server_flavour(find_server_binary())[0] != "mariadb":
        pytest.skip("a MySQL-flavour server is installed: --engine mysql runs it directly")
    done = run_drill(drill_base, "--engine", "mysql", "--cycles", "1", "--json")
    doc = _json(done)
    assert done.returncode == 0, done.stderr[-3000:]
    assert any("MariaDB" in note for note in doc["notes"]), doc["notes"]


@pytest.mark.parametrize("cycles", ["0", "-1"])
def test_bad_cycles_is_a_usage_error(drill_base: Path, cycles: str) -> None:
    done = run_drill(drill_base, "--cycles", cycles, timeout=120)
    assert done.returncode == 2 and "--cycles" in done.stderr and done.stdout == ""


def test_crash_mode_on_dir_disks_is_refused(drill_base: Path) -> None:
    # No freeze on plain directories: "crash" would copy a live server unprotected and could
    # report a lucky restore as verified.
    done = run_drill(drill_base, "--disks", "dir", "--mode", "crash", timeout=120)
    assert done.returncode == 2 and done.stdout == ""
    assert "--mode crash" in done.stderr and "--disks loop" in done.stderr


def test_image_is_never_silently_replaced_by_local_binaries(drill_base: Path) -> None:
    # A drill of "postgres:16" that ran the local PostgreSQL would verify the wrong version.
    done = run_drill(drill_base, "--backend", "local", "--image", "postgres:16", timeout=120)
    assert done.returncode == 2 and "--image" in done.stderr and done.stdout == ""
    from quiesce.harness.servers.docker import docker_available

    ok, why = docker_available()
    if ok:
        pytest.skip(f"a Docker engine answers ({why}): --backend auto would use the image")
    done = run_drill(drill_base, "--image", "postgres:16", timeout=120)
    assert done.returncode == 3, done.stderr
    (line,) = done.stderr.strip().splitlines()
    assert "--image postgres:16 needs the Docker backend" in line


def test_a_work_dir_quiesce_run_would_refuse_fails_before_any_setup(tmp_path: Path) -> None:
    # A group-writable parent: `quiesce run` refuses a config below it, so the drill must
    # say so at once instead of after starting a server.
    shared = tmp_path / "shared"
    shared.mkdir()
    os.chmod(shared, 0o775)
    base = shared / "drill"
    done = run_drill(base, "--cycles", "1", timeout=120)
    assert done.returncode == 2 and done.stdout == ""
    assert "QUIESCE_DRILL_DIR" in done.stderr and "writable by group/other" in done.stderr
    assert "starting the throwaway server" not in done.stderr
    assert not base.exists() or not any(base.iterdir())


def test_mongodb_unavailable_exits_3_with_one_line_reason(drill_base: Path) -> None:
    from quiesce.harness.servers.docker import docker_available

    mongod = shutil.which("mongod") or next(
        (p for p in ("/usr/bin/mongod", "/usr/local/bin/mongod") if os.access(p, os.X_OK)),
        None)
    ok, why = docker_available()
    if mongod or ok:
        pytest.skip(f"MongoDB can run here ({mongod or why}): exit 3 does not apply")
    done = run_drill(drill_base, "--engine", "mongodb", timeout=120)
    assert done.returncode == 3
    assert done.stdout == ""
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, lines
    assert "no mongod" in lines[0] and "no Docker engine" in lines[0]
    assert "install" in lines[0]


@needs_pg
@pytest.mark.parametrize(("fail_at", "error"), [
    ("snapshot", "took no snapshot"),  # fails after copying one disk, in the middle of the freeze
    ("restore", "failure injected at restore"),
], ids=["snapshot", "restore"])
def test_a_failing_cycle_leaves_nothing_behind(drill_base: Path, fail_at: str,
                                               error: str) -> None:
    done = run_drill(drill_base, "--engine", "postgresql", "--cycles", "1", "--json",
                     env={"QUIESCE_DRILL_FAIL_AT": fail_at})
    doc = _json(done)
    assert done.returncode == 1
    (cycle,) = doc["cycles"]
    assert not cycle["verified"]
    assert error in cycle["error"]
    # The drill_base fixture asserts: no mount, loop device, process or directory left.


@needs_pg
@pytest.mark.parametrize(("signum", "when"), [
    (signal.SIGINT, "cycle 2/3: snapshot"),  # inside `quiesce run`: held, frozen or copying
    (signal.SIGTERM, "cycle 2/3: snapshot"),
    (signal.SIGINT, "cycle 1/3: recovery"),  # restored disks mounted, a second server starting
])
def test_interrupt_in_the_middle_cleans_up(drill_base: Path, signum: int, when: str) -> None:
    env = {**os.environ, "QUIESCE_DRILL_DIR": str(drill_base)}
    proc = subprocess.Popen([sys.executable, "-m", "quiesce", "drill", "--cycles", "3"],
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    seen: list[str] = []
    try:
        assert proc.stderr is not None
        deadline = time.monotonic() + 300
        for line in proc.stderr:
            seen.append(line)
            if when in line:
                time.sleep(0.2)
                proc.send_signal(signum)
                break
            assert time.monotonic() < deadline, seen
        else:
            pytest.fail(f"the drill ended before {when!r}: {''.join(seen)[-3000:]}")
        rest = proc.stderr.read()
        proc.wait(timeout=300)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 130, "".join(seen) + rest
    assert "cleaning up" in rest and "interrupted" in rest


@needs_mariadb
def test_mariadb_crash_mode_shows_why_myisam_needs_the_lock(drill_base: Path) -> None:
    # Freeze alone is crash-consistent for InnoDB, but MyISAM tables open for writing are
    # restored "marked as crashed": only the lock (BACKUP STAGE / FTWRL) flushes and closes
    # them. The drill must report that, not paper over it.
    done = run_drill(drill_base, "--engine", "mariadb", "--cycles", "2", "--mode", "crash",
                     "--json")
    doc = _json(done)
    assert done.returncode == 1
    for cycle in doc["cycles"]:
        assert not cycle["verified"]
        assert cycle["checks"]["server_started"]["ok"]
        assert cycle["checks"]["acked_writes_present"]["ok"]  # InnoDB itself recovered
        myisam = [c["detail"] for name, c in cycle["checks"].items()
                  if not c["ok"] and name in ("server_log_clean", "check_table",
                                              "myisam_pairs_whole")]
        assert myisam and any("crashed" in d or "torn" in d or "MyISAM" in d
                              for d in myisam), cycle["checks"]


@needs_pg
def test_keep_keeps_files_but_no_server_mount_or_loop_device(drill_base: Path) -> None:
    done = run_drill(drill_base, "--engine", "postgresql", "--cycles", "1", "--keep", "--json")
    doc = _json(done)
    assert done.returncode == 0, done.stderr[-3000:]
    kept = Path(doc["kept"])
    assert kept.is_relative_to(drill_base) and f"kept: {kept}" in done.stderr
    assert (kept / "snap" / "cycle-1" / "data.img").is_file()
    assert (kept / "snap" / "cycle-1" / "log.img").is_file()
    assert (kept / "images" / "data.live.img").is_file()
    assert (kept / "cfg" / "VMSnapshotScriptPluginConfig.json").is_file()
    left = _leftovers(drill_base)
    assert (left["mounts"], left["loops"], left["procs"]) == ([], [], [])
    shutil.rmtree(drill_base)  # the fixture then checks nothing else is left
