"""`quiesce drill --engine flock`: a third-party engine drilled through its hooks alone.

The example plugin (tests/example_plugin, found through its entry point in the committed
``quiesce_example_flock-0.1.0.dist-info`` on PYTHONPATH) registers the drill target
``flock -> quiesce_example_flock.drill_target:FlockTarget``. Its database is ledgerd, a toy
server that logs every commit (fsync) on the log disk, checkpoints on the data disk, and holds
``flock(LOCK_SH)`` on the data disk's ``quiesce.lock`` while it writes - the file the flock
engine's Quiescer locks exclusively. These tests run the real CLI and ledgerd processes:

- the quiesced drill verifies on plain directories (any user) and on loop disks (root), and
  its live server log shows commits that waited for the hold;
- the negative control (log disk copied, checkpoint, data disk copied) is caught: the restored
  ledgerd refuses a checkpoint beyond the end of its log;
- the engine's exclusive lock stops a commit until it is released;
- recovery replays the log after the checkpoint, drops a torn tail, refuses a damaged record.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from helpers import wait_for

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = ROOT / "tests" / "example_plugin"
LEDGERD = EXAMPLE / "quiesce_example_flock" / "ledgerd.py"
DRILL_TIMEOUT = 600
CHECKS = {"snapshot_cycle", "server_started", "balance_total", "balances_match_ledger",
          "acked_writes_present", "no_phantom_writes", "consistent_cut", "log_replay",
          "server_log_clean"}

pytestmark = pytest.mark.timeout(DRILL_TIMEOUT + 60)


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(EXAMPLE), *filter(None, [env.get("PYTHONPATH")])])
    env.pop("QUIESCE_RUNTIME_DIR", None)
    return env


def _processes_mentioning(text: str) -> list[str]:
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) == os.getpid():
            continue
        with contextlib.suppress(OSError):
            cmd = Path(f"/proc/{entry}/cmdline").read_bytes().replace(b"\0", b" ")
            if text.encode() in cmd:
                found.append(f"{entry}: {cmd.decode(errors='replace')[:200]}")
    return found


@pytest.fixture
def drill_base() -> Iterator[Path]:
    """A drill work dir quiesce run trusts: under /var/lib as root, ~/.cache otherwise."""
    parent = Path("/var/lib") if os.geteuid() == 0 else Path.home() / ".cache"
    base = parent / f"quiesce-drill-flock-{uuid.uuid4().hex[:8]}"
    yield base
    left = _processes_mentioning(str(base))
    for line in left:
        with contextlib.suppress(ProcessLookupError):
            os.kill(int(line.split(":")[0]), signal.SIGKILL)
    shutil.rmtree(base, ignore_errors=True)
    assert not left, f"processes left running: {left}"


def run_drill(base: Path, *args: str) -> tuple[subprocess.CompletedProcess[str], dict[str, Any]]:
    done = subprocess.run(
        [sys.executable, "-m", "quiesce", "drill", "--engine", "flock", "--backend", "local",
         "--json", *args], env={**_env(), "QUIESCE_DRILL_DIR": str(base)}, cwd="/",
        capture_output=True, text=True, timeout=DRILL_TIMEOUT, check=False)
    try:
        return done, json.loads(done.stdout)
    except json.JSONDecodeError:
        pytest.fail(f"stdout is not one JSON document (exit {done.returncode}):\n"
                    f"{done.stdout[-2000:]}\nstderr:\n{done.stderr[-3000:]}")


def _assert_verified(done: subprocess.CompletedProcess[str], doc: dict[str, Any],
                     disks: str) -> None:
    assert done.returncode == 0, done.stderr[-3000:]
    assert (doc["engine"], doc["backend"], doc["disks"], doc["mode"]) == (
        "flock", "local", disks, "quiesced")
    assert doc["version"].startswith("ledgerd")
    assert len(doc["cycles"]) == 2 and doc["summary"]["verified"] is True
    for cycle in doc["cycles"]:
        assert cycle["verified"] is True, cycle
        assert set(cycle["checks"]) >= CHECKS, cycle["checks"]
        assert all(c["ok"] for c in cycle["checks"].values()), cycle["checks"]
        assert cycle["consistency"] == "application"
        assert cycle["acked_before_pre"] > 0


def test_quiesced_drill_on_dirs_verifies_and_the_hold_blocked_commits(drill_base: Path) -> None:
    done, doc = run_drill(drill_base, "--disks", "dir", "--cycles", "2", "--keep")
    _assert_verified(done, doc, "dir")
    # The live ledgerd notes every commit that found quiesce.lock held exclusively: the
    # flock engine's hold really stopped the workload's writes.
    live_log = Path(doc["kept"]) / "srv" / "live" / "server.log"
    text = live_log.read_text(encoding="utf-8")
    assert "a write waits: quiesce.lock is locked exclusively" in text, text[-2000:]
    assert "[ERROR]" not in text, text[-2000:]


def test_quiesced_drill_on_loop_disks_verifies(drill_base: Path, require_root: None) -> None:
    done, doc = run_drill(drill_base, "--disks", "loop", "--cycles", "2")
    _assert_verified(done, doc, "loop")
    for cycle in doc["cycles"]:
        assert cycle["freeze_window_ms"] > 0


def test_unsafe_staggered_copy_is_caught(drill_base: Path) -> None:
    done, doc = run_drill(drill_base, "--disks", "dir", "--cycles", "2",
                          "--mode", "unsafe-staggered")
    assert done.returncode == 1, done.stderr[-3000:]
    assert doc["summary"]["verified"] is False
    for cycle in doc["cycles"]:
        assert cycle["verified"] is False
        started = cycle["checks"]["server_started"]
        assert started["ok"] is False
        assert "the data file is newer than the log" in started["detail"], started


def test_unknown_engine_names_the_plugins_targets(drill_base: Path) -> None:
    done = subprocess.run([sys.executable, "-m", "quiesce", "drill", "--engine", "no-such",
                           "--disks", "dir", "--backend", "local"],
                          env={**_env(), "QUIESCE_DRILL_DIR": str(drill_base)}, cwd="/",
                          capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode == 2
    assert "no installed plugin provides a drill target 'no-such'" in done.stderr
    assert "flock" in done.stderr.split("available:")[1]


# ---------------------------------------------------------------- ledgerd and the engine


@pytest.fixture
def example_on_path(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.syspath_prepend(str(EXAMPLE))


@pytest.fixture
def ledger(tmp_path: Path, example_on_path: None) -> Iterator[Any]:
    from quiesce_example_flock.server import LedgerServer

    from quiesce.harness.servers.base import ServerLayout

    server = LedgerServer(ServerLayout(data_dir=tmp_path / "data", log_dir=tmp_path / "log",
                                       run_dir=tmp_path / "run"), init=True)
    server.start()
    try:
        client = server.client()
        client.call("setup", accounts=4, balance=100)
        client.close()
        yield server
    finally:
        server.stop()


def _transfer(server: Any, tid: int) -> dict[str, Any]:
    client = server.client()
    try:
        answer: dict[str, Any] = client.call("transfer", id=tid, src=0, dst=1, amount=5)
        return answer
    finally:
        client.close()


def _state(server: Any) -> dict[str, Any]:
    client = server.client()
    try:
        answer: dict[str, Any] = client.call("state")
        return answer
    finally:
        client.close()


def test_the_engines_lock_stops_commits_until_released(ledger: Any) -> None:
    from quiesce_example_flock.engine import FlockQuiescer

    from quiesce.deadline import Deadline
    from quiesce.engine import InstanceSettings

    quiescer = FlockQuiescer(InstanceSettings(engine="flock", name="drill",
                                              options={"path": str(ledger.lock_path)}))
    log_file = ledger.log_dir / "ledger.log"
    quiescer.prepare(Deadline(10))
    quiescer.quiesce(Deadline(10))
    answers: list[Any] = []
    writer = threading.Thread(target=lambda: answers.append(_transfer(ledger, 7)))
    try:
        size = log_file.stat().st_size
        writer.start()
        wait_for(lambda: "a write waits" in ledger.log_file.read_text(encoding="utf-8"),
                 timeout=30, what="ledgerd to report the commit waiting for the lock")
        assert log_file.stat().st_size == size  # nothing logged while held
        assert not answers
    finally:
        quiescer.release(Deadline(10))
        quiescer.close()
        writer.join(60)
    assert answers == [{"ok": True}]
    assert [7, 0, 1, 5] in _state(ledger)["ledger"]
    assert log_file.stat().st_size > size


def _start_ledgerd(tmp_path: Path) -> subprocess.Popen[bytes]:
    return subprocess.Popen([sys.executable, "-I", str(LEDGERD), "--data", str(tmp_path / "data"),
                             "--log", str(tmp_path / "log"), "--run", str(tmp_path / "run")],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            start_new_session=True)


def test_recovery_replays_after_the_checkpoint_and_drops_a_torn_tail(ledger: Any,
                                                                      tmp_path: Path) -> None:
    for tid in range(1, 151):  # a checkpoint every 100 commits: 50 after the last one
        _transfer(ledger, tid)
    before = _state(ledger)
    ledger.stop()  # SIGTERM: no clean-shutdown checkpoint, a crash for the files
    torn = b'0badc0de {"op":"transfer","id":99'  # a record cut mid-append
    with open(ledger.log_dir / "ledger.log", "ab") as fh:
        fh.write(torn)
    ledger.start()
    assert _state(ledger) == before
    text = ledger.log_file.read_text(encoding="utf-8")
    assert f"50 record(s) replayed after it, torn tail of {len(torn)} byte(s) dropped" in text
    client = ledger.client()
    try:
        assert client.call("check")["problems"] == []
    finally:
        client.close()


def test_a_damaged_record_before_the_end_is_refused(ledger: Any, tmp_path: Path) -> None:
    for tid in range(1, 4):
        _transfer(ledger, tid)
    ledger.stop()
    log_file = ledger.log_dir / "ledger.log"
    data = bytearray(log_file.read_bytes())
    second = data.index(b"\n") + 1
    data[second + 20] ^= 0x01  # one bit of the second record
    log_file.write_bytes(bytes(data))
    proc = _start_ledgerd(tmp_path)
    out, _ = proc.communicate(timeout=60)
    assert proc.returncode == 3, out
    assert b"[ERROR] damaged log record at offset" in out and b"refusing to start" in out
