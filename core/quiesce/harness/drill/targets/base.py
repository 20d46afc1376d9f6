"""What the drill needs from each engine: a server, a workload session, and a way to verify.

A :class:`Target` knows one engine from the drill's side: how to start a throwaway server on
the drill's disks and on restored copies of them, the quiesce.toml section that points
``quiesce pre`` at it, the workload's schema and transaction, the forced checkpoint of the
negative control, and how to read back and check a restored server. Server processes come
from the providers in ``quiesce.harness.servers``; nothing here owns a process of its own.
"""

from __future__ import annotations

import abc
import contextlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from quiesce.harness.drill.verify import Check, RestoredState
from quiesce.harness.drill.workload import OutcomeUnknown, Transfer, WorkloadSession
from quiesce.harness.servers.base import Server, ServerLayout

ACCOUNTS = 20
INITIAL_BALANCE = 1000
DATABASE = "drill"


def sql_transfer(conn: Any, error: type[BaseException], t: Transfer) -> None:
    """One transfer as one DB-API transaction: both balances and the ledger row, or nothing.

    Accounts are updated in id order (one lock order: no deadlocks between workers). A failed
    COMMIT raises OutcomeUnknown: the write may or may not be durable, so the workload does
    not count it as acknowledged, nor as absent.
    """
    first, second = sorted((t.src, t.dst))
    delta = {t.src: -t.amount, t.dst: t.amount}
    try:
        with conn.cursor() as cur:
            for account in (first, second):
                cur.execute("UPDATE accounts SET balance = balance + %s WHERE id = %s",
                            (delta[account], account))
            cur.execute("INSERT INTO ledger (id, src, dst, amount) VALUES (%s, %s, %s, %s)",
                        (t.id, t.src, t.dst, t.amount))
    except error:
        with contextlib.suppress(error):
            conn.rollback()
        raise
    try:
        conn.commit()
    except error as exc:
        raise OutcomeUnknown(str(exc)) from exc


@dataclass(frozen=True)
class Backend:
    """Where servers run: ``local`` binaries, or ``docker`` with an image."""

    name: str  # "local" | "docker"
    image: str | None = None
    #: why this backend was chosen (``auto``: why Docker was or was not used)
    reason: str = ""


class Target(abc.ABC):
    engine: str = ""  # as given on the command line
    section: str = ""  # quiesce.toml section / plugin name
    #: Restoring a non-simultaneous (dir) snapshot needs the WAL copied after ``post``.
    copy_log_after_post: bool = False
    #: ``"package.module:callable"`` returning the engine's
    #: :class:`quiesce.harness.servers.docker.DockerProfile` when called with the target name;
    #: empty: the target cannot run on the Docker backend.
    docker_profile: str = ""
    #: The replica set a fresh Docker server is started as (MongoDB: transactions need one).
    docker_replset: str | None = None

    def docker_server(self, layout: ServerLayout, *, fresh: bool,
                      original: Server | None = None) -> Server:
        """A started container of this engine on ``layout`` (the Docker backend's server).

        A restored copy (``fresh`` False) keeps ``original``'s superuser password: it is stored
        in the copied data directory, which the new container does not initialise again."""
        from quiesce.harness.servers.docker import DockerServer

        plan = getattr(original, "plan", None)
        server = DockerServer(self.engine, layout, image=self.backend.image,
                              password=getattr(plan, "password", None),
                              replset=self.docker_replset if fresh else None)
        server.start()
        return server

    def __init__(self, backend: Backend, name: str | None = None) -> None:
        """``name``: the drill target name it was registered and chosen under."""
        self.backend = backend
        if name:
            self.engine = name
        self.notes: list[str] = []

    #: Sub-directories of the data and log disks the server uses (a fresh filesystem's root
    #: holds lost+found, which initdb and mysqld refuse).
    data_subdir: str = "data"
    log_subdir: str = "log"

    def layout(self, data_root: Path, log_root: Path, run_dir: Path) -> ServerLayout:
        """Where the server keeps its files on the drill's two disks."""
        if self.backend.name == "docker":  # the provider uses sub-directories of the mounts
            return ServerLayout(data_dir=data_root, log_dir=log_root, run_dir=run_dir)
        return ServerLayout(data_dir=data_root / self.data_subdir,
                            log_dir=log_root / self.log_subdir, run_dir=run_dir)

    @abc.abstractmethod
    def check_available(self) -> None:
        """Raise EngineUnavailable (one line, naming what to install) if no server can start."""

    @abc.abstractmethod
    def new_server(self, layout: ServerLayout) -> Server:
        """A server initialised on ``layout`` and started."""

    @abc.abstractmethod
    def open_restored(self, layout: ServerLayout, original: Server) -> Server:
        """A server started on restored copies of ``original``'s directories (recovery runs)."""

    @abc.abstractmethod
    def toml_section(self, server: Server, config_dir: Path) -> str:
        """The quiesce.toml text for this instance; may write secret files into config_dir."""

    @abc.abstractmethod
    def setup_schema(self, server: Server) -> None: ...

    @abc.abstractmethod
    def session(self, server: Server) -> WorkloadSession: ...

    @abc.abstractmethod
    def checkpoint(self, server: Server) -> str:
        """Force a checkpoint/flush now; returns a one-line description of what was done."""

    @abc.abstractmethod
    def read_state(self, server: Server) -> RestoredState: ...

    @abc.abstractmethod
    def integrity_checks(self, server: Server) -> list[Check]:
        """The engine's own integrity check (amcheck, CHECK TABLE, validate)."""

    #: (what a clean log means, how a bad one is described) for the server_log_clean check.
    log_clean_text: str = "no error while recovering and verifying"

    def log_path(self, server: Server) -> Path | None:
        """The restored server's log file, if it has one."""
        path = getattr(server, "log_file", None)
        return Path(path) if path else None

    def bad_log_lines(self, text: str) -> list[str]:
        """The lines of the restored server's log that mean it did not come back clean."""
        return []

    def log_checks(self, server: Server) -> list[Check]:
        """Errors the restored server logged while recovering and being verified."""
        path = self.log_path(server)
        if path is None:
            return []
        try:
            text = path.read_bytes().decode(errors="replace")
        except OSError as exc:
            return [Check("server_log_clean", False, f"cannot read {path}: {exc}")]
        bad = self.bad_log_lines(text)
        return [Check("server_log_clean", not bad, self.log_clean_text if not bad else
                      f"{len(bad)} error line(s), first: {bad[0][:300]}")]

    def install_label(self, state_dir: Path, data_dir: Path) -> str | None:
        """Write the recorded backup_label into a restored data dir (PostgreSQL only)."""
        return None
