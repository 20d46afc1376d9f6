"""`quiesce pre/post/status` end to end with the real holder, guardian and the example plugin.

The "flock" engine (tests/example_plugin) holds a real flock() another process can observe, and
with ``sticky = true`` a marker file that outlives the holder (like MongoDB's fsyncLock), which
only the guardian can clean up if the holder dies. Each test gets its own root-owned directory
under /run (config, lock files, runtime dir, state dir) and kills any holder/guardian it leaves.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import signal
import socket
import stat
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from helpers import example_plugin_env, private_dir, wait_for

pytestmark = pytest.mark.timeout(180)


def lock_is_free(path: Path) -> bool:
    """Try the lock from a separate process, exactly as another application would."""
    code = ("import fcntl,os,sys\nfd=os.open(sys.argv[1],os.O_RDWR|os.O_CREAT)\n"
            "try:\n    fcntl.flock(fd,fcntl.LOCK_EX|fcntl.LOCK_NB)\nexcept BlockingIOError:\n"
            "    sys.exit(1)\n")
    proc = subprocess.run([sys.executable, "-c", code, str(path)], check=False, timeout=30)
    return proc.returncode == 0


def alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii") as handle:
            return handle.read().split(") ")[-1][0] != "Z"
    except FileNotFoundError:
        return False


def processes_mentioning(text: str) -> list[int]:
    pids = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) == os.getpid():
            continue
        with contextlib.suppress(OSError):
            cmdline = Path(f"/proc/{entry}/cmdline").read_bytes()
            if text.encode() in cmdline:
                pids.append(int(entry))
    return pids


class Q:
    """One test's directory and the quiesce CLI pointed at it."""

    def __init__(self, base: Path) -> None:
        self.base = base
        self.config = base / "quiesce.toml"
        self.rundir = base / "rt"
        self.state = base / "state"
        self.env = example_plugin_env()

    def toml(self, text: str, mode: int = 0o600) -> Path:
        self.config.write_text(f'state_dir = "{self.state}"\n' + text)
        os.chmod(self.config, mode)
        return self.config

    def lock(self, name: str = "a") -> Path:
        return self.base / f"{name}.lock"

    def run(self, *args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "quiesce", *args], env=self.env, check=False,
                              capture_output=True, text=True, timeout=timeout, cwd="/")

    def pre(self, *extra: str) -> subprocess.CompletedProcess[str]:
        return self.run("pre", "--config", str(self.config), "--runtime-dir", str(self.rundir),
                        *extra)

    def pre_json(self) -> dict[str, Any]:
        proc = self.pre("--json")
        assert proc.returncode == 0, proc.stdout + proc.stderr
        return json.loads(proc.stdout)

    def post(self, *extra: str) -> subprocess.CompletedProcess[str]:
        return self.run("post", "--runtime-dir", str(self.rundir), *extra)

    def post_json(self) -> tuple[int, dict[str, Any]]:
        proc = self.post("--json")
        return proc.returncode, json.loads(proc.stdout)

    def status_json(self) -> dict[str, Any]:
        proc = self.run("status", "--runtime-dir", str(self.rundir), "--json")
        assert proc.returncode == 0, proc.stderr
        return json.loads(proc.stdout)


@pytest.fixture
def q(require_root: None) -> Iterator[Q]:
    with private_dir("qt-") as base:
        try:
            yield Q(base)
        finally:
            for pid in processes_mentioning(str(base)):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGCONT)
                    os.kill(pid, signal.SIGKILL)


def flock_section(q: Q, name: str = "a", **options: Any) -> str:
    lines = [f'[[flock]]\nname = "{name}"\npath = "{q.lock(name)}"']
    for key, value in options.items():
        lines.append(f"{key} = {json.dumps(value)}")
    return "\n".join(lines) + "\n"


