"""MongoDB end to end through the real CLI: quiesce pre -> (snapshot) -> quiesce post.

The config-refusal and unreachable-server tests run everywhere (as root); the others need a
real server (a local mongod, else a mongo:7 container) and skip with the exact reason.
Every test that can leave a server locked unlocks it in its cleanup.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from quiesce.deadline import Deadline
from quiesce.servers.base import Server, free_port

pytestmark = [pytest.mark.timeout(240), pytest.mark.usefixtures("require_root")]


class Cli:
    """A root-only workspace in /run (a trusted path) with quiesce.toml, runtime and state."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.config = root / "quiesce.toml"
        self.rundir = root / "rt"
        self.state = root / "state"

    def write_config(self, *, max_hold: int = 120, **options: Any) -> None:
        lines = [f"max_hold_seconds = {max_hold}", f'state_dir = "{self.state}"', "",
                 "[[mongodb]]", 'name = "main"']
        lines += [f"{key} = {json.dumps(value)}" for key, value in options.items()]
        self.config.write_text("\n".join(lines) + "\n")
        self.config.chmod(0o600)

    def run(self, command: str, *extra: str, timeout: float = 120) -> subprocess.CompletedProcess:
        argv = [sys.executable, "-m", "quiesce", command]
        if command in ("pre", "post"):
            argv += ["--config", str(self.config)]
        argv += ["--runtime-dir", str(self.rundir), *extra]
        return subprocess.run(argv, capture_output=True, text=True, timeout=timeout,
                              check=False)

    def post_json(self) -> dict:
        out = self.run("post", "--json")
        assert out.returncode in (0, 1), out.stdout + out.stderr
        return json.loads(out.stdout)

    def status(self) -> dict:
        out = self.run("status", "--json")
        return json.loads(out.stdout) if out.stdout.strip() else {}


@pytest.fixture
def cli() -> Iterator[Cli]:
    root = Path(tempfile.mkdtemp(prefix="quiesce-mongo-cli-", dir="/run"))
    workspace = Cli(root)
    try:
        yield workspace
    finally:
        if workspace.rundir.exists() and workspace.status().get("holder_pid"):
            workspace.run("post", "--json")
        shutil.rmtree(root, ignore_errors=True)


def client_of(server: Server) -> Any:
    import pymongo

    info = server.connection
    return pymongo.MongoClient(info.host, info.port, directConnection=True,
                               serverSelectionTimeoutMS=10000)


def is_locked(server: Server) -> bool:
    with client_of(server) as client:
        return bool(client.admin.command({"currentOp": 1, "$ownOps": True}).get("fsyncLock"))


def force_unlock(server: Server) -> None:
    from pymongo import errors

    with client_of(server) as client:
        for _ in range(10):
            if not client.admin.command({"currentOp": 1, "$ownOps": True}).get("fsyncLock"):
                return
            try:
                client.admin.command("fsyncUnlock")
            except errors.OperationFailure:
                return


def insert_times_out(server: Server, seconds: float = 1.5) -> bool:
    import pymongo
    from pymongo import errors

    with client_of(server) as client:
        try:
            with pymongo.timeout(seconds):
                client.quiesce_cli.t.insert_one({"probe": True})
        except errors.PyMongoError as exc:
            if exc.timeout:
                return True
            raise
    return False


def wait_for(condition: Callable[[], bool], timeout: float = 90, what: str = "") -> None:
    deadline = Deadline(timeout)
    while not condition():
        if deadline.expired():
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(0.2)


# -- no server needed ----------------------------------------------------------------------

def test_password_in_uri_is_refused_before_anything_runs(cli: Cli) -> None:
    cli.write_config(uri="mongodb://backup:hunter2@127.0.0.1:27017/")
    out = cli.run("pre")
    assert out.returncode != 0
    text = out.stdout + out.stderr
    assert "uri_file" in text and "password" in text
    assert "hunter2" not in text
    assert not cli.status().get("holder_pid")


