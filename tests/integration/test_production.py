"""Running quiesce in production (issue 14), end to end with the real holder and the example
"flock" engine (tests/example_plugin): logs to a fake journald, an uncollected auto-release
reported by the next 'pre' and by 'status --check', the metrics textfile, record_command,
prune, a request without a protocol version, and 'post | head'.

Each test gets a root-owned directory under /run (config, lock files, runtime dir, state dir,
fake journal socket) and kills any holder/guardian it leaves.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from helpers import example_plugin_env, private_dir, wait_for
from quiesce.hold.records import write_record
from quiesce.timefmt import iso

pytestmark = pytest.mark.timeout(180)


def lock_is_free(path: Path) -> bool:
    code = ("import fcntl,os,sys\nfd=os.open(sys.argv[1],os.O_RDWR|os.O_CREAT)\n"
            "try:\n    fcntl.flock(fd,fcntl.LOCK_EX|fcntl.LOCK_NB)\nexcept BlockingIOError:\n"
            "    sys.exit(1)\n")
    return subprocess.run([sys.executable, "-c", code, str(path)], check=False,
                          timeout=30).returncode == 0


def parse_native(data: bytes) -> dict[str, str]:
    """journald's native protocol: KEY=value lines, or KEY, a 64-bit length and the value."""
    fields: dict[str, str] = {}
    while data:
        line, _, rest = data.partition(b"\n")
        if b"=" in line:
            key, _, value = line.partition(b"=")
            fields[key.decode()], data = value.decode(), rest
        else:
            size = int.from_bytes(rest[:8], "little")
            fields[line.decode()], data = rest[8:8 + size].decode(), rest[9 + size:]
    return fields


class Q:
    def __init__(self, base: Path) -> None:
        self.base = base
        self.config = base / "quiesce.toml"
        self.rundir = base / "rt"
        self.state = base / "state"
        self.journal_path = base / "journal.sock"
        self.env = example_plugin_env()
        # Never the machine's journal or syslog: these paths exist only if a test binds them.
        self.env["QUIESCE_JOURNAL_SOCKET"] = str(self.journal_path)
        self.env["QUIESCE_SYSLOG_SOCKET"] = str(base / "nolog.sock")
        self.journal: socket.socket | None = None

    def toml(self, extra: str = "", **options: Any) -> None:
        lines = [f'state_dir = "{self.state}"', extra,
                 f'[[flock]]\nname = "a"\npath = "{self.base / "a.lock"}"']
        lines += [f"{k} = {json.dumps(v)}" for k, v in options.items()]
        self.config.write_text("\n".join(lines) + "\n")
        os.chmod(self.config, 0o600)

    def listen(self) -> socket.socket:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        sock.bind(str(self.journal_path))
        sock.settimeout(10)
        self.journal = sock
        return sock

    def events(self) -> list[dict[str, str]]:
        """Every journal event received so far."""
        assert self.journal is not None
        out = []
        self.journal.settimeout(0.5)
        while True:
            try:
                data = self.journal.recv(65536)
            except TimeoutError:
                return out
            out.append(parse_native(data))

    def run(self, *args: str, stdout: Any = subprocess.PIPE,
            timeout: float = 120) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "quiesce", *args], env=self.env,
                              check=False, stdout=stdout, stderr=subprocess.PIPE, text=True,
                              timeout=timeout, cwd="/")

    def pre(self, *extra: str) -> subprocess.CompletedProcess[str]:
        return self.run("pre", "--config", str(self.config), "--runtime-dir", str(self.rundir),
                        *extra)

    def post(self, *extra: str, **kw: Any) -> subprocess.CompletedProcess[str]:
        return self.run("post", "--runtime-dir", str(self.rundir), *extra, **kw)

    def status(self, *extra: str) -> tuple[int, dict[str, Any]]:
        proc = self.run("status", "--runtime-dir", str(self.rundir), "--config",
                        str(self.config), "--json", *extra)
        assert proc.returncode in (0, 3, 4, 5), proc.stderr
        return proc.returncode, json.loads(proc.stdout)


def processes_mentioning(text: str) -> list[int]:
    pids = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) == os.getpid():
            continue
        with contextlib.suppress(OSError):
            if text.encode() in Path(f"/proc/{entry}/cmdline").read_bytes():
                pids.append(int(entry))
    return pids


@pytest.fixture
def q(require_root: None) -> Iterator[Q]:
    with private_dir("qprod-") as base:
        q = Q(base)
        try:
            yield q
        finally:
            if q.journal is not None:
                q.journal.close()
            for pid in processes_mentioning(str(base)):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)