def test_pre_holds_the_lock_until_post_releases_it(q: Q) -> None:
    q.toml(flock_section(q))
    ready = q.pre_json()
    assert ready["ok"] is True
    assert [(i["plugin"], i["name"], i["status"]) for i in ready["instances"]] == [
        ("flock", "a", "held")]
    assert alive(ready["holder_pid"])
    assert not lock_is_free(q.lock())

    status = q.status_json()
    assert status["held"] is True and status["state"] == "holding"
    assert status["holder_pid"] == ready["holder_pid"]
    assert status["since"] == ready["since"] and status["until"] == ready["until"]
    assert status["since"].endswith("Z") and status["until"] > status["since"]
    assert [i["status"] for i in status["instances"]] == ["held"]

    code, outcome = q.post_json()
    assert code == 0, outcome
    assert outcome["consistent"] is True
    [inst] = outcome["instances"]
    assert set(inst) >= {"plugin", "name", "status", "held_seconds", "metadata"}
    assert (inst["plugin"], inst["name"], inst["status"]) == ("flock", "a", "released")
    assert inst["held_seconds"] > 0
    assert inst["metadata"]["path"] == str(q.lock())
    assert lock_is_free(q.lock())

    # The record is on disk by the time post returns (restore-label may run right after).
    assert outcome["record"] == str(q.state / "runs" / f"{ready['run_id']}.json")
    record = json.loads(Path(outcome["record"]).read_text())
    assert (q.state / "latest").read_text().strip() == ready["run_id"]
    assert record["instances"][0]["status"] == "released"
    assert record["instances"][0]["metadata"] == inst["metadata"]
    assert any("released by 'post'" in line for line in record["log"])
    wait_for(lambda: not alive(ready["holder_pid"]), 30, "the holder to exit")
    wait_for(lambda: not alive(ready["guardian_pid"]), 30, "the guardian to exit")

    again = q.post()
    assert again.returncode == 2
    assert "no hold is active" in again.stderr


def test_pre_stdout_reaches_eof_while_the_hold_continues(q: Q) -> None:
    """An orchestrator reads pre's stdout until EOF: the holder must not keep it open."""
    q.toml(flock_section(q))
    proc = subprocess.Popen(
        [sys.executable, "-m", "quiesce", "pre", "--config", str(q.config), "--runtime-dir",
         str(q.rundir)], env=q.env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd="/")
    out, err = proc.communicate(timeout=60)  # hangs here if the holder inherited the pipes
    assert proc.returncode == 0, err
    assert b"holding 1 instance" in out
    assert not lock_is_free(q.lock())  # the holder lives on after pre's pipes closed
    assert q.post().returncode == 0


def test_deadline_auto_releases_and_post_reports_it(q: Q) -> None:
    q.toml("max_hold_seconds = 2\npre_timeout_seconds = 1\n" + flock_section(q, sticky=True))
    ready = q.pre_json()
    marker = Path(str(q.lock()) + ".held")
    assert marker.exists()
    wait_for(lambda: lock_is_free(q.lock()), 60, "the dead-man switch to release")
    assert not marker.exists()
    status = q.status_json()
    assert status["held"] is False and status["state"] == "auto-released"

    proc = q.post()
    assert proc.returncode == 1
    assert "may NOT be application-consistent" in proc.stderr
    assert "flock/a: auto-released" in proc.stderr
    record = json.loads((q.state / "runs" / f"{ready['run_id']}.json").read_text())
    assert record["state"] == "auto-released"
    assert record["instances"][0]["status"] == "auto-released"


def test_post_after_the_holder_exited_still_reports_auto_released(q: Q) -> None:
    q.toml("max_hold_seconds = 2\npre_timeout_seconds = 1\n" + flock_section(q))
    ready = q.pre_json()
    wait_for(lambda: q.status_json()["state"] == "auto-released", 60, "the auto-release")
    os.kill(ready["holder_pid"], signal.SIGTERM)  # e.g. a reboot before post came
    wait_for(lambda: not alive(ready["holder_pid"]), 30, "the holder to exit")
    code, outcome = q.post_json()
    assert code == 1
    assert outcome["collected_from"] == "result-file"
    assert outcome["consistent"] is False
    assert [i["status"] for i in outcome["instances"]] == ["auto-released"]
    assert q.post().returncode == 2  # collected once


