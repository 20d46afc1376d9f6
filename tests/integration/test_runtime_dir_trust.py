"""Issue 12, item 1, end to end with the real CLI and holder (root, the example flock plugin).

- A runtime dir under a parent another user owns or can write is refused by pre, status and
  post (exit 2), before anything is created or held, with a fix that adopts nothing.
- Why: under a root:nogroup 0775 parent, nobody (uid 65534) can swap root's runtime dir for
  one of their own with one RENAME_EXCHANGE. Under a root-owned sticky parent (how /tmp/x
  looks) they cannot, so a real hold there works, and survives the attempt.
- A fake listener on holder.sock (another uid, or root but not the traced holder pid) is
  refused by post and status with exit 2: never "application-consistent".
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

import integration.test_nonroot as nonroot
from helpers import private_dir
from helpers.fake_holder import FAKE_RELEASE, exchange_as, listener, received
from quiesce.hold.trace import write_trace

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = ROOT / "tests" / "example_plugin"
NOBODY = 65534  # uid nobody, gid nogroup

pytestmark = pytest.mark.timeout(300)

# test_nonroot.py's throwaway users (session-scoped there; here too, made once if needed).
users = nonroot.users
user = nonroot.user
other = nonroot.other
User = nonroot.User


def _mentioning(text: str) -> list[int]:
    pids = []
    for entry in os.listdir("/proc"):
        if entry.isdigit() and int(entry) != os.getpid():
            with contextlib.suppress(OSError):
                if text.encode() in Path(f"/proc/{entry}/cmdline").read_bytes():
                    pids.append(int(entry))
    return pids


def _lock_is_free(path: Path) -> bool:
    if not path.exists():
        return True
    fd = os.open(path, os.O_RDWR | os.O_CLOEXEC)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return False
    finally:
        os.close(fd)
    return True


class Ws:
    """A private base dir with quiesce.toml (one flock instance) and the CLI."""

    def __init__(self, base: Path) -> None:
        self.base = base
        self.config = base / "quiesce.toml"
        self.lock = base / "a.lock"
        self.config.write_text(f'state_dir = "{base / "state"}"\nmax_hold_seconds = 120\n'
                               f'[[flock]]\nname = "a"\npath = "{self.lock}"\n')
        os.chmod(self.config, 0o600)
        self.env = {**os.environ, "PYTHONPATH": os.pathsep.join(
            [str(EXAMPLE), *filter(None, [os.environ.get("PYTHONPATH")])])}
        self.env.pop("QUIESCE_RUNTIME_DIR", None)

    def run(self, command: str, rundir: Path, *extra: str) -> subprocess.CompletedProcess[str]:
        argv = [sys.executable, "-m", "quiesce", command, "--runtime-dir", str(rundir), *extra]
        if command == "pre":
            argv += ["--config", str(self.config)]
        return subprocess.run(argv, env=self.env, capture_output=True, text=True, timeout=120,
                              check=False, cwd="/")


@pytest.fixture
def ws(require_root: None) -> Iterator[Ws]:
    with private_dir("qrt-") as base:
        try:
            yield Ws(base)
        finally:
            for pid in _mentioning(str(base)):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)


def _assert_refused(proc: subprocess.CompletedProcess[str], rundir: Path, says: str) -> None:
    out = proc.stdout + proc.stderr
    assert proc.returncode == 2, out
    assert f"the runtime dir {rundir} cannot be trusted" in proc.stderr and says in proc.stderr
    assert "chown root" not in out and "consistent" not in out


@pytest.mark.parametrize("rt_exists", [True, False], ids=["rt-exists", "rt-absent"])
@pytest.mark.parametrize("case", [
    (0, NOBODY, 0o775, "gw has mode 0775: writable by group/other"),
    (NOBODY, NOBODY, 0o755, f"gw is owned by uid {NOBODY} (nobody)"),
], ids=["root-nogroup-0775", "owned-by-nobody"])
def test_pre_status_post_refuse_a_parent_another_user_can_write(
        ws: Ws, case: tuple[int, int, int, str], rt_exists: bool) -> None:
    owner, group, mode, says = case
    parent = ws.base / "gw"
    parent.mkdir()
    os.chown(parent, owner, group)
    os.chmod(parent, mode)
    rundir = parent / "rt"
    if rt_exists:
        rundir.mkdir(mode=0o700)
    before = sorted(p.name for p in parent.iterdir())
    for command in ("pre", "status", "post"):
        _assert_refused(ws.run(command, rundir), rundir, says)
    assert sorted(p.name for p in parent.iterdir()) == before  # nothing created in it
    assert _lock_is_free(ws.lock)  # nothing was held
    assert not _mentioning(str(rundir))  # no holder started


def test_another_user_can_swap_the_runtime_dir_under_a_group_writable_parent(ws: Ws) -> None:
    """The attack from the issue, and why such a parent is refused rather than trusted."""
    os.chmod(ws.base, 0o711)  # let nobody reach the parent (still root's, not writable)
    parent = ws.base / "gw"
    parent.mkdir()
    os.chown(parent, 0, NOBODY)
    os.chmod(parent, 0o775)
    rundir = parent / "rt"
    rundir.mkdir(mode=0o700)
    assert exchange_as(NOBODY, NOBODY, rundir, parent / "mine") == "0"
    assert rundir.stat().st_uid == NOBODY  # root's runtime dir is now theirs
    for command in ("status", "post"):
        _assert_refused(ws.run(command, rundir), rundir, "gw has mode 0775")


def test_a_hold_under_a_sticky_parent_works_and_cannot_be_swapped(ws: Ws) -> None:
    """A root-owned sticky parent (/tmp-like) is accepted when the runtime dir in it is ours:
    only its owner or root may rename it, which the exchange attempt shows."""
    os.chmod(ws.base, 0o711)  # let nobody reach the sticky dir (still root's, not writable)
    sticky = ws.base / "tmp"
    sticky.mkdir()
    os.chmod(sticky, 0o1777)
    rundir = sticky / "rt"
    held = ws.run("pre", rundir, "--json")
    assert held.returncode == 0, held.stdout + held.stderr
    holder_pid = json.loads(held.stdout)["holder_pid"]
    assert exchange_as(NOBODY, NOBODY, rundir, sticky / "mine") == "Operation not permitted"
    status = ws.run("status", rundir, "--json")
    assert status.returncode == 0, status.stderr
    assert json.loads(status.stdout)["holder_pid"] == holder_pid
    post = ws.run("post", rundir, "--json")
    assert post.returncode == 0, post.stdout + post.stderr
    assert json.loads(post.stdout)["consistent"] is True
    assert _lock_is_free(ws.lock)


def test_post_refuses_a_listener_running_as_another_user(ws: Ws) -> None:
    rundir = ws.base / "rt"
    rundir.mkdir(mode=0o700)
    with listener(rundir, uid=NOBODY, answer=FAKE_RELEASE) as proc:
        post = ws.run("post", rundir)
        assert received(proc) == ""  # it was told nothing
    assert post.returncode == 2, post.stdout + post.stderr
    assert f"(pid {proc.pid}) runs as uid {NOBODY} (nobody), not root: it is not quiesce's " \
           "holder" in post.stderr
    assert "application-consistent" not in post.stdout + post.stderr
    with listener(rundir, uid=NOBODY, answer=FAKE_RELEASE):
        as_json = ws.run("post", rundir, "--json")
    assert as_json.returncode == 2
    error = json.loads(as_json.stdout)["error"]
    assert error["type"] == "HolderError" and "not quiesce's holder" in error["message"]
    with listener(rundir, uid=NOBODY):
        status = ws.run("status", rundir)
    assert status.returncode == 2 and "not quiesce's holder" in status.stderr


def test_post_refuses_a_root_listener_that_is_not_the_traced_holder(ws: Ws) -> None:
    rundir = ws.base / "rt"
    rundir.mkdir(mode=0o700)
    # The trace names a live process that is not the listener (this test's own).
    write_trace(str(rundir), {"run_id": "r", "holder_pid": os.getpid(), "uid": 0,
                              "state": "holding"})
    with listener(rundir, answer=FAKE_RELEASE) as proc:
        post = ws.run("post", rundir)
        assert received(proc) == ""
    assert post.returncode == 2, post.stdout + post.stderr
    assert f"is pid {proc.pid}, but the hold trace {rundir}/hold.json names the holder pid " \
           f"{os.getpid()}" in post.stderr
    assert "application-consistent" not in post.stdout + post.stderr


# -- as a non-root user (the throwaway users of test_nonroot.py) ---------------------------

@pytest.mark.parametrize("case", [("owned", 0o755), ("group-writable", 0o775)])
def test_a_non_root_user_is_refused_a_parent_another_user_owns_or_can_write(
        user: User, other: User, case: tuple[str, int]) -> None:
    kind, mode = case
    config, lock = nonroot.flock_config(user)
    with private_dir("qrt-nr-") as base:
        os.chmod(base, 0o711)  # root's, not writable: only the parent below is at fault
        parent = base / "p"
        parent.mkdir()
        os.chown(parent, other.uid if kind == "owned" else 0, other.gid)
        os.chmod(parent, mode)
        rundir = user.mkdir(parent / "rt")  # the user's own 0700 dir, in another's parent
        says = (f"{parent} is owned by uid {other.uid} ({other.name}), not root or uid "
                f"{user.uid} ({user.name})" if kind == "owned" else
                f"{parent} has mode 0775: writable by group/other")
        for args in (("pre", "--config", str(config)), ("status",), ("post",)):
            proc = user.quiesce(*args, "--runtime-dir", str(rundir))
            assert proc.returncode == 2, proc.stdout + proc.stderr
            assert f"the runtime dir {rundir} cannot be trusted" in proc.stderr
            assert says in proc.stderr and "chown" not in proc.stderr.replace("never chown", "")
        assert sorted(p.name for p in rundir.iterdir()) == []  # no holder, socket or lock
        assert not Path(str(lock) + ".held").exists()  # nothing was quiesced
