"""MongoDB end to end through the real CLI: quiesce pre -> (snapshot) -> quiesce post.

The config-refusal and unreachable-server tests run everywhere (as root); the others need a
real server (a local mongod, else a mongo:7 container) and skip with the exact reason.
Every test that can leave a server locked unlocks it in its cleanup.
"""

from __future__ import annotations

import json
import os
import signal
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from helpers import wait_for
from helpers.cli import QuiesceCli, cli_workspace
from helpers.mongodb import client_of, force_unlock, is_locked, write_blocked
from quiesce.harness.servers.base import Server, free_port

pytestmark = [pytest.mark.timeout(240), pytest.mark.usefixtures("require_root")]


class Cli(QuiesceCli):
    def write_config(self, *, max_hold: int = 120, **options: Any) -> None:
        self.write_sections([("mongodb", {"name": "main", **options})], max_hold=max_hold)


@pytest.fixture
def cli() -> Iterator[Cli]:
    with cli_workspace(Cli, "quiesce-mongo-cli-") as workspace:
        yield workspace


def server_locked(server: Server) -> bool:
    with client_of(server) as client:
        return is_locked(client)


def insert_times_out(server: Server, seconds: float = 1.5) -> bool:
    with client_of(server) as client:
        return write_blocked(client, seconds)


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
        assert server_locked(server)
        assert insert_times_out(server)
        result = cli.post_json()
        (inst,) = result["instances"]
        assert (inst["plugin"], inst["status"]) == ("mongodb", "released"), inst
        meta = inst["metadata"]
        assert meta["role"] == "primary" and meta["set_name"] == "rs0"
        assert (meta["lock_count_before"], meta["lock_count_after_unlock"]) == (0, 0)
        assert meta["last_oplog_ts"]["t"] > 0
        assert not server_locked(server)
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
        assert server_locked(server)
        assert cli.post_json()["instances"][0]["status"] == "released"
        assert not server_locked(server)
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
        wait_for(lambda: not server_locked(server), 90, "the guardian to unlock the server")
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
        wait_for(lambda: not server_locked(server), 90, "the dead-man deadline to unlock")
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