def test_holder_sigkill_releases_and_guardian_recovers(q: Q) -> None:
    q.toml(flock_section(q, sticky=True))
    ready = q.pre_json()
    marker = Path(str(q.lock()) + ".held")
    assert marker.exists() and not lock_is_free(q.lock())
    os.kill(ready["holder_pid"], signal.SIGKILL)
    wait_for(lambda: lock_is_free(q.lock()), 30, "the kernel to drop the flock")
    wait_for(lambda: not marker.exists(), 60, "the guardian to undo the sticky marker")
    wait_for(lambda: not alive(ready["guardian_pid"]), 60, "the guardian to exit")
    code, outcome = q.post_json()
    assert code == 1
    [inst] = outcome["instances"]
    assert inst["status"] == "lost"
    assert "guardian" in inst["note"]
    assert "holder died" in outcome["message"]
    # The guardian also wrote the run record once the recovery was done.
    record = json.loads((q.state / "runs" / f"{ready['run_id']}.json").read_text())
    assert record["recovered_by"] == "guardian"


def test_guardian_kills_a_hung_holder_at_the_backstop(q: Q) -> None:
    q.toml("max_hold_seconds = 2\npre_timeout_seconds = 1\n" + flock_section(q, sticky=True))
    ready = q.pre_json()
    marker = Path(str(q.lock()) + ".held")
    os.kill(ready["holder_pid"], signal.SIGSTOP)  # a holder that can no longer auto-release
    # deadline (2 s) + guardian grace (10 s), generously
    wait_for(lambda: not alive(ready["holder_pid"]), 90, "the guardian to kill the holder")
    wait_for(lambda: not marker.exists(), 60, "the guardian to recover")
    assert lock_is_free(q.lock())
    code, outcome = q.post_json()
    assert code == 1
    assert outcome["instances"][0]["status"] == "lost"
    assert "killed by the guardian" in outcome["message"]


def test_second_pre_is_refused_and_the_hold_is_untouched(q: Q) -> None:
    q.toml(flock_section(q))
    ready = q.pre_json()
    second = q.pre()
    assert second.returncode == 3  # distinct: a retried hook must not read it as a failure
    assert "already active" in second.stderr and ready["run_id"] in second.stderr
    assert not lock_is_free(q.lock())
    status = q.status_json()
    assert status["run_id"] == ready["run_id"] and status["state"] == "holding"
    assert alive(ready["holder_pid"])
    code, outcome = q.post_json()
    assert code == 0 and outcome["run_id"] == ready["run_id"]


def test_one_failing_instance_releases_the_other(q: Q) -> None:
    q.toml(flock_section(q, "a", sticky=True)
           + flock_section(q, "b", fail_in="quiesce"))
    proc = q.pre()
    assert proc.returncode == 1
    assert "FAILED, nothing is held" in proc.stderr
    assert "flock/b: failed: quiesce failed: quiesce failed on purpose" in proc.stderr
    assert "flock/a: aborted" in proc.stderr
    assert lock_is_free(q.lock("a"))
    assert not Path(str(q.lock("a")) + ".held").exists()
    wait_for(lambda: not processes_mentioning(str(q.rundir)), 30, "the holder to exit")
    assert q.status_json()["held"] is False
    # The failure is recorded too (nothing was frozen yet when it was written).
    [run_id] = os.listdir(q.state / "runs")
    record = json.loads((q.state / "runs" / run_id).read_text())
    assert record["state"] == "failed"


def test_a_lost_session_is_reported_and_post_fails(q: Q) -> None:
    q.toml(flock_section(q, "a") + flock_section(q, "b"))
    q.pre_json()
    q.lock("a").unlink()  # the analogue of a server restart: the lock protects nothing now
    wait_for(lambda: {i["name"]: i["status"] for i in q.status_json()["instances"]}["a"]
             == "lost", 30, "the holder to notice the lost session")
    status = q.status_json()
    assert status["state"] == "holding"  # the other instance is still held
    assert not lock_is_free(q.lock("b"))
    code, outcome = q.post_json()
    assert code == 1
    statuses = {i["name"]: i["status"] for i in outcome["instances"]}
    assert statuses == {"a": "lost", "b": "released"}
    assert "NOT" in outcome["message"]


