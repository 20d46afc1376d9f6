"""Orchestrator logic that needs no server: the check that a server really uses the disks."""

from __future__ import annotations

from pathlib import Path


def test_disks_without_files_finds_a_disk_the_server_never_wrote(tmp_path: Path) -> None:
    # What a Docker engine that cannot see the drill's loop mounts leaves: directories that
    # the drill created for the server, but no file of the server on that disk.
    from quiesce.drill.orchestrator import disks_without_files

    data, log = tmp_path / "data", tmp_path / "log"
    (data / "lost+found").mkdir(parents=True)
    (data / "lost+found" / "#123").write_text("x")  # fsck's, not the server's
    (data / "pgdata" / "base").mkdir(parents=True)
    (log / "pg_wal").mkdir(parents=True)
    assert disks_without_files({"data": data, "log": log}) == ["data", "log"]
    (log / "pg_wal" / "000000010000000000000001").write_bytes(b"\0")
    (data / "pgdata" / "PG_VERSION").write_text("15\n")
    assert disks_without_files({"data": data, "log": log}) == []
