"""Orchestrator logic that needs no server: the check that a server really uses the disks."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest


def test_disks_without_files_finds_a_disk_the_server_never_wrote(tmp_path: Path) -> None:
    # What a Docker engine that cannot see the drill's loop mounts leaves: directories that
    # the drill created for the server, but no file of the server on that disk.
    from quiesce.harness.drill.orchestrator import disks_without_files

    data, log = tmp_path / "data", tmp_path / "log"
    (data / "lost+found").mkdir(parents=True)
    (data / "lost+found" / "#123").write_text("x")  # fsck's, not the server's
    (data / "pgdata" / "base").mkdir(parents=True)
    (log / "pg_wal").mkdir(parents=True)
    assert disks_without_files({"data": data, "log": log}) == ["data", "log"]
    (log / "pg_wal" / "000000010000000000000001").write_bytes(b"\0")
    (data / "pgdata" / "PG_VERSION").write_text("15\n")
    assert disks_without_files({"data": data, "log": log}) == []


def test_a_leftover_hold_that_cannot_be_released_is_reported(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A 'post' that hangs after an interrupted cycle must be said, not swallowed."""
    from quiesce.harness.drill import cycle

    files = object.__new__(cycle.CycleFiles)
    files.mode, files.runtime, files.toml = "quiesced", tmp_path, tmp_path / "quiesce.toml"

    def hung(argv: list[str], **kw: object) -> None:
        raise subprocess.TimeoutExpired(argv, kw.get("timeout") or 0)

    monkeypatch.setattr(cycle.subprocess, "run", hung)
    note = files.release_leftover_hold()
    assert note is not None and "could not release a hold" in note
    assert "max_hold_seconds" in note