def test_status_when_nothing_is_held(q: Q) -> None:
    proc = q.run("status", "--runtime-dir", str(q.rundir))
    assert proc.returncode == 0
    assert "nothing is held" in proc.stdout
    env_proc = subprocess.run([sys.executable, "-m", "quiesce", "status", "--json"], check=False,
                              env={**q.env, "QUIESCE_RUNTIME_DIR": str(q.rundir)},
                              capture_output=True, text=True, timeout=60)
    state = json.loads(env_proc.stdout)
    assert state["held"] is False and state["runtime_dir"] == str(q.rundir)


def test_runtime_dir_and_socket_are_root_only(q: Q) -> None:
    q.toml(flock_section(q))
    q.pre_json()
    rundir = os.stat(q.rundir)
    sock = os.stat(q.rundir / "holder.sock")
    assert (rundir.st_uid, stat.S_IMODE(rundir.st_mode)) == (0, 0o700)
    assert stat.S_ISSOCK(sock.st_mode)
    assert (sock.st_uid, stat.S_IMODE(sock.st_mode)) == (0, 0o600)
    code = ("import socket,sys\ns=socket.socket(socket.AF_UNIX)\n"
            "try:\n    s.connect(sys.argv[1])\nexcept PermissionError:\n    sys.exit(3)\n")
    other = subprocess.run(["/usr/bin/python3", "-c", code, str(q.rundir / "holder.sock")],
                           user="nobody", timeout=30, cwd="/", check=False)
    assert other.returncode == 3
    assert q.post().returncode == 0


def test_peer_credentials_are_read_from_the_socket() -> None:
    from quiesce.hold.holder import peer_allowed, peer_uid

    left, right = socket.socketpair(socket.AF_UNIX)
    with left, right:
        assert peer_uid(left) == os.geteuid()
    assert peer_allowed(0)
    assert peer_allowed(os.geteuid())
    assert not peer_allowed(65534) or os.geteuid() == 65534


def test_a_bad_config_reports_every_problem_and_starts_nothing(q: Q) -> None:
    open_secret = q.base / "open-secret"
    open_secret.write_text("pw\n")
    os.chmod(open_secret, 0o644)
    q.toml(
        'max_hold_seconds = "30"\n'
        "max_hold = 1\n"
        f'[[flock]]\nname = "a"\npath = "{q.lock("a")}"\npassword_file = "{q.base}/missing"\n'
        f'[[flock]]\nname = "a"\npath = "{q.lock("b")}"\npassword_file = "{open_secret}"\n'
        f'sticky = "yes"\n'
        '[[sqlite]]\npath = "/x"\n',
        mode=0o640)
    proc = q.pre()
    assert proc.returncode == 2
    err = proc.stderr
    expected = [
        "mode 0640 gives permissions to group/other",  # the config itself
        f"chmod 600 {q.config}",
        "max_hold_seconds: expected an integer or a number, found the string '30' "
        "(write 30 without quotes)",
        "max_hold: unknown key (did you mean 'max_hold_seconds'?)",
        "flock[2].name: 'a' is already used by flock[1]",
        "flock[2].sticky: expected a boolean",
        "sqlite: no engine plugin named 'sqlite' is installed",
        "flock[1].password_file",
        "missing: no such file",
        f"flock[2].password_file: {open_secret}: mode 0644 gives permissions to group/other",
    ]
    missing = [text for text in expected if text not in err]
    assert not missing, err
    assert not q.rundir.exists()  # nothing was started
    assert not processes_mentioning(str(q.base))


def test_refusal_of_a_config_owned_by_another_user(q: Q) -> None:
    q.toml(flock_section(q))
    os.chown(q.config, 65534, 65534)
    proc = q.pre()
    assert proc.returncode == 2
    assert "not root" in proc.stderr and f"chown root:root {q.config}" in proc.stderr


