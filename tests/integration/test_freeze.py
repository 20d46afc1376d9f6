"""Real FIFREEZE/FITHAW on loop-mounted filesystems the tests create (never / or the host's).

Every disk comes from ``loop_disk_factory``, whose teardown thaws, unmounts and detaches even
when a test fails; helpers here that mount or freeze something extra undo it in ``finally``.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from helpers import wait_for
from quiesce.errors import FreezeError
from quiesce.freezing.freeze import (
    FreezeSession,
    discover_mounts,
    freeze_path,
    is_frozen,
    thaw_path,
)

pytestmark = pytest.mark.usefixtures("require_root")

# Generous: the machine is shared and slow at times. These bound waits; they assert no speed.
WAIT = 60.0


def process_gone(pid: int) -> bool:
    """True when ``pid`` has exited (gone, or a zombie waiting for its parent)."""
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii") as fh:
            state = fh.read().rsplit(")", 1)[1].split()[0]
    except FileNotFoundError:
        return True
    return state in ("Z", "X")


def kill_if_watchdog(pid: int | None) -> None:
    """Test cleanup: kill a leftover watchdog, checking first that the pid is one."""
    if pid is None or process_gone(pid):
        return
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as fh:
            cmdline = fh.read()
    except FileNotFoundError:
        return
    if b"quiesce.freezing.watchdog" in cmdline or b"quiesce/watchdog.py" in cmdline:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)


def children(pid: int) -> list[int]:
    try:
        with open(f"/proc/{pid}/task/{pid}/children", encoding="ascii") as fh:
            return [int(p) for p in fh.read().split()]
    except FileNotFoundError:
        return []


def start_writer(path: Path) -> subprocess.Popen[str]:
    """A process that opens ``path`` now, writes on "go" and says when the write returned."""
    code = textwrap.dedent("""
        import os, sys
        fd = os.open(sys.argv[1], os.O_WRONLY | os.O_CREAT)
        print("opened", flush=True)
        sys.stdin.readline()
        os.write(fd, b"x" * 4096)
        os.fsync(fd)
        print("written", flush=True)
    """)
    return subprocess.Popen([sys.executable, "-c", code, str(path)], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, text=True)


@pytest.mark.parametrize("fstype", ["ext4", "xfs"])
def test_freeze_blocks_writers_until_thaw(loop_disk_factory, fstype: str) -> None:
    disk = loop_disk_factory(fstype)
    mounts = discover_mounts([str(disk.mount_point)])
    assert [m.fstype for m in mounts] == [fstype]
    session = FreezeSession(mounts, timeout=120)
    writer = start_writer(disk.mount_point / "file")
    try:
        assert writer.stdout is not None and writer.stdin is not None
        assert writer.stdout.readline().strip() == "opened"
        session.freeze()
        assert session.frozen == mounts
        assert session.watchdog_pid is not None
        assert is_frozen(str(disk.mount_point))  # FIFREEZE from another fd: EBUSY
        writer.stdin.write("go\n")
        writer.stdin.flush()
        # it must still be blocked in write() a while later: the filesystem is frozen
        with pytest.raises(subprocess.TimeoutExpired):
            writer.wait(timeout=1.0)
        watchdog = session.watchdog_pid
        session.thaw()
        assert writer.stdout.readline().strip() == "written"
        assert writer.wait(timeout=WAIT) == 0
    finally:
        session.thaw()
        if writer.poll() is None:
            writer.kill()
            writer.wait()
    assert not is_frozen(str(disk.mount_point))
    assert session.window_ms is not None and session.window_ms > 0
    assert session.watchdog_fired is False
    assert session.thaw_errors == [] and session.notes == []
    assert [e[0] for e in session.events] == ["freeze", "thaw"]
    assert process_gone(watchdog)


def test_context_manager_thaws_and_thaw_is_idempotent(loop_disk_factory) -> None:
    disk = loop_disk_factory()
    mounts = discover_mounts([str(disk.mount_point)])
    with pytest.raises(RuntimeError, match="boom"), FreezeSession(mounts, timeout=120) as s:
        assert is_frozen(str(disk.mount_point))
        raise RuntimeError("boom")
    assert not is_frozen(str(disk.mount_point))
    events = list(s.events)
    s.thaw()
    s.thaw()
    assert s.events == events  # nothing thawed twice
    with pytest.raises(FreezeError, match="already thawed"):
        s.freeze()


def test_nested_mount_frozen_first_and_thawed_last(loop_disk_factory) -> None:
    parent = loop_disk_factory(name="parent")
    child = loop_disk_factory(name="child", workdir=parent.mount_point)
    assert str(child.mount_point).startswith(str(parent.mount_point) + "/")
    mounts = discover_mounts([str(parent.mount_point), str(child.mount_point)])
    assert [m.mount_point for m in mounts] == [str(child.mount_point),
                                               str(parent.mount_point)]
    with FreezeSession(mounts, timeout=120) as session:
        assert is_frozen(str(child.mount_point)) and is_frozen(str(parent.mount_point))
    assert session.events == [
        ("freeze", str(child.mount_point), 0), ("freeze", str(parent.mount_point), 0),
        ("thaw", str(parent.mount_point), 0), ("thaw", str(child.mount_point), 0)]
    assert not is_frozen(str(child.mount_point)) and not is_frozen(str(parent.mount_point))


def test_loop_fs_frozen_before_the_fs_holding_its_image(loop_disk_factory) -> None:
    # The wrong order would block the second FIFREEZE until the watchdog thaws (timeout 30).
    holder = loop_disk_factory(name="holder")
    inner = loop_disk_factory(name="inner", image_dir=holder.mount_point)
    assert inner.image.parent == holder.mount_point
    (inner.mount_point / "dirty").write_bytes(b"d" * 1024 * 1024)  # something to flush
    mounts = discover_mounts([str(holder.mount_point), str(inner.mount_point)])
    assert [m.mount_point for m in mounts] == [str(inner.mount_point),
                                               str(holder.mount_point)]
    with FreezeSession(mounts, timeout=30, sync=False) as session:
        assert is_frozen(str(inner.mount_point)) and is_frozen(str(holder.mount_point))
    assert session.watchdog_fired is False


def test_bind_mount_frozen_once(loop_disk_factory, tmp_path: Path) -> None:
    disk = loop_disk_factory()
    bind = tmp_path / "bind"
    bind.mkdir()
    subprocess.run(["mount", "--bind", str(disk.mount_point), str(bind)], check=True)
    try:
        mounts = discover_mounts([str(disk.mount_point), str(bind)])
        assert len(mounts) == 1 and mounts[0].mount_point == str(disk.mount_point)
        assert discover_mounts([str(bind)])[0].device == mounts[0].device
        with FreezeSession(mounts, timeout=120) as session:
            assert is_frozen(str(bind))  # same superblock
        assert [e for e in session.events if e[0] == "freeze"] == [
            ("freeze", str(disk.mount_point), 0)]
        # listing both by hand is refused rather than freezing twice
        by_hand = mounts + [m for m in discover_mounts([str(bind)])]
        with pytest.raises(FreezeError, match="same filesystem is listed twice"):
            FreezeSession(by_hand, timeout=120)
    finally:
        subprocess.run(["umount", str(bind)], check=False)


def test_one_mount_failing_thaws_the_others(loop_disk_factory) -> None:
    first = loop_disk_factory(name="first")
    second = loop_disk_factory(name="second", fstype="xfs")
    mounts = discover_mounts([str(first.mount_point)]) + discover_mounts(
        [str(second.mount_point)])
    freeze_path(str(second.mount_point))  # someone else froze it: our FIFREEZE gets EBUSY
    try:
        session = FreezeSession(mounts, timeout=120)
        with pytest.raises(FreezeError) as caught:
            session.freeze()
        message = str(caught.value)
        assert str(second.mount_point) in message and "EBUSY" in message
        assert str(first.mount_point) in message  # says what it thawed
        assert "fsfreeze -u" in caught.value.hint
        assert session.events == [("freeze", str(first.mount_point), 0),
                                  ("freeze", str(second.mount_point), 16),
                                  ("thaw", str(first.mount_point), 0)]
        assert not is_frozen(str(first.mount_point))
        # the freeze we did not make is left alone
        assert is_frozen(str(second.mount_point))
        assert session.watchdog_pid is None
    finally:
        thaw_path(str(second.mount_point))


def test_watchdog_thaws_at_its_deadline(loop_disk_factory) -> None:
    one = loop_disk_factory(name="one")
    two = loop_disk_factory(name="two")
    mounts = discover_mounts([str(one.mount_point), str(two.mount_point)])
    session = FreezeSession(mounts, timeout=2)
    try:
        session.freeze()
        assert is_frozen(str(one.mount_point)) and is_frozen(str(two.mount_point))
        wait_for(lambda: not is_frozen(str(one.mount_point)) and not is_frozen(
            str(two.mount_point)), what="the watchdog to thaw at its 2 s deadline")
    finally:
        session.thaw()
    assert session.watchdog_fired is True
    assert session.watchdog_report == "F deadline 2 0 0"
    assert session.thaw_errors == []
    assert sum("no longer frozen" in n for n in session.notes) == 2
    assert any("watchdog thawed" in n for n in session.notes)


def test_watchdog_thaws_when_terminated(loop_disk_factory) -> None:
    disk = loop_disk_factory()
    session = FreezeSession(discover_mounts([str(disk.mount_point)]), timeout=600)
    try:
        session.freeze()
        pid = session.watchdog_pid
        assert pid is not None
        os.kill(pid, signal.SIGTERM)
        wait_for(lambda: not is_frozen(str(disk.mount_point)), what="thaw on SIGTERM")
    finally:
        session.thaw()
    assert session.watchdog_fired and session.watchdog_report.startswith("F signal 1 ")


OWNER = textwrap.dedent("""
    import sys, time
    from quiesce.freezing.freeze import FreezeSession, discover_mounts
    session = FreezeSession(discover_mounts(sys.argv[1:]), timeout=600)
    session.freeze()
    print(session.watchdog_pid, flush=True)
    time.sleep(3600)
