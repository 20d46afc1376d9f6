"""Whole `quiesce run` / `quiesce check` cycles through the CLI, on real loop-mounted ext4 and
xfs filesystems with real FIFREEZE. Every run passes --freeze-mount: nothing else is frozen."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from helpers import trusted_python
from quiesce.freezing.freeze import discover_mounts, freeze_path, is_frozen, thaw_path

pytestmark = pytest.mark.timeout(240)

# The snapshot command: proves every mount it is given is frozen right now (FIFREEZE on a
# frozen filesystem fails with EBUSY) and that it got exactly the mounts the test expects.
VERIFIER = """\
import errno, fcntl, os, sys
FIFREEZE = 0xC0045877
mounts = os.environ["QUIESCE_FROZEN_MOUNTS"].split("\\n")
frozen = []
for m in mounts:
    fd = os.open(m, os.O_RDONLY | os.O_DIRECTORY)
    try:
        fcntl.ioctl(fd, FIFREEZE, 0)
    except OSError as exc:
        frozen.append(exc.errno == errno.EBUSY)
    else:
        fcntl.ioctl(fd, 0xC0045878, 0)  # it was not frozen: undo our freeze, report it
        frozen.append(False)
    os.close(fd)
print("mounts=" + ",".join(sorted(mounts)))
print("run_id=" + os.environ["QUIESCE_RUN_ID"])
print("all_frozen=" + str(all(frozen) and bool(frozen)))
with open(sys.argv[1], "a") as fh:  # the order file lives on /run, never frozen here
    fh.write("snapshot\\n")
