"""The holder's client side and small holder helpers: runtime dir rules, result files, the
guardian's grace, filesystem type lookup. The socket itself is tested end to end in
tests/integration/test_holder.py."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from quiesce.errors import HolderError, NoActiveHold
from quiesce.hold import protocol as proto
from quiesce.hold.guardian import Guardian
from quiesce.hold.holder import guardian_grace, runtime_fs_type


def test_runtime_dir_precedence(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(proto.RUNTIME_DIR_ENV, raising=False)
    assert proto.runtime_dir(None) == "/run/quiesce"
    monkeypatch.setenv(proto.RUNTIME_DIR_ENV, "/run/elsewhere")
    assert proto.runtime_dir(None) == "/run/elsewhere"
    assert proto.runtime_dir("/run/explicit") == "/run/explicit"


def test_missing_runtime_dir_means_no_hold(tmp_path: Path) -> None:
    with pytest.raises(NoActiveHold, match="does not exist"):
        proto.request(str(tmp_path / "absent"), "status")


def test_runtime_dir_open_to_others_is_refused(tmp_path: Path) -> None:
    rundir = tmp_path / "rt"
    rundir.mkdir(mode=0o755)
    os.chmod(rundir, 0o755)
    with pytest.raises(HolderError, match="not accessible to others") as caught:
        proto.request(str(rundir), "status")
    assert f"chmod 700 {rundir}" in caught.value.hint


def test_no_listener_means_no_hold(tmp_path: Path) -> None:
    rundir = tmp_path / "rt"
    rundir.mkdir(mode=0o700)
    with pytest.raises(NoActiveHold, match="nothing listens"):
        proto.request(str(rundir), "status")


def test_request_round_trip(tmp_path: Path) -> None:
    rundir = tmp_path / "rt"
    rundir.mkdir(mode=0o700)
    server = socket.socket(socket.AF_UNIX)
    server.bind(proto.socket_path(str(rundir)))
    server.listen(1)
    seen: list[bytes] = []

    def answer() -> None:
        conn, _ = server.accept()
        with conn:
            seen.append(conn.recv(4096))
            conn.sendall(b'{"ok": true, "state": "holding"}\n')

    thread = threading.Thread(target=answer)
    thread.start()
    try:
        assert proto.request(str(rundir), "status", timeout=10) == {"ok": True,
                                                                     "state": "holding"}
    finally:
        thread.join(10)
        server.close()
    # The request carries its protocol version; the answer had none (an older holder) and was
    # taken as it is.
    assert json.loads(seen[0]) == {"op": "status", "protocol": proto.PROTOCOL_VERSION}


def test_result_file_is_read_once(tmp_path: Path) -> None:
    rundir = str(tmp_path)
    assert proto.read_result(rundir) is None
    proto.write_json_atomic(os.path.join(rundir, proto.RESULT_NAME), {"run_id": "x"})
    assert proto.read_result(rundir) == {"run_id": "x"}
    proto.consume_result(rundir)
    assert proto.read_result(rundir) is None


def test_result_file_open_to_others_is_refused(tmp_path: Path) -> None:
    path = tmp_path / proto.RESULT_NAME
    path.write_text('{"run_id": "forged"}')
    os.chmod(path, 0o644)
    with pytest.raises(HolderError, match="not a file the holder wrote"):
        proto.read_result(str(tmp_path))


@pytest.mark.parametrize(("text", "mode", "says"), [
    ('{"run_id": "forged"}', 0o644, "not a file the holder wrote"),
    ("not json", 0o600, "is not valid JSON"),
])
def test_status_reports_a_result_file_the_holder_did_not_write(
        root_dir: Path, text: str, mode: int, says: str) -> None:
    """'post' refuses such a file; 'status' must say so too, not answer "nothing is held"."""
    path = root_dir / proto.RESULT_NAME
    path.write_text(text)
    os.chmod(path, mode)
    done = subprocess.run([sys.executable, "-m", "quiesce", "status", "--runtime-dir",
                           str(root_dir)], capture_output=True, text=True, timeout=60,
                          check=False)
    assert done.returncode == 2, done.stdout + done.stderr
    assert says in done.stderr and f"remove {path}" in done.stderr


def test_lock_held_tracks_a_live_flock(tmp_path: Path) -> None:
    import fcntl

    assert not proto.lock_held(str(tmp_path))
    fd = os.open(tmp_path / proto.LOCK_NAME, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        assert not proto.lock_held(str(tmp_path))
        fcntl.flock(fd, fcntl.LOCK_EX)
        assert proto.lock_held(str(tmp_path))
    finally:
        os.close(fd)
    assert not proto.lock_held(str(tmp_path))


def test_guardian_grace_bounds() -> None:
    assert guardian_grace(2) == 10
    assert guardian_grace(100) == 25
    assert guardian_grace(3600) == 60


def test_runtime_fs_type_finds_the_enclosing_mount() -> None:
    assert runtime_fs_type("/proc/self") == "proc"
    assert runtime_fs_type("/") is not None


def test_guardian_ignores_a_holder_that_exits_cleanly(tmp_path: Path) -> None:
    read_fd, write_fd = os.pipe()
    lock_fd = os.open(tmp_path / "lock", os.O_RDWR | os.O_CREAT, 0o600)
    guardian = Guardian(read_fd, lock_fd, os.getpid(), str(tmp_path))
    for message in ({"op": "start", "run_id": "r", "backstop": 1e9},
                    {"op": "hold", "backstop": 1e9, "instances": [{"plugin": "p",
                                                                      "name": "n"}]},
                    {"op": "released"}, {"op": "done"}):
        os.write(write_fd, json.dumps(message).encode() + b"\n")
    os.close(write_fd)
    try:
        assert guardian.run() == 0
    finally:
        os.close(read_fd)
        os.close(lock_fd)
    assert not (tmp_path / proto.RESULT_NAME).exists()


def test_guardian_reports_lost_when_the_holder_vanishes(tmp_path: Path) -> None:
    read_fd, write_fd = os.pipe()
    lock_fd = os.open(tmp_path / "lock", os.O_RDWR | os.O_CREAT, 0o600)
    guardian = Guardian(read_fd, lock_fd, os.getpid(), str(tmp_path))
    for message in ({"op": "start", "run_id": "r", "backstop": 1e9},
                    {"op": "hold", "backstop": 1e9, "since": 1.0, "until": 2.0,
                     "instances": [{"plugin": "p", "name": "a"}, {"plugin": "p", "name": "b"}]},
                    {"op": "dropped", "plugin": "p", "name": "b"}):
        os.write(write_fd, json.dumps(message).encode() + b"\n")
    os.close(write_fd)  # EOF without "done": the holder died
    try:
        assert guardian.run() == 0
    finally:
        os.close(read_fd)
    result = proto.read_result(str(tmp_path))
    assert result is not None and result["consistent"] is False
    statuses = {i["name"]: (i["status"], i["note"]) for i in result["instances"]}
    assert statuses["a"][0] == "lost" and "connection" in statuses["a"][1]
    assert statuses["b"][0] == "lost" and "already been lost" in statuses["b"][1]