""")


def test_owner_sigkilled_while_frozen_is_thawed_promptly(loop_disk_factory) -> None:
    one = loop_disk_factory(name="one")
    two = loop_disk_factory(name="two", fstype="xfs")
    # the owner gets its own process group, killed as an orchestrator's killpg would
    owner = subprocess.Popen([sys.executable, "-c", OWNER, str(one.mount_point),
                              str(two.mount_point)], stdout=subprocess.PIPE, text=True,
                             start_new_session=True)
    watchdog = None
    try:
        assert owner.stdout is not None
        line = owner.stdout.readline().strip()
        assert line.isdigit(), f"owner did not report a watchdog pid: {line!r}"
        watchdog = int(line)
        assert os.getpgid(watchdog) != owner.pid  # its own session: survives the killpg
        assert is_frozen(str(one.mount_point)) and is_frozen(str(two.mount_point))
        os.killpg(owner.pid, signal.SIGKILL)
        owner.wait(timeout=WAIT)
        # far sooner than the 600 s deadline: the control pipe's EOF triggers the thaw
        wait_for(lambda: not is_frozen(str(one.mount_point)) and not is_frozen(
            str(two.mount_point)), timeout=WAIT, what="the watchdog to thaw after SIGKILL")
        wait_for(lambda: process_gone(watchdog), what="the watchdog to exit")
    finally:
        if owner.poll() is None:
            os.killpg(owner.pid, signal.SIGKILL)
            owner.wait()
        kill_if_watchdog(watchdog)


def test_mount_gone_after_discovery_is_refused(loop_disk_factory) -> None:
    # The vanished mount's path then resolves to its parent; here a test disk, never /.
    parent = loop_disk_factory(name="parent")
    child = loop_disk_factory(name="child", workdir=parent.mount_point)
    mounts = discover_mounts([str(child.mount_point)])
    subprocess.run(["umount", str(child.mount_point)], check=True)
    session = FreezeSession(mounts, timeout=120)
    with pytest.raises(FreezeError, match="no longer holds filesystem"):
        session.freeze()
    assert not is_frozen(str(parent.mount_point))
    assert session.frozen == [] and session.watchdog_pid is None


def test_only_tmpfs_is_a_clear_error(tmp_path: Path) -> None:
    target = tmp_path / "tmpfs"
    target.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(target)],
                   check=True)
    try:
        with pytest.raises(FreezeError) as caught:
            discover_mounts([str(target)])
        assert f"{target} cannot be frozen" in str(caught.value)
        assert "tmpfs does not support FIFREEZE" in str(caught.value)
        with pytest.raises(FreezeError, match="is not a mount point"):
            discover_mounts([str(tmp_path)])
    finally:
        subprocess.run(["umount", str(target)], check=False)


def test_empty_session_and_bad_timeout() -> None:
    with FreezeSession([], timeout=1) as session:
        assert session.frozen == []
    assert session.window_ms is None and session.watchdog_pid is None
    for bad in (0, -1, float("nan"), float("inf")):
        with pytest.raises(FreezeError, match="positive number"):
            FreezeSession([], timeout=bad)


def test_watchdog_refuses_bad_arguments() -> None:
    done = subprocess.run([sys.executable, "-B", "-m", "quiesce.freezing.watchdog", "--timeout",
                           "x", "7"], capture_output=True, text=True, timeout=WAIT, check=False)
    assert done.returncode == 2 and "--timeout must be a number" in done.stderr
    done = subprocess.run([sys.executable, "-B", "-m", "quiesce.freezing.watchdog",
                           "--timeout", "5",
                           "97"], capture_output=True, text=True, timeout=WAIT, check=False)
    assert done.returncode == 2 and "descriptor 97 is not open" in done.stderr


# -- nothing touches a filesystem during the window: checked on the real syscalls ----------

SAFE_IN_WINDOW = {"ioctl", "poll", "ppoll", "read", "write", "exit_group", "rt_sigreturn",
                  "clock_gettime", "brk", "mmap", "munmap", "mremap", "madvise", "futex",
                  "getpid", "gettid", "rt_sigprocmask"}


def syscalls(trace: Path, pid_filter: str | None = None) -> list[tuple[str, str]]:
    """(name, full line) of each syscall in an ``strace -f`` output file.

    A call interrupted by another process's output is split into ``name(... <unfinished ...>``
    and ``<... name resumed>...``: the first line counts, the second is skipped. strace pads
    the pid column (``9110  ioctl(...)`` but ``12345 ioctl(...)``): split on any whitespace.
    """
    calls = []
    for line in trace.read_text().splitlines():
        parts = line.split(None, 1)
        if len(parts) < 2 or "(" not in parts[1] or parts[1].startswith(("+++", "---", "<...")):
            continue
        if pid_filter is not None and parts[0] != pid_filter:
            continue
        calls.append((parts[1].split("(", 1)[0], parts[1]))
    return calls


needs_strace = pytest.mark.skipif(
    not Path("/usr/bin/strace").exists(), reason="strace is not installed (apt-get install "
    "strace): it is how these tests see every syscall of the window")


@needs_strace
@pytest.mark.parametrize("ending", ["deadline", "eof", "done"])
def test_watchdog_makes_no_file_syscalls_once_ready(loop_disk_factory, tmp_path: Path,
                                                    ending: str) -> None:
    from quiesce.freezing.freeze import _WatchdogProcess

    disk = loop_disk_factory()
    fd = os.open(disk.mount_point, os.O_RDONLY | os.O_DIRECTORY)
    trace = tmp_path / "trace.txt"
    timeout = 1.0 if ending == "deadline" else 600.0
    argv = ["strace", "-f", "-qq", "-o", str(trace),
            *_WatchdogProcess.command(timeout, [fd])]
    proc = subprocess.Popen(argv, pass_fds=[fd], stdin=subprocess.PIPE, stdout=subprocess.PIPE)
    try:
        assert proc.stdout is not None and proc.stdin is not None
        assert proc.stdout.readline() == b"R\n"
        if ending == "done":
            proc.stdin.write(b"done\n")
        if ending == "deadline":  # keep the control channel open: only the deadline can fire
            report = proc.stdout.read()
            proc.stdin.close()
        else:
            proc.stdin.close()  # "eof": the runner is gone
            report = proc.stdout.read()
        assert proc.wait(timeout=WAIT) == 0
    finally:
        if proc.poll() is None:  # kill the traced watchdog too: strace's death only detaches
            for child in children(proc.pid):
                kill_if_watchdog(child)
            proc.kill()
            proc.wait()
        os.close(fd)
    expected = {"deadline": b"F deadline 0 1 0\n", "eof": b"F eof 0 1 0\n", "done": b""}
    assert report == expected[ending]
    calls = syscalls(trace)
    ready = next(i for i, (_, line) in enumerate(calls) if line.startswith('write(1, "R\\n"'))
    after = calls[ready:]
    unsafe = [line for name, line in after if name not in SAFE_IN_WINDOW]
    assert unsafe == [], f"the armed watchdog made file or process syscalls: {unsafe}"
    assert all(line.startswith("write(1,") for name, line in after if name == "write")
    if ending != "done":
        assert any(name == "ioctl" and "FITHAW" in line for name, line in after)


OWNER_TRACED = textwrap.dedent("""
    import sys
    from quiesce.freezing.freeze import FreezeSession, discover_mounts
    with FreezeSession(discover_mounts(sys.argv[1:]), timeout=120) as session:
        pass
    assert session.watchdog_fired is False, session.notes
