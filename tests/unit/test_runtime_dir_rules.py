"""Issue 12, item 1: who may have made or changed the runtime dir, and who answers on its socket.

The pure rules (:func:`parent_problems`, :func:`runtime_dir_problems`) are tested on stat
results; the rest on real directories, sockets and processes. Tests that chown to another uid
or drop privileges need root and say so when skipped.
"""

from __future__ import annotations

import json
import os
import stat
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from helpers.fake_holder import listener, received
from quiesce.errors import HolderError, NoActiveHold
from quiesce.hold import protocol as proto
from quiesce.hold.holder import prepare_runtime_dir, take_lock
from quiesce.hold.trace import write_trace

OTHER = 65534  # nobody / nogroup: a uid that is neither root nor us


def st(mode: int, uid: int = 0, kind: int = stat.S_IFDIR) -> os.stat_result:
    return os.stat_result((kind | mode, 1, 1, 2, uid, 0, 4096, 0, 0, 0))


# -- the pure rules ------------------------------------------------------------------------


def test_a_root_owned_0755_parent_is_fine() -> None:
    assert proto.parent_problems("/run", st(0o755), st(0o700), euid=0) == []


def test_the_issues_root_nogroup_0775_parent_is_refused() -> None:
    [problem] = proto.parent_problems("/tmp/x/gw", st(0o775), st(0o700), euid=0)
    assert problem == ("/tmp/x/gw has mode 0775: writable by group/other, so someone other "
                       "than root could replace the runtime dir")


def test_a_missing_entry_does_not_excuse_a_writable_parent() -> None:
    """'mv rt rt.moved' under such a parent must not read as 'no hold is active'."""
    assert proto.parent_problems("/tmp/x/gw", st(0o775), None, euid=0)


@pytest.mark.parametrize("euid", [0, 1000])
def test_a_parent_owned_by_another_user_is_refused(euid: int) -> None:
    [problem] = proto.parent_problems("/srv/p", st(0o755, uid=OTHER), st(0o700), euid=euid)
    assert f"/srv/p is owned by uid {OTHER}" in problem
    assert "its owner could replace the runtime dir" in problem


def test_a_non_root_users_own_parent_is_fine_and_another_users_is_not() -> None:
    assert proto.parent_problems("/home/u", st(0o700, uid=1000), st(0o700, uid=1000),
                                 euid=1000) == []
    assert proto.parent_problems("/home/v", st(0o700, uid=1001), st(0o700, uid=1000),
                                 euid=1000)


@pytest.mark.parametrize("entry_uid", [0, None])
def test_a_root_owned_sticky_parent_is_fine_when_the_entry_is_ours_or_absent(
        entry_uid: int | None) -> None:
    entry = None if entry_uid is None else st(0o700, uid=entry_uid)
    assert proto.parent_problems("/tmp", st(0o1777), entry, euid=0) == []


def test_a_sticky_parent_with_someone_elses_entry_is_refused() -> None:
    [problem] = proto.parent_problems("/tmp", st(0o1777), st(0o700, uid=OTHER), euid=0)
    assert "(sticky, writable by others)" in problem and f"owned by uid {OTHER}" in problem


def test_a_sticky_parent_owned_by_another_user_is_refused() -> None:
    assert proto.parent_problems("/tmp/shared", st(0o1777, uid=OTHER), st(0o700), euid=0)


def test_the_runtime_dir_itself() -> None:
    assert proto.runtime_dir_problems("/run/q", st(0o700), euid=0) is None
    assert proto.runtime_dir_problems("/run/u/q", st(0o700, uid=1000), euid=1000) is None
    _, hint = proto.runtime_dir_problems("/run/q", st(0o755), euid=0) or ("", "")
    assert hint == "chmod 700 /run/q"  # ours, and nothing could have been put in it
    for mode, uid in ((0o777, 0), (0o700, OTHER), (0o1777, 0)):
        message, hint = proto.runtime_dir_problems("/run/q", st(mode, uid=uid), euid=0) \
            or ("", "")
        assert f"owned by uid {uid} with mode {mode:04o}" in message
        assert "chown" not in hint.replace("no chown", "") and "rm -r /run/q" in hint
    message, _ = proto.runtime_dir_problems("/run/q", st(0o600, kind=stat.S_IFSOCK),
                                            euid=0) or ("", "")
    assert message == "runtime dir /run/q is not a directory"


# -- real directories ----------------------------------------------------------------------


@pytest.fixture
def as_root() -> None:
    if os.geteuid() != 0:
        pytest.skip("needs root: makes directories owned by another uid")


@pytest.fixture
def base(tmp_path: Path) -> Path:
    """A root-owned 0700 directory (pytest's, under the sticky /tmp: the suite's own runtime
    dirs look like this and must keep working)."""
    os.chmod(tmp_path, 0o700)
    return tmp_path