def test_sigterm_while_holding_releases_and_post_reports_it(q: Q) -> None:
    q.toml(flock_section(q))
    ready = q.pre_json()
    os.kill(ready["holder_pid"], signal.SIGTERM)  # e.g. a shutdown before post came
    wait_for(lambda: not alive(ready["holder_pid"]), 30, "the holder to exit")
    assert lock_is_free(q.lock())
    code, outcome = q.post_json()
    assert code == 1
    [inst] = outcome["instances"]
    assert inst["status"] == "auto-released" and "SIGTERM" in inst["note"]


def test_runtime_dir_on_tmpfs_gives_no_warning(q: Q) -> None:
    q.rundir.mkdir(mode=0o700)
    subprocess.run(["mount", "-t", "tmpfs", "-o", "mode=0700,size=1m", "quiesce-test",
                    str(q.rundir)], check=True, timeout=30)
    try:
        q.toml(flock_section(q))
        ready = q.pre_json()
        assert ready["warnings"] == []
        assert q.post().returncode == 0
        wait_for(lambda: not alive(ready["holder_pid"]), 30, "the holder to exit")
        wait_for(lambda: not alive(ready["guardian_pid"]), 30, "the guardian to exit")
    finally:
        subprocess.run(["umount", str(q.rundir)], check=False, timeout=30)


def test_runtime_dir_not_on_tmpfs_is_warned_about(q: Q) -> None:
    q.toml(flock_section(q))
    proc = q.pre()
    assert proc.returncode == 0
    if "tmpfs" in subprocess.run(["findmnt", "-n", "-o", "FSTYPE", "-T", str(q.base)],
                                 capture_output=True, text=True, check=False).stdout:
        pytest.skip("/run is a tmpfs on this machine: nothing to warn about")
    assert "warning: runtime dir" in proc.stdout and "not tmpfs" in proc.stdout
    assert q.post().returncode == 0


def test_a_hold_being_set_up_answers_status_and_refuses_a_second_pre(q: Q) -> None:
    q.toml(flock_section(q, prepare_delay=3))
    first = subprocess.Popen(
        [sys.executable, "-m", "quiesce", "pre", "--config", str(q.config), "--runtime-dir",
         str(q.rundir)], env=q.env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd="/")
    try:
        wait_for((q.rundir / "holder.sock").exists, 60, "the holder's socket")
        wait_for(lambda: q.status_json().get("state") == "quiescing", 30, "state quiescing")
        second = q.pre()
        assert second.returncode == 3
        assert "already active" in second.stderr and "quiescing" in second.stderr
        _out, err = first.communicate(timeout=120)
    finally:
        if first.poll() is None:
            first.kill()
    assert first.returncode == 0, err
    assert q.status_json()["state"] == "holding"
    assert q.post().returncode == 0


def test_a_new_pre_retires_a_holder_that_auto_released(q: Q) -> None:
    q.toml("max_hold_seconds = 2\npre_timeout_seconds = 1\n" + flock_section(q))
    old = q.pre_json()
    wait_for(lambda: q.status_json()["state"] == "auto-released", 60, "the auto-release")
    new = q.pre_json()  # the next backup must not wait for the old holder's linger period
    assert new["run_id"] != old["run_id"]
    wait_for(lambda: not alive(old["holder_pid"]), 30, "the old holder to retire")
    assert not lock_is_free(q.lock())
    code, outcome = q.post_json()
    assert code == 0 and outcome["run_id"] == new["run_id"]
    # The old, uncollected hold is still on record as auto-released.
    record = json.loads((q.state / "runs" / f"{old['run_id']}.json").read_text())
    assert record["state"] == "auto-released"


def test_post_right_after_a_holder_sigkill_waits_for_the_guardian(q: Q) -> None:
    q.toml(flock_section(q, sticky=True))
    ready = q.pre_json()
    os.kill(ready["holder_pid"], signal.SIGKILL)
    code, outcome = q.post_json()  # no waiting: the guardian may still be recovering
    assert code == 1
    assert outcome["instances"][0]["status"] == "lost"
    assert not Path(str(q.lock()) + ".held").exists()


