"""The Docker backend against a real engine: each image starts on host directories, the data
and the WAL/redo/journal land on the two given directories, a copy restores, containers are
named, labelled and removed, and real drills run on it (quiesced verified, the negative
control caught).

Skips with the exact reason when no Docker engine answers, and, per engine, when its image is
neither here nor pullable (naming the image and ``quiesce images build --engine X``).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from quiesce.harness.servers.base import ServerLayout

pytestmark = [pytest.mark.docker, pytest.mark.timeout(900)]

# Where each engine's files must appear on the host: (data-disk file, log-disk directory).
EXPECTED = {
    "postgresql": ("pgdata/PG_VERSION", "pg_wal"),
    "mysql": ("mysql/mysql.ibd", "redo"),
    "mariadb": ("mysql/ibdata1", "redo"),
    "mongodb": ("db/WiredTiger", "journal"),
}


@pytest.fixture(scope="module")
def docker_engine() -> None:
    from quiesce.harness.servers.docker import docker_available

    ok, reason = docker_available()
    if not ok:
        pytest.skip(reason)


def image_for(engine: str) -> str:
    """The image the backend would run for ``engine``, or skip saying which and how to get it."""
    from quiesce.harness.images import ImageUnavailable, resolve_image

    try:
        return resolve_image(engine)
    except ImageUnavailable as exc:
        pytest.skip(f"{exc}; {exc.hint}")


@pytest.fixture
def layout(tmp_path: Path) -> Iterator[ServerLayout]:
    os.chmod(tmp_path, 0o755)  # the containers' service user traverses it
    yield ServerLayout(tmp_path / "data", tmp_path / "log", tmp_path / "run")


def _containers() -> list[str]:
    from quiesce.harness.servers.docker import LABEL, docker_client

    client = docker_client()
    try:
        return [c.name for c in client.containers.list(all=True, filters={"label": LABEL})
                if c.labels.get("io.quiesce.pid") == str(os.getpid())]
    finally:
        client.close()


@pytest.mark.usefixtures("docker_engine")
@pytest.mark.parametrize("engine", sorted(EXPECTED))
def test_image_runs_on_the_two_host_directories(engine: str, layout: ServerLayout) -> None:
    from quiesce.harness.servers.docker import DockerServer

    image = image_for(engine)
    server = DockerServer(engine, layout, image=image)
    try:
        server.start()
        assert server.version
        assert server.name.startswith(f"quiesce-drill-{engine}-{os.getpid()}-")
        assert server.name in _containers()
        data_file, log_dir = EXPECTED[engine]
        assert (Path(layout.data_dir) / data_file).exists()
        assert any((Path(layout.log_dir) / log_dir).iterdir())
    finally:
        server.stop()
    assert _containers() == []


@pytest.mark.usefixtures("docker_engine")
@pytest.mark.parametrize("engine", ["postgresql", "mariadb"])
def test_a_copy_restores_with_the_original_password(engine: str, layout: ServerLayout,
                                                    tmp_path: Path) -> None:
    # A restored data directory keeps its superuser password; the new container must use it.
    from quiesce.harness.servers.docker import DockerServer

    image = image_for(engine)
    server = DockerServer(engine, layout, image=image)
    try:
        server.start()
        password = server.plan.password
    finally:
        server.stop()
    copy = ServerLayout(tmp_path / "data-copy", tmp_path / "log-copy")
    shutil.copytree(layout.data_dir, copy.data_dir, symlinks=True)
    shutil.copytree(layout.log_dir, copy.log_dir, symlinks=True)
    restored = DockerServer.open_existing(engine, copy, image=image, password=password)
    try:
        restored.start()
        assert restored.version == server.version
    finally:
        restored.stop()
    assert _containers() == []


@pytest.mark.usefixtures("docker_engine")
def test_a_container_that_exits_fails_the_start_and_is_removed(layout: ServerLayout) -> None:
    from quiesce.errors import ServerError
    from quiesce.harness.servers.docker import DockerServer

    image = image_for("postgresql")
    Path(layout.data_dir, "pgdata").mkdir(parents=True)
    Path(layout.data_dir, "pgdata", "PG_VERSION").write_text("15\n")  # no cluster behind it
    server = DockerServer.open_existing("postgresql", layout, image=image, start_timeout=120)
    with pytest.raises(ServerError, match="exited while starting"):
        server.start()
    assert _containers() == []


@pytest.mark.usefixtures("docker_engine")
def test_leftovers_of_a_dead_process_are_removed() -> None:
    from quiesce.harness.servers.docker import (
        LABEL,
        LABEL_HOST,
        LABEL_PID,
        docker_client,
        remove_leftovers,
    )

    image = image_for("postgresql")
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    client = docker_client()
    try:
        import socket

        container = client.containers.create(
            image, name=f"quiesce-drill-test-leftover-{os.getpid()}",
            labels={LABEL: "1", LABEL_PID: str(dead.pid), LABEL_HOST: socket.gethostname()})
        try:
            removed = remove_leftovers(client)
            assert container.name in removed
            names = [c.name for c in client.containers.list(all=True)]
            assert container.name not in names
        finally:
            with __import__("contextlib").suppress(Exception):
                container.remove(force=True)
    finally:
        client.close()


@pytest.mark.usefixtures("docker_engine")
def test_mongo_copy_restores_without_repointing(layout: ServerLayout, tmp_path: Path) -> None:
    from quiesce.harness.servers.docker import DockerServer

    image = image_for("mongodb")
    server = DockerServer("mongodb", layout, image=image)
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
    restored = DockerServer.open_existing("mongodb", copy, image=image)
    try:
        restored.start()
        info = restored.connection
        with pymongo.MongoClient(info.host, info.port, directConnection=True) as client:
            assert client.drill.t.count_documents({"kept": 1}) == 1
    finally:
        restored.stop()


# ------------------------------------------------------------------ drills on Docker

def _drill(tmp_path: Path, *args: str, env: dict[str, str] | None = None,
           timeout: int = 900) -> subprocess.CompletedProcess[str]:
    base = Path("/var/lib") / f"quiesce-drill-test-{os.getpid()}" if os.geteuid() == 0 \
        else tmp_path / "drill"
    full_env = {**os.environ, "QUIESCE_DRILL_DIR": str(base), **(env or {})}
    try:
        return subprocess.run([sys.executable, "-m", "quiesce", "drill", *args], env=full_env,
                              capture_output=True, text=True, timeout=timeout, check=False,
                              stdin=subprocess.DEVNULL)
    finally:
        leftovers = list(base.iterdir()) if base.is_dir() else []
        shutil.rmtree(base, ignore_errors=True)
        assert leftovers == [], leftovers


@pytest.mark.usefixtures("docker_engine")
@pytest.mark.parametrize("engine", ["postgresql", "mariadb"])
@pytest.mark.parametrize(("mode", "verified"), [("quiesced", True), ("unsafe-staggered", False)])
def test_docker_drill(engine: str, mode: str, verified: bool, tmp_path: Path) -> None:
    image = image_for(engine)
    done = _drill(tmp_path, "--engine", engine, "--backend", "docker", "--mode", mode,
                  "--cycles", "2", "--json")
    assert done.stdout.startswith("{"), done.stderr[-3000:]
    doc = json.loads(done.stdout)
    assert doc.get("backend") == "docker", (doc, done.stderr[-3000:])
    assert image in doc["backend_reason"]
    assert done.returncode == (0 if verified else 1), done.stderr[-3000:]
    for cycle in doc["cycles"]:
        assert cycle["verified"] is verified, cycle
        if not verified:  # caught by the restore itself, not by a broken harness
            assert cycle["error"] is None, cycle["error"]
    assert _containers() == []


@pytest.mark.usefixtures("docker_engine")
def test_backend_docker_without_the_image_exits_3_with_one_line(tmp_path: Path) -> None:
    missing = "quiesce-drill/postgresql:no-such-tag"
    done = _drill(tmp_path, "--engine", "postgresql", "--backend", "docker",
                  env={"QUIESCE_POSTGRESQL_IMAGE": missing}, timeout=300)
    assert done.returncode == 3, done.stderr
    assert done.stdout == ""
    (line,) = done.stderr.strip().splitlines()
    assert missing in line and "cannot be pulled" in line
    assert "quiesce images build --engine postgresql" in line
    assert "Traceback" not in done.stderr


@pytest.mark.usefixtures("docker_engine")
def test_auto_without_the_image_uses_the_local_binaries_and_says_why(tmp_path: Path) -> None:
    if not any(Path("/usr/lib/postgresql").glob("*/bin/initdb")):
        pytest.skip("no local PostgreSQL (apt-get install postgresql) to fall back to")
    missing = "quiesce-drill/postgresql:no-such-tag"
    done = _drill(tmp_path, "--engine", "postgresql", "--cycles", "1", "--json",
                  env={"QUIESCE_POSTGRESQL_IMAGE": missing})
    doc = json.loads(done.stdout)
    assert done.returncode == 0, done.stderr[-3000:]
    assert doc["backend"] == "local"
    assert missing in doc["backend_reason"] and "cannot be pulled" in doc["backend_reason"]
    assert f"backend local: {doc['backend_reason']}" in done.stderr
