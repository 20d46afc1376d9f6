"""Impostors for the runtime dir tests (issue 12, item 1): a listener on ``holder.sock`` that is
not quiesce's holder, and another user swapping directories with RENAME_EXCHANGE."""

from __future__ import annotations

import contextlib
import json
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

LISTENER = r"""
import contextlib, json, os, socket, sys
path, uid, answer = sys.argv[1], int(sys.argv[2]), sys.argv[3]
with contextlib.suppress(FileNotFoundError):
    os.unlink(path)  # the previous listener's
server = socket.socket(socket.AF_UNIX)
server.bind(path)
if uid:  # SO_PEERCRED reports who called listen(): drop to that uid first
    os.setgroups([])
    os.setresgid(uid, uid, uid)
    os.setresuid(uid, uid, uid)
server.listen(1)
server.settimeout(60)
print("listening", flush=True)
conn, _ = server.accept()
conn.settimeout(10)
got = b""
with contextlib.suppress(OSError):
    got = conn.recv(65536)
print(json.dumps({"received": got.decode()}), flush=True)
with contextlib.suppress(OSError):
    conn.sendall(answer.encode() + b"\n")
"""

# What a fake holder tells 'post' to make it print "application-consistent" and exit 0.
FAKE_RELEASE = {"ok": True, "run_id": "fake", "state": "released",
                "instances": [{"plugin": "flock", "name": "a", "status": "released",
                               "held_seconds": 1.0, "metadata": {}, "error": None,
                               "note": None}]}

EXCHANGE = r"""
import ctypes, os, sys
libc = ctypes.CDLL(None, use_errno=True)
AT_FDCWD, RENAME_EXCHANGE = -100, 2
if sys.argv[3] == "mkdir":
    os.mkdir(sys.argv[2], 0o700)
done = libc.renameat2(AT_FDCWD, sys.argv[1].encode(), AT_FDCWD, sys.argv[2].encode(),
                      RENAME_EXCHANGE)
print(0 if done == 0 else os.strerror(ctypes.get_errno()))
"""


@contextlib.contextmanager
def listener(rundir: Path, uid: int = 0,
             answer: dict[str, Any] | None = None) -> Iterator[subprocess.Popen[str]]:
    """A listener on ``rundir``/holder.sock in another process, bound as root and listening as
    ``uid`` (0: stays root); it prints what it received, then sends ``answer``."""
    text = json.dumps(answer if answer is not None else {"ok": True, "state": "holding"})
    proc = subprocess.Popen([sys.executable, "-c", LISTENER, str(rundir / "holder.sock"),
                             str(uid), text], stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None and proc.stdout.readline().strip() == "listening"
        yield proc
    finally:
        proc.kill()
        proc.wait(30)


def received(proc: subprocess.Popen[str]) -> str:
    """What the listener got (its first connection); '' when the client sent nothing."""
    assert proc.stdout is not None
    return str(json.loads(proc.stdout.readline())["received"])


def exchange_as(uid: int, gid: int, ours: Path, theirs: Path, *, make: bool = True) -> str:
    """As ``uid``/``gid`` (no supplementary groups): optionally mkdir ``theirs``, then
    renameat2(``ours``, ``theirs``, RENAME_EXCHANGE). Returns "0" or the error text."""
    python = shutil.which("python3", path="/usr/bin:/bin")
    if python is None:
        pytest.skip("needs /usr/bin/python3 (stdlib only) to act as another user")
    done = subprocess.run([python, "-I", "-c", EXCHANGE, str(ours), str(theirs),
                           "mkdir" if make else "-"], user=uid, group=gid, extra_groups=[],
                          capture_output=True, text=True, timeout=60, check=False, cwd="/")
    assert done.returncode == 0, done.stderr
    return done.stdout.strip()