def _refusals(rundir: Path) -> list[str]:
    """What each client entry point says about ``rundir`` ('' when it did not refuse)."""
    said = []
    for call in (lambda: proto.check_runtime_dir(str(rundir)),
                 lambda: proto.request(str(rundir), "status", timeout=5),
                 lambda: proto.read_result(str(rundir)),
                 lambda: proto.lock_held(str(rundir)),
                 lambda: proto.consume_result(str(rundir))):
        try:
            call()
            said.append("")
        except NoActiveHold as exc:
            said.append(f"NoActiveHold: {exc}")
        except HolderError as exc:
            said.append(str(exc))
    return said


@pytest.mark.parametrize("rt_exists", [True, False])
@pytest.mark.parametrize("case", [
    (0, OTHER, 0o775, "gw has mode 0775: writable by group/other"),
    (OTHER, OTHER, 0o755, f"gw is owned by uid {OTHER}"),
], ids=["root-nogroup-0775", "owned-by-nobody"])
def test_every_client_entry_point_refuses_an_unsafe_parent(
        as_root: None, base: Path, case: tuple[int, int, int, str], rt_exists: bool) -> None:
    owner, group, mode, says = case
    parent = base / "gw"
    parent.mkdir()
    os.chown(parent, owner, group)
    os.chmod(parent, mode)
    rundir = parent / "rt"
    if rt_exists:
        rundir.mkdir(mode=0o700)
    for said in _refusals(rundir):
        assert said.startswith(f"the runtime dir {rundir} cannot be trusted: ") and says in said


def test_prepare_refuses_to_create_anything_under_an_unsafe_parent(as_root: None,
                                                                     base: Path) -> None:
    parent = base / "gw"
    parent.mkdir()
    os.chown(parent, 0, OTHER)
    os.chmod(parent, 0o775)
    with pytest.raises(HolderError, match="gw has mode 0775") as caught:
        prepare_runtime_dir(str(parent / "a" / "rt"))
    assert "chown root" not in caught.value.hint
    assert list(parent.iterdir()) == []


def test_prepare_creates_missing_directories_under_safe_ones(base: Path) -> None:
    rundir = base / "a" / "b" / "rt"
    prepare_runtime_dir(str(rundir))
    assert stat.S_IMODE(rundir.stat().st_mode) == 0o700
    assert not stat.S_IMODE(rundir.parent.stat().st_mode) & 0o022


@pytest.mark.parametrize(("uid", "mode", "says"), [
    (OTHER, 0o700, f"is owned by uid {OTHER}, not by us"),
    (None, 0o777, "has mode 0777: writable by group/other"),
], ids=["owned-by-nobody", "ours-0777"])
def test_prepare_never_adopts_a_runtime_dir_someone_else_made_or_could_fill(
        as_root: None, base: Path, uid: int | None, mode: int, says: str) -> None:
    rundir = base / "rt"
    rundir.mkdir()
    if uid is not None:
        os.chown(rundir, uid, uid)
    os.chmod(rundir, mode)
    with pytest.raises(HolderError, match=says) as caught:
        prepare_runtime_dir(str(rundir))
    hint = caught.value.hint
    assert "chown root" not in hint and "never chown" in hint and f"rm -r {rundir}" in hint
    after = rundir.stat()
    assert (after.st_uid, stat.S_IMODE(after.st_mode)) == (uid or 0, mode)  # left untouched


def test_prepare_never_chmods_an_existing_directory(base: Path) -> None:
    """A mistyped --runtime-dir (/run, /var/lib) must not become 0700."""
    existing = base / "shared"
    existing.mkdir()
    os.chmod(existing, 0o755)
    with pytest.raises(HolderError, match="has mode 0755, not 0700") as caught:
        prepare_runtime_dir(str(existing))
    assert "does not exist yet" in caught.value.hint
    assert stat.S_IMODE(existing.stat().st_mode) == 0o755


def test_prepare_gives_a_dir_it_made_under_a_strict_umask_mode_0700(base: Path) -> None:
    old = os.umask(0o377)
    try:
        prepare_runtime_dir(str(base / "rt"))
    finally:
        os.umask(old)
    assert stat.S_IMODE((base / "rt").stat().st_mode) == 0o700


def test_a_symlink_someone_else_owns_in_a_sticky_dir_is_refused(as_root: None,
                                                                 base: Path) -> None:
    sticky = base / "tmp"
    sticky.mkdir()
    os.chmod(sticky, 0o1777)
    real = base / "real"
    (real / "rt").mkdir(parents=True, mode=0o700)
    link = sticky / "x"
    link.symlink_to(real)
    proto.check_runtime_dir(str(link / "rt"))  # root's link: followed, its target checked
    os.lchown(link, OTHER, OTHER)  # now its owner could point it anywhere at any time
    for said in _refusals(link / "rt"):
        assert f"the entry in it is owned by uid {OTHER}" in said


def test_a_runtime_dir_that_is_a_symlink_is_refused(base: Path) -> None:
    (base / "real").mkdir(mode=0o700)
    (base / "rt").symlink_to(base / "real")
    with pytest.raises(HolderError, match="is not a directory"):
        proto.check_runtime_dir(str(base / "rt"))
    with pytest.raises(HolderError, match="is not a directory"):
        prepare_runtime_dir(str(base / "rt"))


