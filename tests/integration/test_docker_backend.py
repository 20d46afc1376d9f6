"""The generic Docker backend against a real engine: each image starts on host directories,
the data and the WAL/redo/journal land on the two given directories, and a copy restores.

Skips with the exact reason when no Docker engine answers.
"""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from quiesce.harness.servers.base import ServerLayout

pytestmark = [pytest.mark.docker, pytest.mark.timeout(600)]


@pytest.fixture(scope="module")
def docker_engine() -> None:
    from quiesce.harness.servers.docker import docker_available

    ok, reason = docker_available()
    if not ok:
        pytest.skip(reason)


@pytest.fixture
def layout(tmp_path: Path) -> Iterator[ServerLayout]:
    yield ServerLayout(tmp_path / "data", tmp_path / "log", tmp_path / "run")


# Where each engine's files must appear on the host: (data-disk file, log-disk directory).
EXPECTED = {
    "postgresql": ("pgdata/PG_VERSION", "pg_wal"),
    "mysql": ("mysql/mysql.ibd", "redo"),
    "mariadb": ("mysql/ibdata1", "redo"),
    "mongodb": ("db/WiredTiger", "journal"),
}


@pytest.mark.usefixtures("docker_engine")
@pytest.mark.parametrize("engine", sorted(EXPECTED))
def test_image_runs_on_the_two_host_directories(engine: str, layout: ServerLayout) -> None:
    from quiesce.harness.servers.docker import DockerServer

    server = DockerServer(engine, layout)
    try:
        server.start()
        assert server.version
        data_file, log_dir = EXPECTED[engine]
        assert (Path(layout.data_dir) / data_file).exists()
        assert any((Path(layout.log_dir) / log_dir).iterdir())
    finally:
        server.stop()


@pytest.mark.usefixtures("docker_engine")
def test_mongo_copy_restores_without_repointing(layout: ServerLayout, tmp_path: Path) -> None:
    from quiesce.harness.servers.docker import DockerServer

    server = DockerServer("mongodb", layout)
    try:
        server.start()
        import pymongo

        info = server.connection
        with pymongo.MongoClient(info.host, info.port, directConnection=True) as client:
            client.drill.t.insert_one({"kept": 1})
            client.admin.command("fsync")
    finally:
        server.stop()
    copy = ServerLayout(tmp_path / "data-copy", tmp_path / "log-copy")
    shutil.copytree(layout.data_dir, copy.data_dir, symlinks=True)
    shutil.copytree(layout.log_dir, copy.log_dir, symlinks=True)
    restored = DockerServer.open_existing("mongodb", copy)
    try:
        restored.start()
        info = restored.connection
        with pymongo.MongoClient(info.host, info.port, directConnection=True) as client:
            assert client.drill.t.count_documents({"kept": 1}) == 1
    finally:
        restored.stop()