def test_unreachable_server_fails_pre_clearly(cli: Cli) -> None:
    cli.write_config(uri=f"mongodb://127.0.0.1:{free_port()}/", connect_timeout=1)
    out = cli.run("pre")
    assert out.returncode != 0
    text = out.stdout + out.stderr
    assert "main" in text and "Connection refused" in text
    assert not cli.status().get("holder_pid")


# -- against a real server -----------------------------------------------------------------

@pytest.mark.mongodb
def test_pre_blocks_writes_and_post_releases(cli: Cli,
                                             mongodb_server_factory: Callable[..., Server]
                                             ) -> None:
    server = mongodb_server_factory(replset="rs0")
    try:
        cli.write_config(uri=server.connection.extra["uri"])
        out = cli.run("pre", "--json")
        assert out.returncode == 0, out.stdout + out.stderr
        assert is_locked(server)
        assert insert_times_out(server)
        result = cli.post_json()
        (inst,) = result["instances"]
        assert (inst["plugin"], inst["status"]) == ("mongodb", "released"), inst
        meta = inst["metadata"]
        assert meta["role"] == "primary" and meta["set_name"] == "rs0"
        assert (meta["lock_count_before"], meta["lock_count_after_unlock"]) == (0, 0)
        assert meta["last_oplog_ts"]["t"] > 0
        assert not is_locked(server)
        assert not insert_times_out(server, 10)
    finally:
        force_unlock(server)


@pytest.mark.mongodb
def test_second_pre_leaves_the_active_hold_alone(cli: Cli,
                                                 mongodb_server_factory: Callable[..., Server]
                                                 ) -> None:
    server = mongodb_server_factory()
    try:
        cli.write_config(uri=server.connection.extra["uri"])
        assert cli.run("pre").returncode == 0
        assert cli.run("pre").returncode != 0
        assert is_locked(server)
        assert cli.post_json()["instances"][0]["status"] == "released"
        assert not is_locked(server)
    finally:
        force_unlock(server)


@pytest.mark.mongodb
def test_holder_sigkill_is_undone_by_the_guardian(cli: Cli,
                                                  mongodb_server_factory: Callable[..., Server]
                                                  ) -> None:
    server = mongodb_server_factory()
    try:
        cli.write_config(uri=server.connection.extra["uri"])
        assert cli.run("pre").returncode == 0
        holder = cli.status().get("holder_pid")
        assert isinstance(holder, int), cli.status()
        os.kill(holder, signal.SIGKILL)
        # fsyncLock outlives the holder's connection: only the guardian can undo it.
        wait_for(lambda: not is_locked(server), what="the guardian to unlock the server")
        out = cli.run("post", "--json")
        assert out.returncode != 0
        (inst,) = json.loads(out.stdout)["instances"]
        assert inst["status"] == "lost"
        assert "undone by the guardian" in (inst.get("note") or "")
    finally:
        force_unlock(server)


@pytest.mark.mongodb
def test_deadline_auto_releases_an_abandoned_hold(cli: Cli,
                                                  mongodb_server_factory: Callable[..., Server]
                                                  ) -> None:
    server = mongodb_server_factory()
    try:
        cli.write_config(uri=server.connection.extra["uri"], max_hold=3)
        assert cli.run("pre").returncode == 0
        wait_for(lambda: not is_locked(server), what="the dead-man deadline to unlock")
        result = cli.post_json()
        assert result["instances"][0]["status"] == "auto-released"
        assert result["consistent"] is False
    finally:
        force_unlock(server)


@pytest.mark.mongodb
def test_restart_during_hold_is_reported_lost(cli: Cli,
                                              mongodb_server_factory: Callable[..., Server]
                                              ) -> None:
    server = mongodb_server_factory()
    try:
        cli.write_config(uri=server.connection.extra["uri"])
        assert cli.run("pre").returncode == 0
        server.restart()  # type: ignore[attr-defined]
        result = cli.post_json()
        assert result["instances"][0]["status"] == "lost", result
        assert result["consistent"] is False
    finally:
        force_unlock(server)