""")


@needs_strace
def test_session_makes_only_ioctls_between_first_freeze_and_last_thaw(loop_disk_factory,
                                                                      tmp_path: Path) -> None:
    one = loop_disk_factory(name="one")
    two = loop_disk_factory(name="two", fstype="xfs")
    trace = tmp_path / "trace.txt"
    done = subprocess.run(["strace", "-f", "-qq", "-o", str(trace), sys.executable, "-c",
                           OWNER_TRACED, str(one.mount_point), str(two.mount_point)],
                          capture_output=True, text=True, timeout=WAIT, check=False)
    assert done.returncode == 0, done.stderr
    owner_pid = trace.read_text().split(None, 1)[0]  # the first traced process is the owner
    calls = syscalls(trace, owner_pid)
    window = [i for i, (name, line) in enumerate(calls)
              if name == "ioctl" and ("FIFREEZE" in line or "FITHAW" in line)]
    assert len(window) == 4
    inside = calls[window[0]:window[-1] + 1]
    assert [name for name, _ in inside] == ["ioctl"] * 4, inside
    assert not is_frozen(str(one.mount_point)) and not is_frozen(str(two.mount_point))


def test_watchdog_killed_during_window_is_reported(loop_disk_factory) -> None:
    disk = loop_disk_factory()
    session = FreezeSession(discover_mounts([str(disk.mount_point)]), timeout=600)
    try:
        session.freeze()
        pid = session.watchdog_pid
        assert pid is not None
        os.kill(pid, signal.SIGKILL)  # e.g. the OOM killer
        wait_for(lambda: process_gone(pid), what="the watchdog to die")
        assert is_frozen(str(disk.mount_point))  # nothing thawed it: we still must
    finally:
        session.thaw()
    assert not is_frozen(str(disk.mount_point))
    assert session.watchdog_fired is False and session.thaw_errors == []
    assert any("watchdog died during the freeze (killed by signal 9)" in n
               for n in session.notes)


def test_watchdog_that_cannot_start_means_nothing_frozen(loop_disk_factory,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    from quiesce.freezing import freeze as freeze_module

    disk = loop_disk_factory()
    broken = [sys.executable, "-c", "import sys; sys.exit('watchdog: cannot arm')"]
    monkeypatch.setattr(freeze_module._WatchdogProcess, "command",
                        staticmethod(lambda timeout, fds, wait_for_arm=False: broken))
    session = FreezeSession(discover_mounts([str(disk.mount_point)]), timeout=60)
    with pytest.raises(FreezeError, match=r"watchdog failed to start.*cannot arm"):
        session.freeze()
    assert session.frozen == [] and session.events == []
    assert not is_frozen(str(disk.mount_point))
    early = FreezeSession(discover_mounts([str(disk.mount_point)]), timeout=60)
    with pytest.raises(FreezeError, match=r"watchdog failed to start"):
        early.prepare()
    assert not is_frozen(str(disk.mount_point))


def test_a_watchdog_started_early_counts_its_deadline_from_the_freeze(loop_disk_factory) -> None:
    """prepare() starts the watchdog before the pre-script; its deadline must not run until
    the freeze (else a slow pre-script would eat the freeze window), and it still thaws."""
    disk = loop_disk_factory()
    session = FreezeSession(discover_mounts([str(disk.mount_point)]), timeout=1.0)
    session.prepare()
    try:
        time.sleep(1.5)  # longer than the timeout, before the freeze: nothing may happen
        session.freeze()
        assert is_frozen(str(disk.mount_point))  # it did not fire before the freeze
        deadline = time.monotonic() + 30
        while is_frozen(str(disk.mount_point)) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not is_frozen(str(disk.mount_point))  # the armed deadline thawed it
    finally:
        session.thaw()
    assert session.watchdog_fired


def test_a_prepared_session_that_never_freezes_stops_its_watchdog(loop_disk_factory) -> None:
    disk = loop_disk_factory()
    session = FreezeSession(discover_mounts([str(disk.mount_point)]), timeout=30)
    session.prepare()
    pid = session.watchdog_pid
    assert pid is not None
    session.cancel()
    assert session.watchdog_pid is None
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            break
        time.sleep(0.05)
    else:
        raise AssertionError("the prepared watchdog is still running after cancel()")
    assert not is_frozen(str(disk.mount_point))


@pytest.mark.parametrize("prepared", [True, False])
def test_the_before_step_runs_unfrozen_and_its_failure_freezes_nothing(
        loop_disk_factory, prepared: bool) -> None:
    """``freeze(before=...)`` (where ``quiesce run`` completes the databases' hold) runs after
    the sync and before the first FIFREEZE; if it raises, nothing is frozen and the watchdog
    is gone."""
    disk = loop_disk_factory()
    mount = str(disk.mount_point)
    seen: list[bool] = []
    ok = FreezeSession(discover_mounts([mount]), timeout=120)
    if prepared:
        ok.prepare()
    with open(os.path.join(mount, "dirty"), "w") as fh:  # something for the sync to write
        fh.write("x" * 4096)
    ok.freeze(before=lambda: seen.append(is_frozen(mount)))
    try:
        assert seen == [False] and is_frozen(mount)
    finally:
        ok.thaw()

    failing = FreezeSession(discover_mounts([mount]), timeout=120)
    if prepared:
        failing.prepare()
        watchdog = failing.watchdog_pid
        assert watchdog is not None

    def refuse() -> None:
        raise RuntimeError("the hold could not be completed")

    with pytest.raises(RuntimeError, match="could not be completed"):
        failing.freeze(before=refuse)
    assert not is_frozen(mount)
    assert failing.frozen == [] and failing.watchdog_pid is None
    if prepared:
        assert wait_for(lambda: not os.path.exists(f"/proc/{watchdog}"), 10)
    failing.thaw()  # nothing to do, and harmless
    assert not is_frozen(mount)


@pytest.mark.parametrize("prepared", [True, False])
def test_a_slow_before_step_does_not_use_up_the_watchdog_deadline(
        loop_disk_factory, prepared: bool) -> None:
    """The deadline counts from just before the first FIFREEZE, not from before the 'before'
    step (quiesce run may wait seconds there for a database lock)."""
    disk = loop_disk_factory()
    mount = str(disk.mount_point)
    session = FreezeSession(discover_mounts([mount]), timeout=1.0)
    if prepared:
        session.prepare()
    session.freeze(before=lambda: time.sleep(1.5))
    try:
        time.sleep(0.3)
        assert is_frozen(mount), "the watchdog thawed at once: its deadline ran during 'before'"
    finally:
        session.thaw()
    assert not session.watchdog_fired
    assert not is_frozen(mount)