def test_a_session_that_stops_answering_does_not_delay_post_for_the_others(q: Q) -> None:
    """One server hanging in a liveness check must not keep the other instance locked.

    "b" stalls its check_alive while a file exists (a server that stopped answering); the
    holder must still take 'post' at once and release "a" while b's check is stuck.
    """
    stall = q.base / "stall"
    q.toml(flock_section(q, "a") + flock_section(q, "b", stall_checks_while=str(stall)))
    q.pre_json()
    stall.touch()
    wait_for(lambda: Path(str(stall) + ".seen").exists(), 30, "b's check to stall")
    post = subprocess.Popen(
        [sys.executable, "-m", "quiesce", "post", "--runtime-dir", str(q.rundir), "--json"],
        env=q.env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd="/")
    try:
        wait_for(lambda: lock_is_free(q.lock("a")), 60, "a to be released while b hangs")
        assert stall.exists() and post.poll() is None  # b's check is still stuck
        assert not lock_is_free(q.lock("b"))
        status = q.status_json()  # the holder still answers
        assert status["holder_pid"]
    finally:
        stall.unlink()
    out, err = post.communicate(timeout=120)
    assert post.returncode == 0, out + err
    assert {i["name"]: i["status"] for i in json.loads(out)["instances"]} == {
        "a": "released", "b": "released"}
    assert lock_is_free(q.lock("b"))


def test_a_module_first_imported_while_holding_writes_no_bytecode(q: Q) -> None:
    """Its .pyc would go next to it, maybe on a frozen filesystem: the write would block the
    holder until the thaw. The holder must never write bytecode."""
    late = q.base / "late"
    late.mkdir()
    (late / "quiesce_late_import.py").write_text("VALUE = 1\n")
    q.env.pop("PYTHONDONTWRITEBYTECODE", None)
    q.toml(flock_section(q, release_imports_from=str(late)))
    q.pre_json()
    code, outcome = q.post_json()
    assert code == 0, outcome  # the module was imported (release would have failed)
    assert not (late / "__pycache__").exists()


def test_a_pre_killed_while_quiescing_leaves_nothing_held(q: Q) -> None:
    """An orchestrator that times out kills 'pre': its caller saw a failure, so the holder
    must not keep the locks until max_hold_seconds (writers would stall for nothing)."""
    q.toml("max_hold_seconds = 300\n" + flock_section(q, quiesce_delay=2))
    pre = subprocess.Popen(
        [sys.executable, "-m", "quiesce", "pre", "--config", str(q.config), "--runtime-dir",
         str(q.rundir)], env=q.env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        cwd="/")
    wait_for(lambda: q.status_json().get("state") == "quiescing", 60, "the hold to start")
    pre.kill()
    pre.wait(30)
    # The holder notices at once (the readiness pipe's reader is gone) and abandons the
    # hold: the lock its engine still takes is released at once, never held for a snapshot.
    wait_for(lambda: q.status_json().get("state") not in ("quiescing", "busy"), 60,
             "the holder to notice that pre is gone and finish")
    assert lock_is_free(q.lock())
    code, outcome = q.post_json()
    assert code == 1
    assert outcome["consistent"] is False and outcome["state"] == "aborted"
    [inst] = outcome["instances"]
    assert inst["status"] == "late"
    assert "'pre' exited before the hold was complete" in inst["error"]