def test_files_are_used_through_the_descriptor_not_the_path(base: Path) -> None:
    """What was checked is what is used: a dir swapped in after the open is never read."""
    rundir = base / "rt"
    rundir.mkdir(mode=0o700)
    proto.write_json_atomic(str(rundir / proto.RESULT_NAME), {"run_id": "checked"})
    with proto.client_runtime_dir(str(rundir)) as rd:
        rundir.rename(base / "rt.moved")
        rundir.mkdir(mode=0o700)
        proto.write_json_atomic(str(rundir / proto.RESULT_NAME), {"run_id": "swapped-in"})
        assert proto.read_result(rd) == {"run_id": "checked"}
        proto.consume_result(rd)
    assert (base / "rt.moved" / (proto.RESULT_NAME + ".reported")).exists()
    assert proto.read_result(str(rundir)) == {"run_id": "swapped-in"}


def test_take_lock_uses_the_checked_dir_and_refuses_a_planted_symlink(base: Path) -> None:
    rundir = base / "rt"
    rundir.mkdir(mode=0o700)
    fd = take_lock(str(rundir))
    try:
        assert proto.lock_held(str(rundir))
    finally:
        os.close(fd)
    os.unlink(rundir / proto.LOCK_NAME)
    (rundir / proto.LOCK_NAME).symlink_to(base / "elsewhere")
    with pytest.raises(HolderError, match="Too many levels of symbolic links") as caught:
        take_lock(str(rundir))
    assert caught.value.hint == f"inspect and remove {rundir}/{proto.LOCK_NAME}"
    assert not (base / "elsewhere").exists()


# -- who answers on holder.sock ------------------------------------------------------------

@pytest.fixture
def rundir(base: Path) -> Path:
    path = base / "rt"
    path.mkdir(mode=0o700)
    return path


def test_a_listener_running_as_another_user_is_refused_and_told_nothing(
        as_root: None, rundir: Path) -> None:
    with listener(rundir, uid=OTHER) as proc:
        with pytest.raises(HolderError) as caught:
            proto.request(str(rundir), "release", timeout=10)
        assert received(proc) == ""  # the request was never sent
    message = str(caught.value)
    assert f"the process listening on {rundir}/holder.sock (pid {proc.pid}) runs as uid " \
           f"{OTHER}" in message and "not quiesce's holder" in message
    assert "stays in place" in message and f"rm -r {rundir}" in caught.value.hint


@pytest.fixture
def other_pid() -> Iterator[int]:
    """A live process that is neither this one nor any listener."""
    proc = subprocess.Popen(["sleep", "300"])
    try:
        yield proc.pid
    finally:
        proc.kill()
        proc.wait(30)


def test_a_listener_that_is_not_the_traced_holder_is_refused(rundir: Path,
                                                             other_pid: int) -> None:
    write_trace(str(rundir), {"run_id": "r", "holder_pid": other_pid, "uid": os.geteuid(),
                              "state": "holding"})
    with listener(rundir) as proc:
        with pytest.raises(HolderError, match=f"is pid {proc.pid}, but the hold trace "
                                              f".*names the holder pid {other_pid}"):
            proto.request(str(rundir), "release", timeout=10)
        assert received(proc) == ""


def test_the_traced_holder_is_answered(rundir: Path) -> None:
    with listener(rundir) as proc:
        write_trace(str(rundir), {"run_id": "r", "holder_pid": proc.pid, "uid": os.geteuid(),
                                  "state": "holding"})
        assert proto.request(str(rundir), "status", timeout=10) == {"ok": True,
                                                                     "state": "holding"}
        assert json.loads(received(proc)) == {"op": "status", "protocol": proto.PROTOCOL_VERSION}


def test_a_trace_the_holder_did_not_write_is_reported_with_its_real_path(rundir: Path) -> None:
    (rundir / "hold.json").write_text("not json")
    os.chmod(rundir / "hold.json", 0o600)
    with listener(rundir), pytest.raises(HolderError) as caught:
        proto.request(str(rundir), "status", timeout=10)
    assert str(caught.value).startswith(f"{rundir}/hold.json is not valid JSON")
    assert "/proc/self/fd" not in str(caught.value) + caught.value.hint


def test_the_socket_is_reached_through_the_checked_directory(rundir: Path) -> None:
    """connect() has no dir_fd: /proc/self/fd/N/holder.sock reaches the directory that was
    checked, even when another one has been put at its path since."""
    with listener(rundir) as proc, proto.client_runtime_dir(str(rundir)) as rd:
        base = rundir.parent
        rundir.rename(base / "rt.moved")
        rundir.mkdir(mode=0o700)  # nothing listens here
        assert proto._request(rd, "status", 10, {})["state"] == "holding"
        assert json.loads(received(proc)) == {"op": "status", "protocol": proto.PROTOCOL_VERSION}
    with pytest.raises(NoActiveHold, match="nothing listens"):
        proto.request(str(rundir), "status", timeout=10)


@pytest.mark.timeout(30)  # the bug this guards against is a hang
def test_lock_held_does_not_block_on_a_fifo(rundir: Path) -> None:
    os.mkfifo(rundir / proto.LOCK_NAME, 0o600)
    assert proto.lock_held(str(rundir)) is False