sys.exit(0 if all(frozen) and frozen else 7)
"""


class Env:
    """A root-owned 0700 directory with a config, pre/post scripts and helpers to run quiesce."""

    def __init__(self, root: Path, cmd: list[str]) -> None:
        self.root = root
        self.cmd = cmd
        self.order = root / "order"
        self.config = root / "VMSnapshotScriptPluginConfig.json"
        self.status_file = root / "status.json"
        self.mounts: list[str] = []
        self.script("pre.sh", f'echo pre >> {self.order}\necho "pre ran with $# args"\n')
        self.script("post.sh", f"echo post >> {self.order}\n")
        self.verifier = root / "verify.py"
        self.verifier.write_text(VERIFIER)
        self.write_config()

    def script(self, name: str, body: str, mode: int = 0o700) -> Path:
        path = self.root / name
        path.write_text("#!/bin/sh\n" + textwrap.dedent(body))
        os.chmod(path, mode)
        return path

    def write_config(self, **overrides: Any) -> None:
        doc: dict[str, Any] = {
            "pluginName": "ScriptRunner",
            "preScriptLocation": str(self.root / "pre.sh"),
            "postScriptLocation": str(self.root / "post.sh"),
            "preScriptParams": [],
            "postScriptParams": [],
            "preScriptNoOfRetries": 0,
            "postScriptNoOfRetries": 0,
            "timeoutInSeconds": 30,
            "continueBackupOnFailure": True,
            "fsFreezeEnabled": True,
        }
        doc.update(overrides)
        self.write_config_text(json.dumps(doc))

    def write_config_text(self, text: str) -> None:
        self.config.write_text(text)
        os.chmod(self.config, 0o600)

    @property
    def verify_command(self) -> str:
        return f"{sys.executable} {self.verifier} {self.order}"

    def argv(self, *extra: str, snapshot: str | None = "verify") -> list[str]:
        assert self.mounts, "tests must always limit freezing with --freeze-mount"
        argv = [*self.cmd, "run", "--config", str(self.config), "--json",
                "--status-file", str(self.status_file), "--freeze-timeout", "30"]
        for m in self.mounts:
            argv += ["--freeze-mount", m]
        if snapshot == "verify":
            argv += ["--snapshot-command", self.verify_command]
        elif snapshot is not None:
            argv += ["--snapshot-command", snapshot]
        return [*argv, *extra]

    def run(self, *extra: str, snapshot: str | None = "verify",
            timeout: float = 120) -> tuple[int, dict[str, Any], str]:
        proc = subprocess.run(self.argv(*extra, snapshot=snapshot), capture_output=True,
                              text=True, timeout=timeout, check=False)
        try:
            status = json.loads(proc.stdout)
        except json.JSONDecodeError:
            pytest.fail(f"no JSON on stdout (rc {proc.returncode}):\n{proc.stdout}\n"
                        f"{proc.stderr}")
        assert json.loads(self.status_file.read_text()) == status
        return proc.returncode, status, proc.stderr

    def ran(self) -> list[str]:
        return self.order.read_text().split() if self.order.exists() else []

    def assert_thawed(self) -> None:
        for m in self.mounts:
            assert not is_frozen(m), f"{m} was left frozen"


@pytest.fixture
def env(root_dir: Path, quiesce_cmd: list[str]) -> Env:
    return Env(root_dir, quiesce_cmd)


@pytest.fixture
def two_mounts(env: Env, loop_disk_factory: Callable[..., Any]) -> Iterator[Env]:
    disks = [loop_disk_factory("ext4", name="data"), loop_disk_factory("xfs", name="wal")]
    env.mounts = [str(d.mount_point) for d in disks]
    yield env
    for m in env.mounts:  # whatever happened, nothing stays frozen (teardown also thaws)
        with contextlib.suppress(OSError):
            thaw_path(m)


def errors_by_code(status: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {e["code"]: e for e in status["errors"]}


def phase(status: dict[str, Any], name: str) -> dict[str, Any]:
    return next(p for p in status["phases"] if p["name"] == name)


def test_full_cycle_freezes_both_mounts_during_the_snapshot(two_mounts: Env) -> None:
    env = two_mounts
    rc, status, stderr = env.run()
    assert rc == 0, stderr
    assert status["consistency"] == "application"
    assert status["snapshot_taken"] is True and status["exit_code"] == 0
    assert status["errors"] == []
    assert env.ran() == ["pre", "snapshot", "post"]
    assert sorted(status["freeze"]["mounts"]) == sorted(env.mounts)
    assert status["freeze"]["window_ms"] > 0
    assert status["freeze"]["watchdog_fired"] is False
    out = status["snapshot"]["output"]
    assert "stdout: all_frozen=True" in out
    assert f"stdout: mounts={','.join(sorted(env.mounts))}" in out
    assert f"stdout: run_id={status['run_id']}" in out
    names = [p["name"] for p in status["phases"]]
    assert names == ["validate", "pre", "sync", "freeze", "snapshot", "thaw", "post"]
    for p in status["phases"]:
        assert p["status"] == "ok", p
        assert p["start"] and p["duration_ms"] is not None
        assert p["duration"] == pytest.approx(p["duration_ms"] / 1000, abs=1e-6)
    assert phase(status, "pre")["attempts"] == 1
    assert "pre stdout: pre ran with 0 args" in stderr  # script output in the run log
    env.assert_thawed()
    assert not [f for f in os.listdir(env.root) if f.endswith(".tmp")]


def test_run_ids_are_unique_and_time_sortable(two_mounts: Env) -> None:
    ids = [two_mounts.run(snapshot=None)[1]["run_id"] for _ in range(3)]
    assert len(set(ids)) == 3 and ids == sorted(ids)


def test_human_report_without_json(two_mounts: Env) -> None:
    env = two_mounts
    env.script("post.sh", "exit 3\n")
    argv = [a for a in env.argv() if a != "--json"]
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=120, check=False)
    assert proc.returncode == 1
    lines = proc.stdout.splitlines()
    for name in ("validate", "pre", "sync", "freeze", "snapshot", "thaw", "post"):
        assert any(line.split()[:1] == [name] for line in lines), proc.stdout
    assert "Post-ScriptExecutionFailed (301)" in proc.stdout
    assert "fix:" in proc.stdout


def test_pre_failure_with_continue_gives_a_filesystem_consistent_snapshot(
        two_mounts: Env) -> None:
    env = two_mounts
    env.script("pre.sh", f"echo pre >> {env.order}\nexit 5\n")
    rc, status, _ = env.run()
    assert rc == 1
    assert status["consistency"] == "filesystem" and status["snapshot_taken"] is True
    error = errors_by_code(status)["Pre-ScriptExecutionFailed"]
    assert error["number"] == 300 and error["phase"] == "pre" and error["hint"]
    assert env.ran() == ["pre", "snapshot", "post"]  # the post-script still ran
    env.assert_thawed()


def test_pre_failure_without_continue_takes_no_snapshot_but_runs_post(two_mounts: Env) -> None:
    env = two_mounts
    env.script("pre.sh", f"echo pre >> {env.order}\nexit 5\n")
    env.write_config(continueBackupOnFailure=False)
    rc, status, _ = env.run()
    assert rc == 2
    assert status["consistency"] == "none" and status["snapshot_taken"] is False
    assert "Pre-ScriptExecutionFailed" in errors_by_code(status)
    assert env.ran() == ["pre", "post"]  # no snapshot, but post after the failed pre
    assert status["freeze"]["mounts"] == [] and status["freeze"]["window_ms"] is None
    env.assert_thawed()


def test_pre_failure_with_freeze_off_is_crash_consistent(two_mounts: Env) -> None:
    env = two_mounts
    env.script("pre.sh", "exit 1\n")
    env.write_config(fsFreezeEnabled=False)
    rc, status, _ = env.run(snapshot=f"{sys.executable} -c pass")
    assert rc == 1
    assert status["consistency"] == "crash" and status["snapshot_taken"] is True
    assert phase(status, "freeze")["status"] == "disabled"
    assert status["freeze"]["enabled"] is False and status["freeze"]["mounts"] == []


def test_freeze_off_and_scripts_ok_is_application_consistent(two_mounts: Env) -> None:
    two_mounts.write_config(fsFreezeEnabled=False)
    rc, status, _ = two_mounts.run(snapshot=None)
    assert rc == 0 and status["consistency"] == "application"
    assert status["snapshot"]["provider"] == "external"


def test_pre_timeout_kills_the_script_and_its_child_then_post_runs(two_mounts: Env) -> None:
    env = two_mounts
    pidfile = env.root / "child.pid"
    env.script("pre.sh", f"""\
        echo pre >> {env.order}
        sleep 300 &
        echo $! > {pidfile}
        sleep 300
        """)
    env.write_config(timeoutInSeconds=2, preScriptNoOfRetries=3)
    try:
        rc, status, _ = env.run()
        assert rc == 1 and status["consistency"] == "filesystem"
        error = errors_by_code(status)["Pre-ScriptTimeout"]
        assert error["number"] == 308
        assert phase(status, "pre")["status"] == "timeout"
        assert phase(status, "pre")["attempts"] == 1  # the deadline covers all attempts
        assert env.ran() == ["pre", "snapshot", "post"]
        child = int(pidfile.read_text())
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and Path(f"/proc/{child}").exists():
            time.sleep(0.05)
        assert not Path(f"/proc/{child}").exists(), "the pre-script's child survived"
    finally:
        with contextlib.suppress(ValueError, OSError):
            os.kill(int(pidfile.read_text()), signal.SIGKILL)


def test_retries_rerun_the_pre_script(two_mounts: Env) -> None:
    env = two_mounts
    counter = env.root / "count"
    env.script("pre.sh", f"""\
        echo x >> {counter}
        [ "$(wc -l < {counter})" -ge 3 ]
        """)
    env.write_config(preScriptNoOfRetries=2)
    rc, status, _ = env.run()
    assert rc == 0, status["errors"]
    assert phase(status, "pre")["attempts"] == 3
    assert phase(status, "pre")["exit_codes"] == [1, 1, 0]
    for attempt in phase(status, "pre")["attempt_results"]:
        assert attempt["duration"] == pytest.approx(attempt["duration_ms"] / 1000, abs=1e-6)
    assert counter.read_text().count("x") == 3


def test_params_reach_the_scripts_verbatim(two_mounts: Env) -> None:
    env = two_mounts
    out = env.root / "argv.json"
    path = env.root / "pre.py"
    path.write_text(f"#!{trusted_python()}\nimport json, sys\n"
                    f"open({str(out)!r}, 'w').write(json.dumps(sys.argv[1:]))\n")
    os.chmod(path, 0o700)
    params = ["a b", "", "'q'", '"d"', "$(touch /run/quiesce-pwned)", "`id`", "*", ""]
    env.write_config(preScriptLocation=str(path), preScriptParams=params)
    rc, _, _ = env.run()
    assert rc == 0
    assert json.loads(out.read_text()) == params
    assert not Path("/run/quiesce-pwned").exists()


def test_post_failure_keeps_the_snapshot_but_exits_1(two_mounts: Env) -> None:
    env = two_mounts
    env.script("post.sh", "exit 9\n")
    rc, status, _ = env.run()
    assert rc == 1
    assert status["snapshot_taken"] is True and status["consistency"] == "application"
    assert errors_by_code(status)["Post-ScriptExecutionFailed"]["number"] == 301


def test_failed_snapshot_command_means_no_snapshot(two_mounts: Env) -> None:
    env = two_mounts
    rc, status, _ = env.run(snapshot="/bin/false")
    assert rc == 2 and status["snapshot_taken"] is False and status["consistency"] == "none"
    assert "SnapshotFailed" in errors_by_code(status)
    assert env.ran() == ["pre", "post"]
    env.assert_thawed()


def test_invalid_config_runs_nothing(two_mounts: Env) -> None:
    env = two_mounts
    env.write_config(timeoutInSeconds="30", fsFreezeEnabld=True)
    rc, status, _ = env.run()
    assert rc == 2 and status["snapshot_taken"] is False and status["consistency"] == "none"
    codes = {(e["code"], e["number"]) for e in status["errors"]}
    assert codes == {("IncorrectJSONConfigFile", 305)}
    messages = " ".join(e["message"] + " " + e["hint"] for e in status["errors"])
    assert "write 30 without quotes" in messages and "fsFreezeEnabled" in messages
    assert env.ran() == []
    assert phase(status, "pre")["status"] == "skipped"


@pytest.mark.parametrize("text", ["{", '{"pluginName": "ScriptRunner"} x', "[]"])
def test_malformed_config_runs_nothing(two_mounts: Env, text: str) -> None:
    two_mounts.write_config_text(text)
    rc, status, _ = two_mounts.run()
    assert rc == 2 and status["errors"][0]["code"] == "IncorrectJSONConfigFile"
    assert two_mounts.ran() == []


def test_unsafe_config_file_runs_nothing(two_mounts: Env) -> None:
    env = two_mounts
    os.chmod(env.config, 0o644)
    rc, status, _ = env.run()
    assert rc == 2
    (error,) = status["errors"]
    assert error["code"] == "IncorrectJSONConfigFile" and "chmod 600" in error["hint"]
    assert env.ran() == []


def test_missing_and_unsafe_scripts_are_all_reported_and_nothing_runs(two_mounts: Env) -> None:
    env = two_mounts
    env.write_config(preScriptLocation=str(env.root / "nope.sh"))
    os.chmod(env.root / "post.sh", 0o755)
    rc, status, _ = env.run()
    assert rc == 2
    codes = errors_by_code(status)
    assert codes["Pre-ScriptNotFound"]["number"] == 302
    assert codes["InsufficientPermissionforPost-Script"]["number"] == 307
    assert "chmod 700" in codes["InsufficientPermissionforPost-Script"]["hint"]
    assert env.ran() == []


def test_unsafe_pre_script_blocks_the_run(two_mounts: Env) -> None:
    env = two_mounts
    os.chown(env.root / "pre.sh", 65534, 65534)
    rc, status, _ = env.run()
    assert rc == 2
    assert errors_by_code(status)["InsufficientPermissionforPre-Script"]["number"] == 306
    assert env.ran() == []


def test_status_file_in_a_missing_directory_runs_nothing(two_mounts: Env) -> None:
    env = two_mounts
    argv = env.argv()
    argv[argv.index("--status-file") + 1] = str(env.root / "no-such-dir" / "status.json")
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=120, check=False)
    status = json.loads(proc.stdout)  # the status still reaches stdout
    assert proc.returncode == 2 and status["snapshot_taken"] is False
    (error,) = status["errors"]
    assert error["message"].startswith("--status-file") and "mkdir -p" in error["hint"]
    assert env.ran() == []
    env.assert_thawed()


def test_bad_freeze_mount_runs_nothing(env: Env) -> None:
    env.mounts = [str(env.root)]  # a directory on /, not a mount point: refused, not frozen
    rc, status, _ = env.run()
    assert rc == 2 and "FreezeFailed" in errors_by_code(status)
    assert env.ran() == []


def test_one_mount_failing_to_freeze_thaws_the_others(two_mounts: Env) -> None:
    env = two_mounts
    order = [m.mount_point for m in discover_mounts(env.mounts)]
    busy, good = order[-1], order[0]  # the good one is frozen first, then must be undone
    freeze_path(busy)
    try:
        env.write_config(continueBackupOnFailure=False)
        rc, status, _ = env.run()
        assert is_frozen(busy)  # still ours: the runner did not thaw what it did not freeze
    finally:
        thaw_path(busy)
    assert rc == 2 and status["snapshot_taken"] is False
    error = errors_by_code(status)["FreezeFailed"]
    assert busy in error["message"] and "fsfreeze -u" in error["hint"]
    assert not is_frozen(good)
    assert env.ran() == ["pre", "post"]


def test_failed_freeze_with_continue_is_crash_consistent(two_mounts: Env) -> None:
    env = two_mounts
    busy = env.mounts[0]
    freeze_path(busy)
    try:
        rc, status, _ = env.run(snapshot=f"{sys.executable} -c pass")
    finally:
        thaw_path(busy)
    assert rc == 1 and status["consistency"] == "crash" and status["snapshot_taken"] is True
    env.assert_thawed()


def test_runner_sigkilled_while_frozen_is_thawed_by_the_watchdog(two_mounts: Env) -> None:
    env = two_mounts
    ready = env.root / "snapshot.ready"
    pidfile = env.root / "snapshot.pid"
    snap = env.root / "slow-snapshot.sh"
    snap.write_text(f"#!/bin/sh\necho $$ > {pidfile}\ntouch {ready}\nexec sleep 300\n")
    os.chmod(snap, 0o700)
    freeze_timeout = 5
    argv = env.argv(snapshot=str(snap))
    argv[argv.index("--freeze-timeout") + 1] = str(freeze_timeout)
    proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        end = time.monotonic() + 60
        while not ready.exists():
            assert proc.poll() is None, "the runner ended before the snapshot step"
            assert time.monotonic() < end, "the snapshot step never started"
            time.sleep(0.05)
        for m in env.mounts:
            assert is_frozen(m)
        proc.kill()  # SIGKILL: no finally, no thaw from the runner
        proc.wait(timeout=30)
        killed_at = time.monotonic()
        while any(is_frozen(m) for m in env.mounts):
            assert time.monotonic() - killed_at < freeze_timeout + 20, "left frozen"
            time.sleep(0.2)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        with contextlib.suppress(ValueError, OSError):
            os.killpg(int(pidfile.read_text()), signal.SIGKILL)


def test_snapshot_longer_than_the_freeze_window_is_killed_and_thawed(two_mounts: Env) -> None:
    env = two_mounts
    argv_extra: list[str] = []
    pidfile = env.root / "snapshot.pid"
    snap = env.root / "slow-snapshot.sh"
    snap.write_text(f"#!/bin/sh\necho $$ > {pidfile}\nexec sleep 300\n")
    os.chmod(snap, 0o700)
    argv = env.argv(*argv_extra, snapshot=str(snap))
    argv[argv.index("--freeze-timeout") + 1] = "3"
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=120, check=False)
    status = json.loads(proc.stdout)
    assert proc.returncode == 2 and status["snapshot_taken"] is False
    assert phase(status, "snapshot")["status"] == "timeout"
    assert status["freeze"]["watchdog_fired"] is False  # the runner thawed before its deadline
    env.assert_thawed()
    pid = int(pidfile.read_text())
    assert not Path(f"/proc/{pid}").exists() or \
        Path(f"/proc/{pid}/stat").read_text().split(") ")[1][0] == "Z"


def test_sigterm_in_the_window_is_deferred_until_after_the_thaw(two_mounts: Env) -> None:
    env = two_mounts
    ready = env.root / "snapshot.ready"
    snap = env.root / "snap.sh"
    snap.write_text(f"#!/bin/sh\ntouch {ready}\nsleep 1\n")
    os.chmod(snap, 0o700)
    proc = subprocess.Popen(env.argv(snapshot=str(snap)), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    try:
        end = time.monotonic() + 60
        while not ready.exists():
            assert time.monotonic() < end and proc.poll() is None
            time.sleep(0.02)
        proc.send_signal(signal.SIGTERM)
        out, _ = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    status = json.loads(out)
    assert status["snapshot_taken"] is True  # the snapshot finished, then the thaw
    assert "Interrupted" in errors_by_code(status)
    assert env.ran() == ["pre", "post"]  # post ran even though interrupted
    assert proc.returncode == 1
    env.assert_thawed()


# -- quiesce check --------------------------------------------------------------------------


def run_check(env: Env) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*env.cmd, "check", "--config", str(env.config)],
                          capture_output=True, text=True, timeout=60, check=False)


def test_check_passes_a_good_config_and_lists_mounts(two_mounts: Env) -> None:
    proc = run_check(two_mounts)
    assert proc.returncode == 0, proc.stdout
    assert "would freeze" in proc.stdout
    for m in two_mounts.mounts:
        assert m in proc.stdout
    assert two_mounts.ran() == []
    two_mounts.assert_thawed()


def test_check_limited_by_freeze_mount_lists_only_those_in_freeze_order(
        two_mounts: Env) -> None:
    env = two_mounts
    argv = [*env.cmd, "check", "--config", str(env.config)]
    for m in env.mounts:
        argv += ["--freeze-mount", m]
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=60, check=False)
    assert proc.returncode == 0, proc.stdout
    listed = [line.split()[0] for line in proc.stdout.splitlines() if line.startswith("    ")]
    assert listed == [m.mount_point for m in discover_mounts(env.mounts)]  # nothing else
    bad = subprocess.run([*env.cmd, "check", "--config", str(env.config), "--freeze-mount",
                          str(env.root)], capture_output=True, text=True, timeout=60,
                         check=False)
    assert bad.returncode == 2 and "FreezeFailed" in bad.stdout and "not a mount point" in \
        bad.stdout
    two_mounts.assert_thawed()


def test_check_notes_a_script_that_azure_would_run_under_sh(env: Env) -> None:
    path = env.root / "pre.py"
    path.write_text(f"#!{trusted_python()}\nprint('hi')\n")
    os.chmod(path, 0o700)
    env.write_config(preScriptLocation=str(path))
    proc = run_check(env)
    assert proc.returncode == 0, proc.stdout  # a note, not a problem
    (note,) = [line for line in proc.stdout.splitlines() if line.startswith("note:")]
    assert str(path) in note and "sh <script>" in note
    env.write_config()  # the #!/bin/sh scripts of the fixture: no note
    assert "note:" not in run_check(env).stdout


def test_check_reports_every_problem_with_code_and_fix(env: Env) -> None:
    env.write_config(timeoutInSeconds=0, preScriptLocation=str(env.root / "missing.sh"))
    os.chmod(env.root / "post.sh", 0o604)
    proc = run_check(env)
    assert proc.returncode == 2
    out = proc.stdout
    assert "IncorrectJSONConfigFile (305)" in out
    assert "Pre-ScriptNotFound (302)" in out
    assert "InsufficientPermissionforPost-Script (307)" in out
    assert out.count("fix:") >= 3
    assert env.ran() == []


def test_check_refuses_a_script_without_interpreter_line(env: Env) -> None:
    (env.root / "pre.sh").write_text("echo no shebang\n")
    proc = run_check(env)
    assert proc.returncode == 2 and "#!/bin/sh" in proc.stdout


def test_a_misspelt_interpreter_is_found_before_anything_runs(two_mounts: Env) -> None:
    env = two_mounts
    env.script("post.sh", "")
    (env.root / "post.sh").write_text("#!/bin/shh\necho post\n")  # the classic typo
    proc = run_check(env)
    assert proc.returncode == 2 and "interpreter /bin/shh does not exist" in proc.stdout
    rc, status, _ = env.run()
    assert rc == 2 and env.ran() == []  # not even the pre-script: post could never run
    error = errors_by_code(status)["Post-ScriptExecutionFailed"]
    assert error["phase"] == "validate" and "/bin/shh" in error["message"]


@pytest.mark.parametrize("how", ["directory owned by a user", "group-writable file",
                                 "found by env on PATH"])
def test_an_interpreter_someone_else_could_replace_is_refused(env: Env, how: str) -> None:
    # Honouring the shebang makes the interpreter part of what root runs: a copy of sh that
    # another user could rewrite would let that user run anything as root.
    userbin = env.root / "userbin"
    userbin.mkdir()
    os.chmod(userbin, 0o755)
    interpreter = userbin / "mysh"
    shutil.copy("/bin/sh", interpreter)
    os.chmod(interpreter, 0o755)
    extra_env = {}
    shebang = f"#!{interpreter}"
    if how == "directory owned by a user":
        os.chown(userbin, 65534, 65534)
    elif how == "group-writable file":
        os.chmod(interpreter, 0o775)
    else:
        os.chown(userbin, 65534, 65534)
        shebang = "#!/usr/bin/env mysh"
        extra_env["PATH"] = f"{userbin}:/usr/bin:/bin"
    (env.root / "pre.sh").write_text(f"{shebang}\necho pre >> {env.order}\n")
    proc = subprocess.run([*env.cmd, "check", "--config", str(env.config)], capture_output=True,
                          text=True, timeout=60, check=False, env={**os.environ, **extra_env})
    assert proc.returncode == 2 and "not safe to run as root" in proc.stdout, proc.stdout
    env.mounts = [str(env.root)]  # never reached: validation stops first
    done = subprocess.run(env.argv(), capture_output=True, text=True, timeout=60, check=False,
                          env={**os.environ, **extra_env})
    assert done.returncode == 2 and env.ran() == []
    assert "not safe to run as root" in done.stdout


def test_check_missing_config(env: Env) -> None:
    env.config.unlink()
    proc = run_check(env)
    assert proc.returncode == 2 and "IncorrectJSONConfigFile" in proc.stdout


def _signal_once_ready(env: Env, ready: Path,
                      signals: list[int]) -> tuple[int, dict[str, Any], str]:
    """Start the cycle, send ``signals`` (0.2 s apart) once a script has made ``ready``;
    (exit code, status JSON, stderr)."""
    proc = subprocess.Popen(env.argv(), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)
    try:
        end = time.monotonic() + 60
        while not ready.exists():
            assert time.monotonic() < end and proc.poll() is None
            time.sleep(0.02)
        for signum in signals:
            proc.send_signal(signum)
            time.sleep(0.2)
        out, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    return proc.returncode, json.loads(out), err


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGHUP])
def test_sigterm_during_the_pre_script_stops_the_cycle_but_runs_post(two_mounts: Env,
                                                                     signum: int) -> None:
    # SIGHUP too: a dropped SSH session must not skip the post-script.
    env = two_mounts
    ready = env.root / "pre.ready"
    env.script("pre.sh", f"echo pre >> {env.order}\ntouch {ready}\nexec sleep 300\n")
    rc, status, _ = _signal_once_ready(env, ready, [signum])
    assert rc == 2 and status["snapshot_taken"] is False
    assert errors_by_code(status)["Interrupted"]["phase"] == "pre"
    assert phase(status, "pre")["status"] == "interrupted"
    assert env.ran() == ["pre", "post"]
    env.assert_thawed()


def _signal_during_post(env: Env, signals: list[int]) -> tuple[int, dict[str, Any], str]:
    ready = env.root / "post.ready"
    done = env.root / "post.done"
    env.script("post.sh", f"echo post >> {env.order}\ntouch {ready}\nsleep 2\n"
                          f"touch {done}\n")
    return _signal_once_ready(env, ready, signals)


def test_a_stop_signal_during_the_post_script_lets_it_finish(two_mounts: Env) -> None:
    # The post-script is what releases the databases: Ctrl-C must not cut it short.
    rc, status, err = _signal_during_post(two_mounts, [signal.SIGINT])
    assert (two_mounts.root / "post.done").exists(), "the post-script was cut short"
    assert phase(status, "post")["status"] == "ok"
    error = errors_by_code(status)["Interrupted"]
    assert error["phase"] == "post" and "let finish" in error["message"]
    assert rc == 1 and status["snapshot_taken"] is True
    assert "send it again" in err


def test_a_second_stop_signal_stops_the_post_script(two_mounts: Env) -> None:
    env = two_mounts
    env.write_config(timeoutInSeconds=30)
    rc, status, _ = _signal_during_post(env, [signal.SIGINT, signal.SIGTERM])
    assert not (env.root / "post.done").exists()
    assert phase(status, "post")["status"] == "interrupted"
    assert errors_by_code(status)["Interrupted"]["phase"] == "post"
    assert rc == 1