def test_pre_and_post_log_one_event_each_to_journald(q: Q) -> None:
    q.toml()
    q.listen()
    ready = json.loads(q.pre("--json").stdout)
    assert ready["ok"] is True
    proc = q.post()
    assert proc.returncode == 0, proc.stderr
    events = q.events()
    assert [(e["QUIESCE_COMMAND"], e["QUIESCE_PHASE"]) for e in events] == [
        ("pre", "held"), ("post", "released")]
    assert all(e["SYSLOG_IDENTIFIER"] == "quiesce" for e in events)
    assert {e["QUIESCE_RUN_ID"] for e in events} == {ready["run_id"]}
    assert events[1]["QUIESCE_CONSISTENT"] == "yes" and events[1]["PRIORITY"] == "5"


def test_a_configuration_error_reaches_the_journal_too(q: Q) -> None:
    """A wrapper's stderr may go nowhere: the error is in the journal as well."""
    q.config.write_text("max_hold_seconds = 'x'\n")
    os.chmod(q.config, 0o600)
    q.listen()
    proc = q.pre()
    assert proc.returncode == 2
    (event,) = q.events()
    assert (event["QUIESCE_COMMAND"], event["QUIESCE_PHASE"], event["PRIORITY"]) == (
        "pre", "error", "3")
    assert "max_hold_seconds" in event["MESSAGE"] and event["QUIESCE_ERROR"] == "ConfigError"


def test_an_uncollected_auto_release_is_reported_kept_and_alerted_on(q: Q) -> None:
    q.toml("max_hold_seconds = 2\npre_timeout_seconds = 1")
    q.listen()
    first = json.loads(q.pre("--json").stdout)
    seen: list[dict[str, str]] = []

    def auto_released() -> bool:
        # Drain the fake journal while polling: its socket queues only ~10 datagrams
        # (net.unix.max_dgram_qlen), and each 'status' logs one; a full queue would make the
        # holder's non-blocking send drop its event.
        seen.extend(q.events())
        return bool(q.status()[1]["state"] == "auto-released")

    wait_for(auto_released, 60, "the auto-release")
    code, state = q.status("--check")
    assert code == 3
    assert [p["problem"] for p in state["health"]["problems"]] == ["uncollected"]
    assert state["health"]["problems"][0]["exit_code"] == 3
    assert q.status()[0] == 0  # the plain question still answers 0
    # The holder told the journal itself: nobody else was there.
    seen.extend(q.events())
    auto = [e for e in seen if e.get("QUIESCE_COMMAND") == "holder"]
    assert [(e["QUIESCE_PHASE"], e["QUIESCE_RUN_ID"], e["PRIORITY"]) for e in auto] == [
        ("auto-released", first["run_id"], "4")]

    second = q.pre("--json")
    assert second.returncode == 0, second.stderr
    ready = json.loads(second.stdout)
    assert ready["uncollected"]["run_id"] == first["run_id"]
    assert ready["uncollected"]["state"] == "auto-released"
    assert any(first["run_id"] in w and "no 'post' collected it" in w
               for w in ready["warnings"])
    # (the first 'pre held' event was read above)
    assert [e["QUIESCE_PHASE"] for e in q.events()
            if e.get("QUIESCE_COMMAND") == "pre"] == ["uncollected", "held"]
    assert q.post().returncode == 0
    # The first hold's record stays in the history, and is counted.
    record = json.loads((q.state / "runs" / f"{first['run_id']}.json").read_text())
    assert record["state"] == "auto-released" and record["consistent"] is False
    code, state = q.status("--check")
    assert code == 0 and state["health"]["records_by_state"] == {"auto-released": 1,
                                                                 "released": 1}
    metrics = q.base / "quiesce.prom"
    proc = q.run("status", "--runtime-dir", str(q.rundir), "--config", str(q.config),
                 "--metrics-file", str(metrics))
    assert proc.returncode == 0, proc.stderr
    text = metrics.read_text()
    assert "quiesce_auto_released_records 1\n" in text
    assert "quiesce_last_run_consistent 1\n" in text
    assert 'quiesce_problem{problem="uncollected"} 0\n' in text
    assert 'quiesce_last_instance_held_seconds{plugin="flock",name="a"} ' in text
    assert oct(metrics.stat().st_mode & 0o777) == "0o644"


def test_status_check_tells_inconsistent_and_stale_apart(q: Q) -> None:
    q.toml()
    old = time.time() - 3 * 3600
    write_record(str(q.state), {"run_id": "20200101T000000.000000Z-aaaaaa", "state": "released",
                                "consistent": True, "started_at": iso(old - 1),
                                "since": iso(old - 0.5), "released_at": iso(old),
                                "instances": []})
    code, state = q.status("--max-age", "2")
    assert code == 5 and [p["problem"] for p in state["health"]["problems"]] == ["stale"]
    code, _ = q.status("--max-age", "4")
    assert code == 0
    write_record(str(q.state), {"run_id": "20200101T000001.000000Z-bbbbbb", "state": "lost",
                                "consistent": False, "message": "the holder died",
                                "released_at": iso(time.time()), "instances": []})
    code, state = q.status("--check", "--max-age", "2")
    assert code == 4  # inconsistent first; stale is listed too
    assert [p["problem"] for p in state["health"]["problems"]] == ["inconsistent", "stale"]
    assert state["health"]["last_run"]["state"] == "lost"