# --------------------------------------------------------------- a caller that gives up
def test_a_lock_granted_after_the_deadline_is_late_and_never_consistent(q: Q) -> None:
    """The engine ignores its deadline (quiesce_delay sleeps through it): 'pre' answers at
    its deadline, and the lock granted later is released at once and recorded as late."""
    q.toml("pre_timeout_seconds = 30\n" + flock_section(q, quiesce_delay=3))
    started = time.monotonic()
    proc = q.pre("--deadline", "1")
    took = time.monotonic() - started
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert "not every instance was held within the deadline (1 s)" in proc.stderr
    assert took < 3, took  # it answered at its deadline, not when the lock came
    # The holder waits out the late call, releases it and leaves the outcome for 'post'.
    wait_for(lambda: not processes_mentioning(str(q.rundir)), 60, "the holder to exit")
    assert lock_is_free(q.lock())
    code, outcome = q.post_json()
    assert code == 1
    assert outcome["consistent"] is False and outcome["state"] == "failed"
    [inst] = outcome["instances"]
    assert inst["status"] == "late" and "after the deadline" in inst["error"]
    record = json.loads(Path(outcome["record"]).read_text())
    assert record["consistent"] is False and record["instances"][0]["status"] == "late"
    assert record["deadline"]


def test_post_while_pre_is_acquiring_aborts_at_once(q: Q) -> None:
    """'post' comes while the lock still waits (another process holds it): post answers at
    once, "not consistent", and the lock granted later is never held for anyone."""
    waiting = q.base / "waiting"
    q.toml("pre_timeout_seconds = 60\n" + flock_section(q, lock_wait_seconds=60,
                                                        waiting_marker=str(waiting)))
    blocker = os.open(q.lock(), os.O_RDWR | os.O_CREAT, 0o600)
    fcntl.flock(blocker, fcntl.LOCK_EX)
    pre = subprocess.Popen(
        [sys.executable, "-m", "quiesce", "pre", "--config", str(q.config), "--runtime-dir",
         str(q.rundir)], env=q.env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd="/")
    try:
        # 'quiescing' can be read before the plugin is called at all; the marker says the
        # plugin is inside its lock wait (a post before any call: test_lifecycle's
        # test_abandon_before_any_call_prepares_nothing).
        wait_for(waiting.exists, 60, "the plugin to wait for the lock")
        assert q.status_json().get("state") == "quiescing"
        started = time.monotonic()
        code, outcome = q.post_json()
        assert time.monotonic() - started < 10  # it did not wait for the lock
        assert code == 1
        assert outcome["consistent"] is False and outcome["state"] == "aborted"
        assert "'post' came while 'pre' was still acquiring" in outcome["message"]
    finally:
        os.close(blocker)  # the plugin now gets its lock, after the abandon
    _out, err = pre.communicate(timeout=60)
    assert pre.returncode == 1, err
    wait_for(lambda: not processes_mentioning(str(q.rundir)), 60, "the holder to exit")
    assert lock_is_free(q.lock())
    record = json.loads((q.state / "runs" / f"{outcome['run_id']}.json").read_text())
    assert record["consistent"] is False and record["state"] == "aborted"
    assert record["instances"][0]["status"] == "late"
    # 'post' collected it already: a second post finds nothing.
    assert q.post().returncode == 2


def test_a_holder_and_guardian_both_killed_read_as_lost_not_as_no_hold(q: Q) -> None:
    q.toml(flock_section(q))
    ready = q.pre_json()
    os.kill(ready["guardian_pid"], signal.SIGKILL)
    os.kill(ready["holder_pid"], signal.SIGKILL)
    wait_for(lambda: not alive(ready["holder_pid"]) and not alive(ready["guardian_pid"]), 30,
             "both to die")
    assert q.status_json()["state"] == "lost"
    code, outcome = q.post_json()
    assert code == 1, outcome
    assert outcome["consistent"] is False and outcome["state"] == "lost"
    assert ready["run_id"] in outcome["message"] and "died" in outcome["message"]
    record = json.loads(Path(outcome["record"]).read_text())
    assert record["run_id"] == ready["run_id"] and record["consistent"] is False
    again = q.post()
    assert again.returncode == 2 and "no hold is active" in again.stderr


