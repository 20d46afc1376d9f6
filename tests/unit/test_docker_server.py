"""The generic Docker backend's pure parts: container plans, host dirs, engine reasons."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from quiesce.errors import ServerError
from quiesce.harness.servers.base import ServerLayout
from quiesce.harness.servers.docker import (
    DATA_MOUNT,
    LOG_MOUNT,
    container_plan,
    docker_available,
    engine_for_image,
    prepare_host_dirs,
)


@pytest.fixture
def layout(tmp_path: Path) -> ServerLayout:
    return ServerLayout(tmp_path / "data", tmp_path / "log", tmp_path / "run")


def test_postgres_plan_puts_pgdata_and_wal_on_the_two_disks(layout: ServerLayout) -> None:
    plan = container_plan("postgresql", layout, image="postgres:16", password="pw")
    assert plan.image == "postgres:16" and plan.port == 5432
    assert (str(layout.data_dir), DATA_MOUNT, "rw") in plan.volumes
    assert (str(layout.log_dir), LOG_MOUNT, "rw") in plan.volumes
    assert plan.env["PGDATA"] == f"{DATA_MOUNT}/pgdata"  # not the mount root (lost+found)
    assert plan.env["POSTGRES_INITDB_WALDIR"] == f"{LOG_MOUNT}/pg_wal"
    assert plan.env["POSTGRES_PASSWORD"] == "pw"
    assert (plan.user, plan.database) == ("postgres", "postgres")


@pytest.mark.parametrize("engine, key", [("mysql", "MYSQL_ROOT_PASSWORD"),
                                         ("mariadb", "MARIADB_ROOT_PASSWORD")])
def test_mysql_family_plan_puts_redo_on_the_log_disk(layout: ServerLayout, engine: str,
                                                     key: str) -> None:
    plan = container_plan(engine, layout)
    assert plan.image == {"mysql": "mysql:8.4", "mariadb": "mariadb:11"}[engine]
    assert plan.env[key]  # a random password by default
    assert f"--datadir={DATA_MOUNT}/mysql" in plan.command
    assert f"--innodb-log-group-home-dir={LOG_MOUNT}/redo" in plan.command
    assert Path(layout.log_dir) / "redo" in plan.host_dirs
    assert plan.user == "root"


def test_mongo_plan_links_the_journal_by_container_path(layout: ServerLayout) -> None:
    plan = container_plan("mongodb", layout, replset="rs0")
    assert plan.image == "mongo:7" and plan.port == 27017
    assert plan.command[:3] == ["mongod", "--dbpath", f"{DATA_MOUNT}/db"]
    assert plan.command[-2:] == ["--replSet", "rs0"]
    assert plan.symlinks == [(Path(layout.data_dir) / "db" / "journal", f"{LOG_MOUNT}/journal")]
    assert (plan.user, plan.password) == ("", "")  # no auth: clients must not send any


def test_single_disk_layout_mounts_one_volume(tmp_path: Path) -> None:
    plan = container_plan("postgresql", ServerLayout(tmp_path / "data"))
    assert len(plan.volumes) == 1
    assert "POSTGRES_INITDB_WALDIR" not in plan.env


def test_bad_requests_are_refused(layout: ServerLayout) -> None:
    with pytest.raises(ServerError, match="unknown engine"):
        container_plan("oracle", layout)
    with pytest.raises(ServerError, match="MongoDB option"):
        container_plan("mysql", layout, replset="rs0")


def test_random_passwords_differ(layout: ServerLayout) -> None:
    assert container_plan("mysql", layout).password != container_plan("mysql", layout).password


def test_prepare_host_dirs_is_idempotent(layout: ServerLayout) -> None:
    plan = container_plan("mongodb", layout)
    for _ in range(2):
        prepare_host_dirs(plan)
    link = Path(layout.data_dir) / "db" / "journal"
    assert os.readlink(link) == f"{LOG_MOUNT}/journal"
    assert (Path(layout.log_dir) / "journal").is_dir()
    if os.geteuid() == 0:
        assert (Path(layout.log_dir) / "journal").stat().st_uid == 999


@pytest.mark.parametrize("image, engine", [
    ("postgres:16", "postgresql"), ("docker.io/library/postgres:17", "postgresql"),
    ("mysql:8.4", "mysql"), ("mariadb:11", "mariadb"), ("mongo:7", "mongodb"),
    ("mongo@sha256:abc", "mongodb"),
])
def test_engine_for_image(image: str, engine: str) -> None:
    assert engine_for_image(image) == engine


def test_engine_for_unknown_image() -> None:
    with pytest.raises(ServerError, match="unknown image"):
        engine_for_image("redis:7")


def test_no_engine_gives_the_exact_reason(tmp_path: Path,
                                          monkeypatch: pytest.MonkeyPatch) -> None:
    host = f"unix://{tmp_path}/no-docker.sock"
    monkeypatch.setenv("DOCKER_HOST", host)
    ok, reason = docker_available(timeout=2)
    assert ok is False
    assert reason.startswith(f"no Docker engine at {host}: ")


def test_importing_the_module_imports_no_docker_client() -> None:
    code = ("import sys, quiesce.harness.servers.docker, quiesce_mongodb.fixtures\n"
            "print(sorted(m for m in ('docker', 'testcontainers', 'pymongo') "
            "if m in sys.modules))\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True, timeout=60).stdout.strip()
    assert out == "[]"
