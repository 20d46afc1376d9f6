"""The drill's PostgreSQL side: server, workload, forced checkpoint, restore checks.

Restores and labels: with ``loop`` disks both filesystems are frozen together, so the
snapshot is one instant of every disk and crash recovery from the WAL it holds is correct; the
backup_label recorded by ``quiesce post`` is NOT installed there, because a label makes
recovery insist on replaying WAL up to the end-of-backup record that ``pg_backup_stop`` writes
after the snapshot - WAL the snapshot cannot contain. With ``dir`` disks the copies are not
simultaneous: the data directory is copied while backup mode is held, the WAL directory after
``post`` (as pg_basebackup does), and the recorded backup_label is installed with
``quiesce restore-label`` so recovery starts from the backup's checkpoint.

Every restore follows docs/restore.md through the same commands a DBA runs: the copy's
``pg_wal`` is pointed at the restored WAL, ``quiesce restore-label`` (no ``--run-id``: it must
find the run the copy was taken in) when a label is due, then ``quiesce restore-check``; the
fixes it asks for that a restore on another host needs (stale postmaster.pid, pg_wal link,
ownership) are made, and ``restore-check`` must then pass before the server starts.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

from quiesce.errors import DrillError, EngineUnavailable
from quiesce.harness.drill.targets.base import (
    ACCOUNTS,
    DATABASE,
    INITIAL_BALANCE,
    Target,
    sql_transfer,
)
from quiesce.harness.drill.verify import Check, RestoredState
from quiesce.harness.drill.workload import Transfer
from quiesce.harness.servers.base import Server, ServerLayout

if TYPE_CHECKING:
    import psycopg

# Small WAL so the WAL disk stays small; checkpoints still happen often enough to matter.
SETTINGS = {"max_wal_size": "64MB", "min_wal_size": "32MB", "checkpoint_timeout": "30s"}
STATEMENT_TIMEOUT_MS = 30000
# Lines a healthy restore writes too: connection attempts while the server starts up.
_BENIGN = ("the database system is starting up", "the database system is not yet accepting",
           "quiesce-drill")


def _conninfo(server: Server, dbname: str) -> str:
    from psycopg.conninfo import make_conninfo

    c = server.connection
    return make_conninfo(host=c.host, port=c.port, user=c.user, dbname=dbname,
                         password=c.password or None)


class PgSession:
    """One workload connection: a transfer and its ledger row in one transaction."""

    def __init__(self, server: Server) -> None:
        import psycopg

        self._psycopg = psycopg
        self.conn = psycopg.connect(_conninfo(server, DATABASE), connect_timeout=10,
                                    options=f"-c statement_timeout={STATEMENT_TIMEOUT_MS}",
                                    application_name="quiesce-drill-workload")

    def transfer(self, t: Transfer) -> None:
        sql_transfer(self.conn, self._psycopg.Error, t)

    def close(self) -> None:
        self.conn.close()


class PostgresTarget(Target):
    engine = "postgresql"
    section = "postgresql"
    docker_profile = "quiesce_postgresql.image:profile"
    copy_log_after_post = True
    #: The drill's --level: "auto" leaves mode out (an explicit "backup" keeps backup mode).
    level = "full"
    data_subdir = "pgdata"
    log_subdir = "pg_wal"

    def check_available(self) -> None:
        if self.backend.name == "docker":
            return
        from quiesce_postgresql.server import INSTALL_HINT, find_bindir

        try:
            find_bindir()
        except EngineUnavailable as exc:
            raise EngineUnavailable(f"{exc}", hint=exc.hint or INSTALL_HINT) from exc

    def _local(self, layout: ServerLayout) -> Any:
        from quiesce_postgresql.server import LocalPostgres

        return LocalPostgres(layout, settings=SETTINGS)

    def new_server(self, layout: ServerLayout) -> Server:
        if self.backend.name == "docker":
            return self.docker_server(layout, fresh=True)
        server = self._local(layout)
        server.start()
        return server

    def open_restored(self, layout: ServerLayout, original: Server) -> Server:
        if self.backend.name == "docker":
            return self.docker_server(layout, fresh=False, original=original)
        from quiesce_postgresql.server import LocalPostgres

        before = self.restore_check(layout.data_dir)
        server = LocalPostgres(layout, settings=SETTINGS)
        fixable = {"postmaster.pid", "pg_wal", "ownership", "permissions"}
        other = [c for c in before["checks"] if c["status"] == "problem"
                 and c["name"] not in fixable]
        if other:
            raise DrillError("quiesce restore-check found what the runbook cannot fix: "
                             + "; ".join(f"{c['name']}: {c['text']}" for c in other))
        server.adopt()  # the runbook's fixes: pg_wal link, stale postmaster.pid, owner, mode
        after = self.restore_check(layout.data_dir)
        if not after["ok"]:
            raise DrillError("quiesce restore-check still finds problems after following its "
                             "steps: " + "; ".join(
                                 f"{c['name']}: {c['text']}" for c in after["checks"]
                                 if c["status"] == "problem"))
        fixed = [c["name"] for c in before["checks"] if c["status"] == "problem"]
        wal = next((c["text"] for c in after["checks"] if c["name"] == "wal"), "")
        self.notes.append("restore-check: " + (f"fixed {', '.join(fixed)}; " if fixed else "")
                          + f"then clean ({wal})")
        server.start()
        return server

    def restore_check(self, data_dir: Path) -> dict[str, Any]:
        """``quiesce restore-check --json`` on the restored copy (the real code path)."""
        argv = [sys.executable, "-m", "quiesce", "restore-check", "--json", str(data_dir)]
        done = subprocess.run(argv, capture_output=True, text=True, timeout=900, check=False,
                              stdin=subprocess.DEVNULL)
        if done.returncode not in (0, 1):
            raise DrillError(f"quiesce restore-check failed (exit {done.returncode}): "
                             f"{(done.stderr or done.stdout).strip()[-1500:]}")
        result: dict[str, Any] = json.loads(done.stdout)
        return result

    def toml_section(self, server: Server, config_dir: Path) -> str:
        c = server.connection
        host = c.unix_socket or c.host
        text = ("[[postgresql]]\n"
                'name = "drill"\n'
                f'conninfo = "host={host} port={c.port} user={c.user} dbname=postgres"\n')
        if self.level == "full":
            text += 'mode = "backup"\n'
        if c.password:  # Docker images use password authentication: a libpq passfile
            passfile = config_dir / "pgpass"
            fd = os.open(passfile, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
            with open(fd, "w", encoding="utf-8") as fh:
                fh.write(f"*:*:*:{c.user}:{c.password}\n")
            text += f'passfile = "{passfile}"\n'
        return text

    def _connect(self, server: Server, dbname: str = DATABASE) -> psycopg.Connection:
        import psycopg

        return psycopg.connect(_conninfo(server, dbname), connect_timeout=10, autocommit=True,
                               options=f"-c statement_timeout={10 * STATEMENT_TIMEOUT_MS}")

    def setup_schema(self, server: Server) -> None:
        with self._connect(server, "postgres") as conn:
            conn.execute(f"CREATE DATABASE {DATABASE}")
        with self._connect(server) as conn:
            conn.execute("CREATE TABLE accounts (id int PRIMARY KEY, balance bigint NOT NULL)")
            conn.execute("CREATE TABLE ledger (id bigint PRIMARY KEY, src int NOT NULL, "
                         "dst int NOT NULL, amount int NOT NULL, "
                         "at timestamptz NOT NULL DEFAULT clock_timestamp())")
            conn.execute("CREATE INDEX ledger_src ON ledger (src)")
            conn.execute("INSERT INTO accounts SELECT g, %s FROM generate_series(0, %s) g",
                         (INITIAL_BALANCE, ACCOUNTS - 1))

    def session(self, server: Server) -> PgSession:
        return PgSession(server)

    def checkpoint(self, server: Server) -> str:
        with self._connect(server, "postgres") as conn:
            conn.execute("CHECKPOINT")
            row = conn.execute("SELECT checkpoint_lsn::text FROM pg_control_checkpoint()"
                               ).fetchone()
        return f"CHECKPOINT (checkpoint LSN now {row[0] if row else '?'})"

    def read_state(self, server: Server) -> RestoredState:
        with self._connect(server) as conn:
            balances = {int(i): int(b) for i, b in
                        conn.execute("SELECT id, balance FROM accounts").fetchall()}
            ledger = {int(i): (int(s), int(d), int(a)) for i, s, d, a in
                      conn.execute("SELECT id, src, dst, amount FROM ledger").fetchall()}
        return RestoredState(balances=balances, ledger=ledger)

    def integrity_checks(self, server: Server) -> list[Check]:
        """amcheck: verify_heapam on every table and bt_index_check on every btree index."""
        import psycopg

        problems: list[str] = []
        relations = 0
        try:
            with self._connect(server) as conn:
                conn.execute("CREATE EXTENSION IF NOT EXISTS amcheck")
                heaps = conn.execute(
                    "SELECT c.oid, c.oid::regclass::text FROM pg_class c "
                    "WHERE c.relkind IN ('r', 'm', 't') AND c.relpersistence <> 't'"
                ).fetchall()
                for oid, name in heaps:
                    relations += 1
                    rows = conn.execute(
                        "SELECT blkno, offnum, msg FROM verify_heapam(%s)", (oid,)).fetchall()
                    problems += [f"{name} block {b} item {o}: {m}" for b, o, m in rows]
                indexes = conn.execute(
                    "SELECT c.oid, c.oid::regclass::text FROM pg_index i "
                    "JOIN pg_class c ON c.oid = i.indexrelid "
                    "JOIN pg_am am ON am.oid = c.relam "
                    "WHERE am.amname = 'btree' AND c.relpersistence <> 't' AND i.indisvalid"
                ).fetchall()
                for oid, name in indexes:
                    relations += 1
                    try:
                        conn.execute("SELECT bt_index_check(%s, true)", (oid,))
                    except psycopg.Error as exc:
                        problems.append(f"{name}: {str(exc).strip().splitlines()[0]}")
        except psycopg.Error as exc:
            return [Check("amcheck", False, f"amcheck could not run: {exc}".strip())]
        return [Check("amcheck", not problems,
                      f"verify_heapam and bt_index_check(heapallindexed) clean on {relations} "
                      f"relations of database {DATABASE}" if not problems else
                      f"{len(problems)} problem(s): " + "; ".join(problems[:3]))]

    log_clean_text = "no ERROR, FATAL or PANIC while recovering and verifying"

    def bad_log_lines(self, text: str) -> list[str]:
        """PANIC/FATAL/ERROR lines, less the ones a healthy restore also writes."""
        return [line.strip() for line in text.splitlines()
                if any(f" {lvl}:  " in line for lvl in ("PANIC", "FATAL", "ERROR"))
                and not any(benign in line for benign in _BENIGN)]

    def install_label(self, state_dir: Path, data_dir: Path) -> str | None:
        """``quiesce restore-label --state-dir`` on the restored copy (the real code path),
        after pointing its pg_wal at the restored WAL disk (the runbook's first step: the link
        still leads to the original server's WAL). No --run-id: the drill's state dir holds
        every cycle's run, and restore-label must find the one this copy belongs to."""
        if self.backend.name != "docker":
            wal_dir = data_dir.parent.parent / "log" / self.log_subdir
            link = data_dir / "pg_wal"
            if not wal_dir.is_dir() or not link.is_symlink():
                raise DrillError(f"cannot point {link} at the restored WAL {wal_dir}")
            link.unlink()
            link.symlink_to(wal_dir)
        argv = [sys.executable, "-m", "quiesce", "restore-label", "--state-dir", str(state_dir),
                str(data_dir)]
        done = subprocess.run(argv, capture_output=True, text=True, timeout=120, check=False,
                              stdin=subprocess.DEVNULL)
        if done.returncode != 0:
            raise DrillError(f"quiesce restore-label failed (exit {done.returncode}): "
                             f"{(done.stderr or done.stdout).strip()[-1500:]}")
        return done.stdout.strip() or "backup_label installed"
