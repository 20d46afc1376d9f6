"""The MongoDB engine against a real server: a local mongod, else a mongo:7 container.

Skips with the exact reason when neither exists ("no mongod on PATH (looked in ...) and no
Docker engine at unix:///var/run/docker.sock: ..."). Every test that locks a server unlocks it
in a finally block (``force_unlock``), so a failing test never leaves a server write-locked.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from helpers.mongodb import client_of, force_unlock, is_locked, write_blocked
from quiesce.deadline import Deadline
from quiesce.engine import InstanceSettings
from quiesce.errors import EngineError, SessionLost
from quiesce.harness.servers.base import Server, ServerLayout

pytestmark = [pytest.mark.mongodb, pytest.mark.timeout(300)]


def uri_of(server: Server) -> str:
    return str(server.connection.extra["uri"])


def settings_for(server: Server, **options: Any) -> InstanceSettings:
    return InstanceSettings(engine="mongodb", name="it",
                            options={"uri": uri_of(server), "connect_timeout": 5, **options})


def quiescer_for(server: Server, **options: Any) -> Any:
    from quiesce_mongodb.engine import MongoQuiescer

    return MongoQuiescer(settings_for(server, **options))


def test_lock_blocks_writes_until_release(mongodb_server: Server) -> None:
    quiescer = quiescer_for(mongodb_server)
    try:
        with client_of(mongodb_server) as client:
            assert not write_blocked(client)
            quiescer.prepare(Deadline(30))
            quiescer.quiesce(Deadline(30))
            assert is_locked(client)
            assert write_blocked(client)
            quiescer.check_alive()
            token = quiescer.recovery_token()
            assert token is not None and token["lock_count_after_lock"] == 1
            meta = quiescer.release(Deadline(30))
            assert not is_locked(client)
            assert not write_blocked(client, 10)
        json.dumps(meta)  # JSON-serialisable, as the holder requires
        assert meta["role"] == "primary" and meta["set_name"] == "rs0"
        assert (meta["lock_count_before"], meta["lock_count_after_lock"],
                meta["lock_count_after_unlock"]) == (0, 1, 0)
        assert meta["last_oplog_ts"]["t"] > 0
        assert meta["last_oplog_ts_source"] == "local.oplog.rs"
        assert meta["version"] == mongodb_server.version
        assert "warnings" not in meta
    finally:
        quiescer.close()
        force_unlock(mongodb_server)


def test_standalone_records_no_oplog(mongodb_server_factory: Callable[..., Server]) -> None:
    server = mongodb_server_factory()
    quiescer = quiescer_for(server)
    try:
        quiescer.prepare(Deadline(30))
        quiescer.quiesce(Deadline(30))
        meta = quiescer.release(Deadline(30))
        assert meta["role"] == "standalone" and meta["set_name"] is None
        assert meta["last_oplog_ts"] is None
        assert meta["storage_engine"] == "wiredTiger"
    finally:
        quiescer.close()
        force_unlock(server)


def test_server_locked_by_someone_else_is_refused_unless_allowed(
        mongodb_server_factory: Callable[..., Server]) -> None:
    server = mongodb_server_factory()
    try:
        with client_of(server) as other:
            other.admin.command("fsync", lock=True)
            refused = quiescer_for(server)
            with pytest.raises(EngineError, match="already fsync-locked"):
                refused.prepare(Deadline(30))
            refused.close()

            allowed = quiescer_for(server, allow_locked=True)
            allowed.prepare(Deadline(30))
            allowed.quiesce(Deadline(30))
            meta = allowed.release(Deadline(30))
            allowed.close()
            assert (meta["lock_count_before"], meta["lock_count_after_lock"],
                    meta["lock_count_after_unlock"]) == (1, 2, 1)
            # Only our lock was undone: the other client's lock still holds.
            assert is_locked(other)
            assert other.admin.command("fsyncUnlock")["lockCount"] == 0
    finally:
        force_unlock(server)


def test_foreign_unlock_during_the_hold_is_a_lost_session(
        mongodb_server_factory: Callable[..., Server]) -> None:
    server = mongodb_server_factory()
    quiescer = quiescer_for(server)
    try:
        quiescer.prepare(Deadline(30))
        quiescer.quiesce(Deadline(30))
        with client_of(server) as other:
            other.admin.command("fsyncUnlock")
        with pytest.raises(SessionLost, match="no longer fsync-locked"):
            quiescer.check_alive()
    finally:
        quiescer.close()
        force_unlock(server)


def test_restart_during_the_hold_is_a_lost_session(
        mongodb_server_factory: Callable[..., Server]) -> None:
    server = mongodb_server_factory()
    quiescer = quiescer_for(server)
    try:
        quiescer.prepare(Deadline(30))
        quiescer.quiesce(Deadline(30))
        server.restart()  # type: ignore[attr-defined]
        with pytest.raises(SessionLost):
            quiescer.check_alive()
    finally:
        quiescer.close()
        force_unlock(server)


def test_abort_after_lock_unlocks(mongodb_server_factory: Callable[..., Server]) -> None:
    server = mongodb_server_factory()
    quiescer = quiescer_for(server)
    try:
        quiescer.prepare(Deadline(30))
        quiescer.quiesce(Deadline(30))
        quiescer.abort()
        with client_of(server) as client:
            assert not is_locked(client)
    finally:
        quiescer.close()
        force_unlock(server)


def _recover_in_fresh_process(server: Server,
                              token: dict[str, Any]) -> subprocess.CompletedProcess[str]:
    code = ("import json, sys\n"
            "from quiesce.engine import InstanceSettings\n"
            "from quiesce_mongodb.recovery import recover\n"
            "opts, token = json.loads(sys.argv[1]), json.loads(sys.argv[2])\n"
            "print(recover(InstanceSettings('mongodb', 'it', opts), token))\n")
    opts = {"uri": uri_of(server), "connect_timeout": 5}
    return subprocess.run([sys.executable, "-c", code, json.dumps(opts), json.dumps(token)],
                          capture_output=True, text=True, timeout=120, check=False)


def test_recovery_from_a_dead_holder_unlocks_our_lock(
        mongodb_server_factory: Callable[..., Server]) -> None:
    server = mongodb_server_factory()
    quiescer = quiescer_for(server)
    try:
        quiescer.prepare(Deadline(30))
        quiescer.quiesce(Deadline(30))
        token = quiescer.recovery_token()
        quiescer.close()  # the holder is gone; the server stays locked
        with client_of(server) as client:
            assert is_locked(client)
            done = _recover_in_fresh_process(server, token)
            assert done.returncode == 0, done.stderr
            assert "unlocking once" in done.stdout
            assert not is_locked(client)
    finally:
        force_unlock(server)


def test_recovery_never_unlocks_someone_elses_lock(
        mongodb_server_factory: Callable[..., Server]) -> None:
    server = mongodb_server_factory()
    quiescer = quiescer_for(server)
    try:
        quiescer.prepare(Deadline(30))
        quiescer.quiesce(Deadline(30))
        token = quiescer.recovery_token()
        quiescer.close()
        with client_of(server) as other:
            assert other.admin.command("fsync", lock=True)["lockCount"] == 2
            done = _recover_in_fresh_process(server, token)
            assert done.returncode != 0
            assert "someone else locked" in done.stderr
            # Nothing was unlocked: both locks still count.
            assert other.admin.command("fsyncUnlock")["lockCount"] == 1
    finally:
        force_unlock(server)


def test_restored_copy_starts_with_its_journal_repointed(
        mongodb_server_factory: Callable[..., Server], tmp_path: Path) -> None:
    from quiesce_mongodb.server import LocalMongod

    server = mongodb_server_factory()
    if not isinstance(server, LocalMongod):
        pytest.skip("journal repointing is a local-backend concern (containers use fixed paths)")
    with client_of(server) as client:
        client.quiesce_it.t.insert_one({"kept": 1})
    server.stop()
    copy = ServerLayout(tmp_path / "data-copy", tmp_path / "journal-copy", tmp_path / "run")
    shutil.copytree(server.layout.data_dir, copy.data_dir, symlinks=True)
    shutil.copytree(server.layout.log_dir, copy.log_dir, symlinks=True)
    restored = LocalMongod.open_existing(copy)
    try:
        restored.start()
        assert (copy.data_dir / "journal").resolve() == (copy.log_dir / "journal").resolve()
        with client_of(restored) as client:
            assert client.quiesce_it.t.count_documents({"kept": 1}) == 1
    finally:
        restored.stop()
