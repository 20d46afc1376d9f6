"""A chroot for the real QEMU guest agent whose every block device belongs to the test.

qemu-ga's ``guest-fsfreeze-thaw`` FITHAWs every block-device mount the agent can see, and a
plain ``guest-fsfreeze-freeze`` freezes them all. So the agent only ever runs inside a chroot
built from loop images this helper creates:

- ``root``: an ext4 image, loop-mounted, holding a Debian rootfs (python3, python3-venv,
  qemu-guest-agent, from the distribution's packages through
  :func:`quiesce.harness.rootfs.ensure_rootfs`) with quiesce installed in ``/opt/quiesce``;
- ``db``: a second ext4 image mounted at ``/srv/db`` inside it, the only filesystem the test
  ever asks the agent to freeze (``guest-fsfreeze-freeze-list``);
- ``/proc`` (proc), ``/dev`` (a tmpfs with null, zero, random, urandom), ``/run`` and
  ``/tmp`` (tmpfs): none of them a block device.

:meth:`QgaJail.block_mounts` reads ``/proc/self/mountinfo`` from inside the chroot, and
:meth:`QgaJail.assert_only_own_devices` fails unless every block-device mount there is one of
the two loop devices. The agent is started with ``guest-fsfreeze-freeze`` (and every RPC the
test does not need) blocked. :meth:`QgaJail.close` stops the agent, thaws the db filesystem,
unmounts and detaches everything, in reverse order, even after a failure.

Installing quiesce in the jail: a wheel of this working tree (built from a copy, so the shared
tree gets no build/ directory) and its runtime dependencies' wheels (pluggy, PyMySQL, the
versions installed here), pip-installed with ``--no-index`` into a venv made by the jail's
own python3. Copying this venv would not do: it is an editable install pointing at the
working tree, which does not exist inside the jail.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import signal
import socket
import stat
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator
from importlib import metadata
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
CACHE = Path("/var/cache/quiesce")
PACKAGES = ("python3", "python3-venv", "qemu-guest-agent")
QUIESCE_IN_JAIL = "/opt/quiesce/bin/quiesce"
SOCKET = "/run/qga/qga.sock"
DB_MOUNT = "/srv/db"
HOOK_LOG = "/var/log/qga-fsfreeze-hook.log"
# Every RPC that could touch more than the test's own mount, or the machine: never needed.
BLOCKED_RPCS = ("guest-fsfreeze-freeze", "guest-shutdown", "guest-suspend-disk",
                "guest-suspend-ram", "guest-suspend-hybrid", "guest-exec", "guest-fstrim",
                "guest-set-time", "guest-set-user-password", "guest-set-vcpus",
                "guest-set-memory-blocks", "guest-file-open", "guest-ssh-add-authorized-keys",
                "guest-ssh-remove-authorized-keys")
DEV_NODES = {"null": (1, 3), "zero": (1, 5), "random": (1, 8), "urandom": (1, 9)}


def run(argv: list[str], *, timeout: float = 600, check: bool = True,
        **kwargs: Any) -> subprocess.CompletedProcess[str]:
    done = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, check=False,
                          stdin=subprocess.DEVNULL, **kwargs)
    if check and done.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)} exited {done.returncode}: "
                           f"{(done.stderr or done.stdout).strip()[-2000:]}")
    return done


def build_wheels(target: Path) -> list[Path]:
    """quiesce's wheel (from a copy of this tree) and its runtime dependencies' wheels."""
    target.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="qga-src-") as src:
        for name in ("core", "plugins"):
            shutil.copytree(ROOT / name, Path(src) / name,
                            ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
        for name in ("pyproject.toml", "README.md"):
            shutil.copy2(ROOT / name, Path(src) / name)
        run([str(ROOT / ".venv" / "bin" / "pip"), "wheel", "-q", "--no-deps", src, "-w",
             str(target)], timeout=600)
    pins = [f"{name}=={metadata.version(name)}"
            for name in ("pluggy", "PyMySQL", "psycopg", "psycopg-binary", "typing_extensions")]
    run([str(ROOT / ".venv" / "bin" / "pip"), "download", "-q", "--only-binary", ":all:",
         *pins, "-d", str(target)], timeout=600)
    return sorted(target.glob("*.whl"))


class QgaJail:
    """The chroot, its two loop filesystems, and the agent (see the module docstring)."""

    def __init__(self, progress: Callable[[str], None] = lambda _: None) -> None:
        self.progress = progress
        self.work = Path(tempfile.mkdtemp(prefix="qga-", dir="/run"))
        self.work.chmod(0o755)  # the mysql user reaches its data dir through it
        self.images = Path(tempfile.mkdtemp(prefix="qga-img-", dir="/var/tmp"))
        self.disks: list[Any] = []  # LoopDisk, innermost last
        self.mounts: list[Path] = []  # proc/dev/run/tmp, in mount order
        self.agent: subprocess.Popen[bytes] | None = None
        self.root_disk: Any = None
        self.db_disk: Any = None
        self.postgres: Any = None  # a LocalPostgres on /srv/db, when asked for

    # ------------------------------------------------------------------ paths
    @property
    def root(self) -> Path:
        return self.work / "jail"

    def host(self, inner: str) -> Path:
        return self.root / inner.lstrip("/")

    # ------------------------------------------------------------------ building
    def build(self) -> QgaJail:
        from quiesce.harness.disks import LoopDisk
        from quiesce.harness.rootfs import ensure_rootfs, unpack_rootfs

        tarball = ensure_rootfs(list(PACKAGES), CACHE / "rootfs", progress=self.progress)
        self.root_disk = LoopDisk.create(self.work, "jail", 1536, image_dir=self.images)
        self.disks.append(self.root_disk)
        (self.root / "lost+found").rmdir()
        unpack_rootfs(tarball, self.root)
        self._mount("proc", "proc", "/proc")
        self._mount("tmpfs", "tmpfs", "/dev", "mode=0755")
        for name, (major, minor) in DEV_NODES.items():
            node = self.host(f"/dev/{name}")
            os.mknod(node, 0o666 | stat.S_IFCHR, os.makedev(major, minor))
            node.chmod(0o666)
        self._mount("tmpfs", "tmpfs", "/run", "mode=0755")
        self._mount("tmpfs", "tmpfs", "/tmp", "mode=1777")
        self.host("/srv").mkdir(exist_ok=True)
        self.db_disk = LoopDisk.create(self.host("/srv"), "db", 256, image_dir=self.images)
        self.disks.append(self.db_disk)
        self.install_quiesce()
        return self

    def _mount(self, fstype: str, source: str, inner: str, options: str = "") -> None:
        target = self.host(inner)
        target.mkdir(parents=True, exist_ok=True)
        run(["mount", "-t", fstype, *(["-o", options] if options else []), source,
             str(target)])
        self.mounts.append(target)

    def install_quiesce(self) -> None:
        wheels = self.host("/tmp/wheels")
        build_wheels(wheels)
        self.chroot("python3", "-m", "venv", "/opt/quiesce")
        self.chroot("/opt/quiesce/bin/pip", "install", "-q", "--no-index", "--find-links",
                    "/tmp/wheels", "quiesce[mysql,postgresql]", timeout=600)
        shutil.rmtree(wheels)

    def chroot(self, *argv: str, timeout: float = 120, check: bool = True,
               env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
        """Run ``argv`` inside the jail (never anything that freezes)."""
        base_env = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "LC_ALL": "C.UTF-8",
                    "HOME": "/root"}
        return run(["chroot", str(self.root), *argv], timeout=timeout, check=check,
                   env={**base_env, **(env or {})})

    # ------------------------------------------------------------------ what the jail sees
    def own_devices(self) -> set[tuple[int, int]]:
        out = set()
        for disk in self.disks:
            rdev = os.stat(disk.device).st_rdev
            out.add((os.major(rdev), os.minor(rdev)))
        return out

    def block_mounts(self) -> list[tuple[tuple[int, int], str]]:
        """((major, minor), mount point) of every mount inside the jail backed by a block
        device (major != 0), as /proc/self/mountinfo shows them from inside."""
        text = self.chroot("cat", "/proc/self/mountinfo").stdout
        out = []
        for line in text.splitlines():
            fields = line.split()
            major, minor = (int(x) for x in fields[2].split(":"))
            if major != 0:
                out.append(((major, minor), fields[4]))
        return out

    def assert_only_own_devices(self) -> None:
        mounts = self.block_mounts()
        own = self.own_devices()
        foreign = [m for m in mounts if m[0] not in own]
        assert not foreign, f"the jail sees block devices the test did not create: {foreign}"
        assert {point for _, point in mounts} == {"/", DB_MOUNT}, mounts

    # ------------------------------------------------------------------ the agent
    def start_agent(self) -> None:
        """qemu-ga inside the jail, listening on a Unix socket, hook enabled (-F: the
        default hook /etc/qemu/fsfreeze-hook), every dangerous RPC blocked."""
        self.assert_only_own_devices()
        self.host("/run/qga").mkdir(mode=0o700, exist_ok=True)
        self.agent = subprocess.Popen(
            ["chroot", str(self.root), "/usr/sbin/qemu-ga", "-m", "unix-listen", "-p", SOCKET,
             "-F", "-t", "/run/qga", "-f", "/run/qga/qemu-ga.pid", "-l",
             "/var/log/qemu-ga.log", "-b", ",".join(BLOCKED_RPCS)],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            env={"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "LC_ALL": "C"}, cwd="/",
            start_new_session=True)
        give_up = time.monotonic() + 30
        while not self.host(SOCKET).exists():
            if self.agent.poll() is not None or time.monotonic() > give_up:
                log = self.host("/var/log/qemu-ga.log")
                raise RuntimeError(f"qemu-ga did not start (exit {self.agent.poll()}): "
                                   f"{log.read_text() if log.exists() else ''}")
            time.sleep(0.1)

    def command(self, execute: str, arguments: dict[str, Any] | None = None, *,
                timeout: float = 120) -> dict[str, Any]:
        """One command on the agent's socket; its JSON answer. Only the freeze-list, thaw,
        status and sync commands are ever sent."""
        allowed = ("guest-sync", "guest-fsfreeze-freeze-list", "guest-fsfreeze-thaw",
                   "guest-fsfreeze-status", "guest-ping")
        assert execute in allowed, execute
        if execute == "guest-fsfreeze-freeze-list":
            assert arguments == {"mountpoints": [DB_MOUNT]}, arguments
        message: dict[str, Any] = {"execute": execute}
        if arguments is not None:
            message["arguments"] = arguments
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as conn:
            conn.settimeout(timeout)
            conn.connect(str(self.host(SOCKET)))
            conn.sendall(json.dumps(message).encode() + b"\n")
            data = b""
            while not data.endswith(b"\n"):
                chunk = conn.recv(65536)
                if not chunk:
                    break
                data += chunk
        return json.loads(data)

    def freeze_db(self, *, timeout: float = 120) -> dict[str, Any]:
        return self.command("guest-fsfreeze-freeze-list", {"mountpoints": [DB_MOUNT]},
                            timeout=timeout)

    def thaw(self, *, timeout: float = 120) -> dict[str, Any]:
        return self.command("guest-fsfreeze-thaw", timeout=timeout)

    def hook_log(self) -> str:
        path = self.host(HOOK_LOG)
        return path.read_text(errors="replace") if path.exists() else ""

    def records(self) -> list[dict[str, Any]]:
        runs = self.host("/var/lib/quiesce/runs")
        return [json.loads(p.read_text()) for p in sorted(runs.glob("*.json"))] \
            if runs.is_dir() else []

    # ------------------------------------------------------------------ cleanup
    def stop_agent(self) -> None:
        if self.agent is None:
            return
        if self.agent.poll() is None:
            # Thaw first: a frozen agent ignores SIGTERM, and SIGKILL would leave the db
            # filesystem frozen.
            with contextlib.suppress(OSError, ValueError):
                self.thaw(timeout=30)
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.agent.pid, signal.SIGKILL)
            self.agent.wait(30)
        self.agent = None

    def kill_jail_processes(self) -> None:
        """SIGKILL every process whose root is the jail (a holder or guardian left behind)."""
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit() or int(entry.name) == os.getpid():
                continue
            with contextlib.suppress(OSError):
                if os.readlink(entry / "root") == str(self.root):
                    os.kill(int(entry.name), signal.SIGKILL)

    def close(self) -> None:
        problems: list[str] = []
        with contextlib.suppress(Exception):
            self.stop_agent()
        if self.db_disk is not None:
            # FITHAW of the db filesystem (only ours), whatever happened.
            with contextlib.suppress(OSError):
                from quiesce.freezing.freeze import thaw_path

                thaw_path(str(self.db_disk.mount_point))
        self.kill_jail_processes()
        time.sleep(0.2)
        for disk in reversed(self.disks[1:]):
            try:
                disk.teardown()
            except Exception as exc:
                problems.append(str(exc))
        for target in reversed(self.mounts):
            done = run(["umount", str(target)], check=False)
            if done.returncode != 0:
                run(["umount", "--lazy", str(target)], check=False)
        if self.disks:
            try:
                self.disks[0].teardown()
            except Exception as exc:
                problems.append(str(exc))
        shutil.rmtree(self.images, ignore_errors=True)
        with contextlib.suppress(OSError):
            self.work.rmdir()
        if problems:
            raise RuntimeError("; ".join(problems))


@contextlib.contextmanager
def jail_with_mariadb(progress: Callable[[str], None] = lambda _: None, *,
                      postgres: bool = False) -> Iterator[tuple[QgaJail, Any]]:
    """A built :class:`QgaJail` and a throwaway MariaDB (the host's binaries) whose data is on
    the jail's /srv/db, with the ``app`` schema; quiesce inside the jail reaches it over TCP.
    With ``postgres``, a throwaway PostgreSQL on /srv/db too (``jail.postgres``). Everything
    is stopped and torn down at the end, even after a failure."""
    from helpers.mysql import setup_schema
    from quiesce.harness.servers.base import ServerLayout
    from quiesce_mysql.server import LocalMySQL

    jail = QgaJail(progress)
    server = None
    try:
        jail.build()
        server = LocalMySQL(ServerLayout(data_dir=jail.db_disk.mount_point / "data",
                                         run_dir=jail.work / "mysqld"))
        server.start()
        setup_schema(server)
        if postgres:
            from quiesce_postgresql.server import LocalPostgres

            jail.postgres = LocalPostgres(ServerLayout(
                data_dir=jail.db_disk.mount_point / "pgdata", run_dir=jail.work / "pg"))
            jail.postgres.start()
        yield jail, server
    finally:
        with contextlib.suppress(Exception):
            jail.stop_agent()
        for running in (server, jail.postgres):
            if running is not None:
                with contextlib.suppress(Exception):
                    running.stop()
        jail.close()


def mariadb_toml(server: Any, *, max_hold: int = 120, postgres: Any = None) -> str:
    """A quiesce.toml for ``server`` as seen from the jail. lock_wait_seconds at its maximum,
    so that a hook's deadline is what bounds a hung database."""
    text = (f'max_hold_seconds = {max_hold}\n\n[[mysql]]\nhost = "127.0.0.1"\n'
            f'port = {server.port}\nuser = "root"\nlock_wait_seconds = 600\n')
    if postgres is not None:
        text += f'\n[[postgresql]]\nconninfo = "{postgres.conninfo}"\n'
    return text


def gave_up_after(error: str, blocker_id: int) -> float:
    """How long a failed hold waited, from its instance error: the engine's own report
    ("... in 7.3s ... Blocking: id N ...") or the holder's ("... at the deadline (14.7 s)")."""
    engine = re.search(r" in ([0-9.]+)s\b", error)
    if engine is not None and f"Blocking: id {blocker_id}" in error:
        return float(engine.group(1))
    holder = re.search(r"at the deadline \(([0-9.]+) s\)", error)
    assert holder is not None, error
    return float(holder.group(1))