def test_the_run_id_of_quiesce_run_names_the_hold_and_guards_its_release(q: Q) -> None:
    from quiesce.hold.records import new_run_id

    run_id = new_run_id()
    q.toml(flock_section(q))
    q.env["QUIESCE_RUN_ID"] = run_id
    ready = q.pre_json()
    assert ready["run_id"] == run_id
    # A post of another run must not release (or report as its own) this hold.
    q.env["QUIESCE_RUN_ID"] = new_run_id()
    other = q.post()
    assert other.returncode == 2 and f"belongs to run {run_id}" in other.stderr
    assert not lock_is_free(q.lock())
    q.env["QUIESCE_RUN_ID"] = run_id
    code, outcome = q.post_json()
    assert code == 0 and outcome["run_id"] == run_id
    # A retried pre-script of the same run: a new attempt id, the first record kept.
    again = q.pre_json()
    assert again["run_id"] == f"{run_id}_2"
    code, outcome = q.post_json()
    assert code == 0 and outcome["run_id"] == f"{run_id}_2"
    assert (q.state / "runs" / f"{run_id}.json").exists()


# --------------------------------------------------------------- records and slow clients
@contextlib.contextmanager
def small_tmpfs(path: Path) -> Iterator[Path]:
    """A 1 MiB tmpfs of the test's own, to fill or remount read-only; always unmounted."""
    path.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m,mode=0700", "quiesce-test", str(path)],
                   check=True)
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], check=False)


def test_pre_refuses_a_state_dir_it_cannot_write(q: Q) -> None:
    with small_tmpfs(q.base / "ro") as ro:
        q.state = ro / "state"
        q.toml(flock_section(q))
        subprocess.run(["mount", "-o", "remount,ro", str(ro)], check=True)
        proc = q.pre()
        assert proc.returncode == 2, proc.stdout + proc.stderr
        assert "cannot write run records" in proc.stderr and "fix:" in proc.stderr
        assert lock_is_free(q.lock())
        assert not processes_mentioning(str(q.rundir))


def test_post_fails_when_the_record_cannot_be_written_and_keeps_the_metadata(q: Q) -> None:
    with small_tmpfs(q.base / "full") as full:
        q.state = full / "state"
        q.toml(flock_section(q))
        ready = q.pre_json()
        subprocess.run(["mount", "-o", "remount,ro", str(full)], check=True)
        code, outcome = q.post_json()
        assert code == 1, outcome  # the hold was fine, but its record is not on disk
        assert outcome["consistent"] is True
        assert outcome["record"] is None
        assert "not written" in outcome["record_error"]
        assert "Read-only" in outcome["record_error"]
        # The caller can still keep the metadata: it is in the answer itself.
        assert outcome["instances"][0]["metadata"]["path"] == str(q.lock())
        assert lock_is_free(q.lock())
        # The holder keeps trying: once the state dir is writable again, the record appears.
        subprocess.run(["mount", "-o", "remount,rw", str(full)], check=True)
        record = q.state / "runs" / f"{ready['run_id']}.json"
        wait_for(record.exists, 60, "the holder's retry to write the record")
        assert json.loads(record.read_text())["consistent"] is True


def test_a_slow_client_cannot_postpone_the_dead_man_release(q: Q) -> None:
    """A client trickling one byte a second must not stop max_hold_seconds from firing."""
    q.toml("max_hold_seconds = 3\npre_timeout_seconds = 2\n" + flock_section(q))
    q.pre_json()
    stop = time.monotonic() + 30
    trickling = True

    def trickle() -> None:
        while time.monotonic() < stop and trickling:
            with contextlib.suppress(OSError), \
                    socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
                sock.connect(str(q.rundir / "holder.sock"))
                for byte in b'{"op": "status"}':
                    if not trickling:
                        return
                    sock.send(bytes([byte]))
                    time.sleep(1.0)

    import threading

    client = threading.Thread(target=trickle, daemon=True)
    client.start()
    try:
        wait_for(lambda: lock_is_free(q.lock()), 20, "the dead-man release")
        assert client.is_alive()  # released while the slow client was still sending
    finally:
        trickling = False
        client.join(5)
    code, outcome = q.post_json()
    assert code == 1 and outcome["instances"][0]["status"] == "auto-released"