def test_post_piped_into_a_closed_reader_prints_no_traceback(q: Q) -> None:
    """`quiesce post | head -0`: the reader is gone before post writes."""
    q.toml()
    assert q.pre().returncode == 0
    assert not lock_is_free(q.base / "a.lock")
    read_end, write_end = os.pipe()
    os.close(read_end)
    try:
        proc = q.post(stdout=write_end)
    finally:
        os.close(write_end)
    assert "Traceback" not in proc.stderr and "BrokenPipeError" not in proc.stderr, proc.stderr
    assert proc.returncode == 141
    assert lock_is_free(q.base / "a.lock")  # the release happened all the same


def test_record_command_gets_the_record_after_the_release(q: Q) -> None:
    copy = q.base / "shipped.json"
    ship = q.base / "ship"
    ship.write_text(f"#!/bin/sh\ncp \"$1\" {copy}\necho shipped \"$2\"\n")
    os.chmod(ship, 0o700)
    q.toml(f'record_command = ["{ship}", "{{record}}", "{{run_id}}"]')
    ready = json.loads(q.pre("--json").stdout)
    proc = q.post("--json")
    assert proc.returncode == 0, proc.stderr
    outcome = json.loads(proc.stdout)
    assert outcome["record_command"]["ok"] is True
    assert outcome["record_command"]["output"] == f"shipped {ready['run_id']}\n"
    assert json.loads(copy.read_text())["run_id"] == ready["run_id"]


def test_a_failing_record_command_is_reported_and_changes_no_consistency(q: Q) -> None:
    ship = q.base / "ship"
    ship.write_text("#!/bin/sh\necho no route to the backup vault >&2\nexit 7\n")
    os.chmod(ship, 0o700)
    q.toml(f'record_command = ["{ship}", "{{record}}"]')
    assert q.pre().returncode == 0
    proc = q.post()
    assert proc.returncode == 0  # consistent: the hold was fine
    assert "RECORD NOT HANDED OVER" in proc.stderr and "exited with status 7" in proc.stderr
    assert "no route to the backup vault" in proc.stderr


def test_a_record_command_others_can_replace_is_not_run(q: Q) -> None:
    ship = q.base / "ship"
    marker = q.base / "ran"
    ship.write_text(f"#!/bin/sh\ntouch {marker}\n")
    os.chmod(ship, 0o777)
    q.toml(f'record_command = ["{ship}", "{{record}}"]')
    assert q.pre().returncode == 0
    outcome = json.loads(q.post("--json").stdout)
    assert outcome["record_command"]["ok"] is False
    assert "writable" in outcome["record_command"]["error"]
    assert not marker.exists()


def test_a_request_without_a_protocol_version_is_served(q: Q) -> None:
    """An older 'post' (before protocol versions) after an upgrade: the new holder releases
    for it all the same, and says its own version."""
    q.toml()
    assert q.pre().returncode == 0
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.settimeout(60)
    try:
        sock.connect(str(q.rundir / "holder.sock"))
        sock.sendall(b'{"op": "release"}\n')
        data = b""
        while not data.endswith(b"\n"):
            chunk = sock.recv(65536)
            if not chunk:
                break
            data += chunk
    finally:
        sock.close()
    answer = json.loads(data)
    assert answer["protocol"] == 1 and answer["consistent"] is True
    assert lock_is_free(q.base / "a.lock")


def test_prune_removes_old_records_and_keeps_the_newest(q: Q) -> None:
    q.toml("keep_days = 30")
    now = time.time()
    ids = [time.strftime("%Y%m%dT%H%M%S.000000Z-", time.gmtime(now - days * 86400)) + suffix
           for days, suffix in ((400, "aaaaaa"), (31, "bbbbbb"), (29, "cccccc"))]
    for run_id in ids:
        write_record(str(q.state), {"run_id": run_id, "state": "released", "consistent": True})
    proc = q.run("prune", "--config", str(q.config), "--dry-run", "--json")
    assert json.loads(proc.stdout)["removed"] == ids[:2]
    assert len(list((q.state / "runs").iterdir())) == 3
    proc = q.run("prune", "--config", str(q.config))
    assert proc.returncode == 0, proc.stderr
    assert sorted(p.stem for p in (q.state / "runs").iterdir()) == [ids[2]]
    # The newest record is kept whatever its age.
    proc = q.run("prune", "--config", str(q.config), "--keep-days", "1")
    assert proc.returncode == 0
    assert sorted(p.stem for p in (q.state / "runs").iterdir()) == [ids[2]]


def test_prune_without_keep_days_refuses_and_says_why(q: Q) -> None:
    q.toml()
    proc = q.run("prune", "--config", str(q.config))
    assert proc.returncode == 2
    assert "sets no keep_days" in proc.stderr and "backup_label" in proc.stderr
