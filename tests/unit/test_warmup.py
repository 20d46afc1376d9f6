"""The holder's warm-up (quiesce.hold.warmup): the go message, and what a holder does before it.

A holder started with --go-fd may import while 'pre' checks, but must touch nothing (no
runtime dir, no lock, no database) until 'pre' says go, and must exit without a trace when
'pre' closes the pipe instead."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from quiesce.hold import warmup


def test_go_message_round_trip_and_only_declared_variables_travel() -> None:
    raw = warmup.go_message(123.5, {"QUIESCE_AZURE_FS_FREEZE": "true", "PATH": "/evil"})
    assert json.loads(raw)["environ"] == {"QUIESCE_AZURE_FS_FREEZE": "true"}
    go = warmup.parse_go(raw)
    assert go == warmup.Go(123.5, {"QUIESCE_AZURE_FS_FREEZE": "true"})
    assert warmup.parse_go(warmup.go_message(None)) == warmup.Go(None, {})


def test_the_handed_over_variable_is_the_one_pre_declares() -> None:
    from quiesce.freezing.freeze_set import AZURE_FREEZE_ENV

    assert frozenset({AZURE_FREEZE_ENV}) == warmup.GO_ENVIRON_KEYS


@pytest.mark.parametrize("raw", [
    b"", b"go\n", b"{}\n", b'{"go": false}\n', b'{"go": true}',  # no newline: incomplete
    b'{"go": true, "deadline_at": "soon"}\n', b'{"go": true, "deadline_at": true}\n',
    b'{"go": true, "deadline_at": NaN}\n', b'{"go": true, "deadline_at": Infinity}\n',
    b'{"go": true, "environ": {"LD_PRELOAD": "/x.so"}}\n',
    b'{"go": true, "environ": {"QUIESCE_AZURE_FS_FREEZE": 1}}\n', b"[true]\n",
])
def test_anything_but_a_go_message_means_no_go(raw: bytes) -> None:
    assert warmup.parse_go(raw) is None


def test_wait_for_go_reads_a_message_written_in_pieces() -> None:
    read_fd, write_fd = os.pipe()
    raw = warmup.go_message(42.0)

    def write() -> None:
        for i in range(0, len(raw), 5):
            os.write(write_fd, raw[i:i + 5])
            time.sleep(0.002)
        os.close(write_fd)

    writer = threading.Thread(target=write)
    writer.start()
    try:
        assert warmup.wait_for_go(read_fd, timeout=10) == warmup.Go(42.0, {})
    finally:
        writer.join()
        os.close(read_fd)


def test_wait_for_go_gives_up_on_eof_and_on_timeout() -> None:
    read_fd, write_fd = os.pipe()
    os.write(write_fd, b'{"go": tr')
    os.close(write_fd)
    assert warmup.wait_for_go(read_fd, timeout=10) is None  # EOF mid-message
    os.close(read_fd)
    read_fd, write_fd = os.pipe()
    started = time.monotonic()
    assert warmup.wait_for_go(read_fd, timeout=0.2) is None
    assert time.monotonic() - started < 5
    os.close(read_fd)
    os.close(write_fd)


def test_preload_never_raises_and_imports_nothing_for_a_bad_config(tmp_path: Path) -> None:
    assert warmup.preload(str(tmp_path / "missing.toml"), None) == []
    bad = tmp_path / "bad.toml"
    bad.write_text("this is = = not toml")
    assert warmup.preload(str(bad), ["postgresql"]) == []


def test_bundled_engines_name_importable_preload_modules() -> None:
    """Every module a bundled engine asks the holder to preload exists (a typo would only
    make the warm-up silently slower)."""
    import importlib.util

    from quiesce.plugins import Plugins

    plugins = Plugins()
    plugins.load_entry_points(only=["postgresql", "mysql", "mongodb"])
    for name in ("postgresql", "mysql", "mongodb"):
        modules = plugins.engines.get(name).extra[warmup.PRELOAD_KEY]
        assert modules, name
        for module in modules:
            assert importlib.util.find_spec(module) is not None, (name, module)


def _holder(tmp_path: Path) -> tuple[subprocess.Popen[bytes], int, int, Path]:
    """A holder started as 'pre' starts it: (process, go write end, ready read end, rundir)."""
    rundir = tmp_path / "rt"
    config = tmp_path / "quiesce.toml"
    config.write_text("[[postgresql]]\nconninfo = 'host=/nonexistent'\n")
    go_read, go_write = os.pipe()
    ready_read, ready_write = os.pipe()
    process = subprocess.Popen(
        [sys.executable, "-B", "-m", "quiesce.hold.holder", "--config", str(config),
         "--runtime-dir", str(rundir), "--ready-fd", str(ready_write), "--go-fd",
         str(go_read)], pass_fds=(go_read, ready_write), stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, cwd="/")
    os.close(go_read)
    os.close(ready_write)
    return process, go_write, ready_read, rundir


def test_a_holder_told_nothing_touches_nothing_and_exits(tmp_path: Path) -> None:
    process, go_write, ready_read, rundir = _holder(tmp_path)
    os.close(go_write)  # what 'pre' does when one of its checks fails
    try:
        _, stderr = process.communicate(timeout=60)
        assert process.returncode == 0, stderr.decode()
        assert os.read(ready_read, 100) == b""  # no readiness message: nothing was attempted
    finally:
        os.close(ready_read)
    assert not rundir.exists()


def test_a_malformed_go_is_no_go(tmp_path: Path) -> None:
    process, go_write, ready_read, rundir = _holder(tmp_path)
    os.write(go_write, b'{"go": "yes"}\n')
    os.close(go_write)
    try:
        _, stderr = process.communicate(timeout=60)
        assert process.returncode == 0, stderr.decode()
        assert os.read(ready_read, 100) == b""
    finally:
        os.close(ready_read)
    assert not rundir.exists()
