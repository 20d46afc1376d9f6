"""The private engine docker/test-engine.sh starts leaves the host's forwarding and firewall
as they were, and publishes container ports on 127.0.0.1 only.

Runs against the engine that script started (``./dev test`` with CI=true or
QUIESCE_TEST_DOCKER=1): the host's state recorded before the start must equal the state now,
with the engine running; ``test-engine.sh stop`` compares it once more after the stop and
fails the run if anything changed. Skips, saying so, when DOCKER_HOST is not that engine.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

pytestmark = [pytest.mark.docker]
ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "docker" / "test-engine.sh"


@pytest.fixture(scope="module")
def state_dir() -> Path:
    host = os.environ.get("DOCKER_HOST", "")
    sock = Path(host.removeprefix("unix://")) if host.startswith("unix://") else None
    if sock is None or not (sock.parent / "hoststate.before").is_file():
        pytest.skip(f"DOCKER_HOST ({host or 'unset'}) is not an engine started by "
                    f"{SCRIPT.relative_to(ROOT)} start")
    return sock.parent


def test_forwarding_and_firewall_are_unchanged_while_the_engine_runs(state_dir: Path) -> None:
    env = {**os.environ, "QUIESCE_TEST_DOCKER_STATE": str(state_dir)}
    now = subprocess.run(["bash", str(SCRIPT), "hoststate"], capture_output=True, text=True,
                         check=True, timeout=60, env=env).stdout
    before = (state_dir / "hoststate.before").read_text()
    assert now == before
    assert "ip_forward=" in now


def test_the_engine_runs_with_the_safe_flags(state_dir: Path) -> None:
    pid = int((state_dir / "started-pid").read_text())
    argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    for flag in (b"--iptables=false", b"--ip-forward=false", b"--ip=127.0.0.1"):
        assert flag in argv, argv


def test_ports_are_published_on_127_0_0_1(state_dir: Path, tmp_path: Path) -> None:
    from quiesce.harness.images import ImageUnavailable, resolve_image
    from quiesce.harness.servers.base import ServerLayout
    from quiesce.harness.servers.docker import DockerServer

    try:
        image = resolve_image("postgresql")
    except ImageUnavailable as exc:
        pytest.skip(f"{exc}; {exc.hint}")
    os.chmod(tmp_path, 0o755)
    server = DockerServer("postgresql", ServerLayout(tmp_path / "d", tmp_path / "l"),
                          image=image)
    try:
        server.start()
        assert server.connection.host == "127.0.0.1"
    finally:
        server.stop()
