"""The PostgreSQL Quiescer: one dedicated session from ``prepare`` to ``release``.

Lifecycle (driven by the core, in the holder process):

``prepare``
    Connects ONE session (psycopg, autocommit, no pool, never reconnected), named
    ``application_name = quiesce``, with ``statement_timeout``, ``idle_session_timeout`` (14+)
    and ``transaction_timeout`` (17+) set to 0 so nothing the DBA configured for ordinary
    sessions can end the hold. Detects the version, standby or primary, wal_level, archive_mode
    and the role's privileges, refuses what cannot work (PostgreSQL < 12, wal_level=minimal in
    backup mode, missing EXECUTE grants) with the fix in the message, then runs CHECKPOINT so
    the hold that follows is short. In backup mode a role without the right to CHECKPOINT
    (superuser or pg_checkpoint in 15+) is noted and tolerated - pg_backup_start does its own
    checkpoint; in checkpoint mode it is an error.
``quiesce``
    backup mode: ``pg_backup_start(label, fast)`` (15+) or ``pg_start_backup(label, fast,
    false)`` (12-14), then VERIFY. PostgreSQL exposes no catalog view of non-exclusive backups,
    so "verified" means: the same backend (pid unchanged) asked to start a second backup gets
    SQLSTATE 55000 "a backup is already in progress in this session" - the server's own word
    that this session is in backup mode. The probe runs in a PL/pgSQL block that catches that
    refusal, so nothing is written to the server log.
    checkpoint mode: checks the session is alive; the flush already happened in prepare.
    light level (``level = "auto"`` with every condition verified, see
    :meth:`PostgresQuiescer._choose_level`): neither backup mode nor a checkpoint - each
    checkpoint makes the writes that follow carry full-page images the freeze must flush.
    ``quiesce`` records ``pg_current_wal_lsn()``; the snapshot, taken while the caller freezes
    every filesystem holding the data directory, pg_wal and the tablespaces at once, restores
    by crash recovery (WAL replay from the last checkpoint), like after a power cut.
    Backup mode does NOT block writes: consistency comes from restoring the snapshot with the
    recorded backup_label and the WAL from start_lsn to stop_lsn.
``check_alive``
    ``SELECT pg_backend_pid()`` on the holding session: any error, or another pid, means the
    session (and with it the backup) is gone -> SessionLost.
``release``
    ``pg_backup_stop(false)`` / ``pg_stop_backup(false, false)`` in the holding session,
    then (if configured, or "auto" with archiving on) waits for the last WAL segment the backup
    needs to be archived, polling pg_stat_archiver within the deadline. The wait is done by
    polling instead of by pg_backup_stop(wait_for_archive => true) so that a slow archiver can
    never cost the backup_label: a cancelled pg_backup_stop loses it.
``abort``
    Closes the session. The server aborts a backup whose session ends; nothing else to undo.

Every statement that can wait is bounded: connect by ``connect_timeout``, statements by a
per-statement ``statement_timeout`` derived from the deadline (reset to 0 afterwards), and the
TCP socket by keepalives and ``tcp_user_timeout``. A server that does not answer at all
(stopped, hung, black-holed) is handled client-side: a timer shuts the socket down a short
grace after the statement's own timeout (``check_alive``: after ``alive_timeout``), the call
fails at once and the session is reported lost; the server aborts the backup when it notices.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import os
import socket
import threading
import time
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

from quiesce.deadline import Deadline
from quiesce.engine import InstanceSettings, Quiescer
from quiesce.errors import EngineError, SessionLost
from quiesce.freezing.freeze_set import LEVEL_LIGHT, LevelChoice
from quiesce_postgresql import wal
from quiesce_postgresql.config import DEFAULT_ARCHIVE_WAIT_SECONDS

if TYPE_CHECKING:
    import psycopg

MIN_VERSION = 120000
ALREADY_IN_BACKUP = "55000"  # object_not_in_prerequisite_state
# Raised by the verify block when a second backup start was accepted (not a server code).
SECOND_START_ACCEPTED = "QZ001"
NO_PLPGSQL = "42704"  # undefined_object: language "plpgsql" does not exist
# Keep the socket honest while idle for minutes: a server that vanished is noticed by the
# kernel instead of a call hanging forever (TCP only; Unix sockets fail fast by themselves).
SOCKET_OPTIONS = {
    "keepalives": 1,
    "keepalives_idle": 10,
    "keepalives_interval": 5,
    "keepalives_count": 3,
    "tcp_user_timeout": 30_000,
}
VERIFY_SECONDS = 10.0
# Past a statement's own server-side timeout, how long the client waits for any answer before
# cutting the socket (a stopped or unreachable server never answers).
# (3 s stays inside the core's 5 s grace for a plugin step.) Statements without a timeout of
# their own (session setup, detection) get UNTIMED_LIMIT.
CLIENT_GRACE = 3.0
UNTIMED_LIMIT = 10.0
ALIVE_SECONDS = 15.0


def _now() -> str:
    return dt.datetime.now(dt.UTC).isoformat(timespec="milliseconds")


class PostgresQuiescer(Quiescer):
    """One ``[[postgresql]]`` instance. Methods are called one at a time by the holder."""

    def __init__(self, settings: InstanceSettings) -> None:
        super().__init__(settings)
        self.options = dict(settings.options)
        self.mode: str = self.options.get("mode", "backup")
        self._conn: psycopg.Connection | None = None
        self._pid: int | None = None
        self._in_backup = False
        self.info: dict[str, Any] = {}
        self.notes: list[str] = []
        self._label: str | None = None
        self._start_lsn: str | None = None
        self._started_at: str | None = None
        self._checkpoint: dict[str, Any] | None = None
        self._severed: float | None = None
        self.alive_timeout = ALIVE_SECONDS
        self.level = LevelChoice(str(self.options.get("level", "full")))
        self._coverage: dict[str, Any] | None = None
        self._light: dict[str, Any] = {}

    @property
    def light(self) -> bool:
        return self.level.chosen == LEVEL_LIGHT

    @property
    def relies_on_freeze(self) -> bool:
        return self.light

    @property
    def commit_paths(self) -> tuple[str, ...]:
        """pg_wal: every commit writes and flushes its WAL there, and nothing else."""
        wal = self._pg_wal()
        return (wal,) if wal else ()

    def _pg_wal(self) -> str | None:
        """data_directory/pg_wal (a symlink where WAL lives elsewhere), None when the role
        may not read data_directory."""
        data_dir = self.info.get("data_directory")
        return os.path.join(str(data_dir), "pg_wal") if data_dir else None

    # ----------------------------------------------------------------- helpers
    def _where(self) -> str:
        return f"postgresql instance {self.name!r}"

    def _conninfo(self) -> str:
        return str(self.options.get("conninfo", ""))

    def _passfile(self) -> str | None:
        passfile = self.options.get("passfile")
        if passfile:
            return str(passfile)
        if self._conninfo():
            from psycopg.conninfo import conninfo_to_dict

            value = conninfo_to_dict(self._conninfo()).get("passfile")
            return str(value) if value else None
        return None

    def _check_passfile(self) -> None:
        """A passfile named in conninfo gets the same trust check the core gives ``passfile``."""
        passfile = self._passfile()
        if not passfile or passfile == self.options.get("passfile"):
            return  # absent, or the ``passfile`` key the core already checked
        # As root only root-owned files are trusted; as a user, root's or the user's own.
        from quiesce.security import open_trusted

        open_trusted(passfile, "secret").close()

    def _session(self) -> psycopg.Connection:
        if self._conn is None:
            raise EngineError(f"{self._where()}: no session (prepare was not called)")
        return self._conn

    @contextlib.contextmanager
    def _severed_after(self, seconds: float) -> Iterator[None]:
        """Cut the session's socket if the block runs longer than ``seconds``.

        Server-side statement_timeout cannot help when the server does not answer at all
        (stopped, swapping, a network black hole): the client would wait forever and the holder
        with it. Shutting the socket down makes the blocked call fail at once; the session is
        then lost, and the server aborts its backup as soon as it notices the closed socket.
        """
        conn = self._conn
        if conn is None:
            yield
            return
        fired = threading.Event()

        def sever() -> None:
            fired.set()
            with contextlib.suppress(OSError, ValueError):
                fd = os.dup(conn.pgconn.socket)
                with socket.socket(fileno=fd) as sock:
                    sock.shutdown(socket.SHUT_RDWR)

        timer = threading.Timer(seconds, sever)
        timer.daemon = True
        timer.start()
        try:
            yield
        finally:
            timer.cancel()
            if fired.is_set():
                self._severed = seconds

    def _query(self, sql: str, params: tuple[Any, ...] = (), *,
               timeout: float | None = None, what: str = "") -> list[tuple[Any, ...]]:
        """Run one statement on the holding session; ``timeout`` seconds bound it server-side,
        and the socket is cut CLIENT_GRACE seconds later if the server does not answer."""
        import psycopg

        conn = self._session()
        limit = timeout + CLIENT_GRACE if timeout is not None else UNTIMED_LIMIT
        try:
            with self._severed_after(limit), conn.cursor() as cur:
                if timeout is not None:
                    ms = max(1, int(timeout * 1000))
                    cur.execute("SELECT set_config('statement_timeout', %s, false)", (f"{ms}ms",))
                try:
                    cur.execute(sql, params)  # type: ignore[arg-type]
                    rows = cur.fetchall() if cur.description else []
                finally:
                    if timeout is not None and not conn.broken:
                        cur.execute("SELECT set_config('statement_timeout', '0', false)")
        except psycopg.errors.QueryCanceled as exc:
            raise EngineError(
                f"{self._where()}: {what or sql} did not finish within {timeout or 0:.1f}s",
                hint="raise the deadline (timeoutInSeconds / max_hold_seconds) or look at what "
                     "slows the server down (pg_stat_activity)",
            ) from exc
        except psycopg.Error as exc:
            if conn.broken or conn.closed:
                raise self._lost(what or sql, exc) from exc
            error = EngineError(f"{self._where()}: {what or sql} failed: {str(exc).strip()}")
            error.sqlstate = exc.sqlstate  # type: ignore[attr-defined]
            raise error from exc
        return rows

    def _lost(self, during: str, exc: BaseException) -> SessionLost:
        if self._severed is not None:
            return SessionLost(
                f"{self._where()}: the server did not answer {during} within "
                f"{self._severed:g}s; the session was cut (any backup it held is aborted)",
                hint="check that the server is not stopped, overloaded or unreachable")
        return SessionLost(
            f"{self._where()}: the session ended during {during}: {str(exc).strip()}",
            hint="the server restarted or the backend was terminated; check its log")

    # ----------------------------------------------------------------- lifecycle
    def prepare(self, deadline: Deadline) -> None:
        import psycopg

        self._check_passfile()
        timeout = int(min(self.options.get("connect_timeout", 10), max(deadline.remaining(), 2)))
        kwargs: dict[str, Any] = dict(SOCKET_OPTIONS)
        kwargs["application_name"] = "quiesce"
        kwargs["connect_timeout"] = max(2, timeout)
        if self.options.get("passfile"):
            kwargs["passfile"] = self.options["passfile"]
        try:
            self._conn = psycopg.connect(self._conninfo(), autocommit=True, **kwargs)
        except psycopg.Error as exc:
            raise EngineError(
                f"{self._where()}: cannot connect: {str(exc).strip()}",
                hint="check conninfo (host, port, user, dbname), that the server is running and "
                     "that pg_hba.conf lets this user in",
            ) from exc
        try:
            self._setup_session()
            self._detect()
            if self.level.setting == "auto":
                self._choose_level()
            else:
                self.level.decide()
            if self.light:
                self._checkpoint = {"status": "skipped",
                                    "reason": "light level: no checkpoint just before the "
                                              "freeze (it would add full-page writes to flush)"}
            else:
                self._check_preconditions()
                self._flush(deadline)
        except BaseException:
            self.close()
            raise

    def _setup_session(self) -> None:
        conn = self._session()
        version = conn.info.server_version
        settings = {"statement_timeout": "0", "idle_in_transaction_session_timeout": "0",
                    "lock_timeout": "0"}
        if version >= 140000:
            settings["idle_session_timeout"] = "0"
        if version >= 170000:
            settings["transaction_timeout"] = "0"
        for name, value in settings.items():
            self._query("SELECT set_config(%s, %s, false)", (name, value), what=f"SET {name}")

    def _detect(self) -> None:
        version = self._session().info.server_version
        if version < MIN_VERSION:
            raise EngineError(
                f"{self._where()}: PostgreSQL {version // 10000} is not supported",
                hint="quiesce needs PostgreSQL 12 or newer",
            )
        start, stop = self._backup_functions(version)
        (row,) = self._query(
            """
            SELECT current_setting('server_version'), pg_is_in_recovery(), pg_backend_pid(),
                   current_setting('wal_level'), current_setting('archive_mode'),
                   current_setting('wal_segment_size'), current_user,
                   (SELECT rolsuper FROM pg_roles WHERE rolname = current_user),
                   has_function_privilege(%s, 'EXECUTE'), has_function_privilege(%s, 'EXECUTE'),
                   CASE WHEN %s >= 150000
                        THEN pg_has_role(current_user, 'pg_checkpoint', 'MEMBER')
                        ELSE false END,
                   has_function_privilege('pg_control_checkpoint()', 'EXECUTE'),
                   CASE WHEN has_function_privilege('pg_control_system()', 'EXECUTE')
                        THEN (SELECT system_identifier::text FROM pg_control_system()) END,
                   CASE WHEN (SELECT rolsuper FROM pg_roles WHERE rolname = current_user)
                          OR pg_has_role(current_user, 'pg_read_all_settings', 'MEMBER')
                        THEN current_setting('data_directory') END
            """,
            (start, stop, version),
            what="detecting the server",
        )
        (server_version, standby, pid, wal_level, archive_mode, segment_size, user, superuser,
         can_start, can_stop, checkpoint_role, can_read_control, system_identifier,
         data_directory) = row
        self._pid = int(pid)
        self.info = {
            "server_version": server_version,
            "server_version_num": version,
            "standby": bool(standby),
            "wal_level": wal_level,
            "archive_mode": archive_mode,
            "wal_segment_size": _size_bytes(segment_size),
            "user": user,
            "superuser": bool(superuser),
            "can_backup": bool(superuser or (can_start and can_stop)),
            "can_checkpoint": bool(superuser or checkpoint_role),
            "can_read_control": bool(superuser or can_read_control),
            "backend_pid": self._pid,
            # Which cluster this is (a string: 64-bit, beyond what many JSON readers keep
            # exact); restore-label refuses a data directory of another cluster.
            "system_identifier": system_identifier,
            # None when the role may not read it (superuser or pg_read_all_settings)
            "data_directory": data_directory,
        }

    def _choose_level(self) -> None:
        """Check every condition of the light level and record each with its evidence."""
        from quiesce.freezing import freeze_set

        level = self.level
        explicit = self.options.get("mode")
        level.check("mode", explicit != "backup",
                    'mode = "backup" is set explicitly: its backup_label makes the snapshot a '
                    "base backup for point-in-time recovery, which a crash-consistent copy is "
                    "not" if explicit == "backup" else
                    f'mode = "{explicit}"' if explicit else "mode is left out")
        archive = self.info["archive_mode"]
        level.check("archive_mode", archive == "off",
                    "archive_mode is off" if archive == "off" else
                    f"archive_mode is {archive}: WAL is archived for point-in-time recovery, "
                    "which needs the backup_label of backup mode")
        level.check("primary", not self.info["standby"],
                    "the server is a primary" if not self.info["standby"] else
                    "the server is a standby: the light level is not verified for standbys")
        data_dir = self.info.get("data_directory")
        ((fsync, sync_commit),) = self._query(
            "SELECT current_setting('fsync'), current_setting('synchronous_commit')",
            what="reading the settings of the light level")
        durable = fsync == "on" and sync_commit != "off"
        level.check("durability", durable,
                    f"fsync = {fsync}, synchronous_commit = {sync_commit}" + (
                        "" if durable else ": acknowledged commits may be missing from the "
                        "WAL a snapshot holds"))
        tablespaces = self._query(
            "SELECT spcname::text, pg_tablespace_location(oid) FROM pg_tablespace "
            "WHERE spcname NOT IN ('pg_default', 'pg_global')", what="listing tablespaces")
        if not data_dir:
            level.check("server on this machine", False,
                        f"role {self.info['user']!r} may not read data_directory: GRANT "
                        "pg_read_all_settings to allow the light level")
        else:
            pid, how = self._server_pid(str(data_dir))
            level.check_server_here(pid, how, str(data_dir))
        freeze = freeze_set.for_instance(self.settings.caller_freeze)
        level.check_caller_freezes(freeze)
        if data_dir:
            paths = [("data directory", str(data_dir)),
                     ("pg_wal", str(self._pg_wal()))]
            paths += [(f"tablespace {name}", str(location)) for name, location in tablespaces]
            coverage = freeze_set.all_frozen_together(freeze, paths)
            self._coverage = coverage.to_dict()
            level.check("files recovery needs", coverage.frozen_together, coverage.reason)
        level.decide()

    def _server_pid(self, data_dir: str) -> tuple[int | None, str]:
        from quiesce.freezing import freeze_set

        conn = self._session()
        try:
            sock = freeze_set.connection_socket(conn.pgconn.socket)
        except OSError as exc:
            return None, f"cannot inspect the connection: {exc.strerror}"
        with sock:
            listed = freeze_set.read_pid_file(os.path.join(data_dir, "postmaster.pid"))
            return freeze_set.server_pid(sock, listed)

    @staticmethod
    def _backup_functions(version: int) -> tuple[str, str]:
        if version >= 150000:
            return "pg_backup_start(text, boolean)", "pg_backup_stop(boolean)"
        return "pg_start_backup(text, boolean, boolean)", "pg_stop_backup(boolean, boolean)"

    def _check_preconditions(self) -> None:
        if self.mode != "backup":
            return
        if self.info["wal_level"] == "minimal":
            raise EngineError(
                f"{self._where()}: wal_level is minimal, which cannot make an online backup",
                hint="set wal_level = replica in postgresql.conf and restart, or use "
                     "mode = \"checkpoint\"",
            )
        if not self.info["can_backup"]:
            start, stop = self._backup_functions(self.info["server_version_num"])
            raise EngineError(
                f"{self._where()}: role {self.info['user']!r} may not run {start} and {stop}",
                hint=f"as a superuser: GRANT EXECUTE ON FUNCTION {start}, {stop} TO "
                     f"{self.info['user']};",
            )

    def _flush(self, deadline: Deadline) -> None:
        if not self.info["can_checkpoint"]:
            grant = ("GRANT pg_checkpoint TO " + str(self.info["user"])
                     if self.info["server_version_num"] >= 150000 else "a superuser role")
            if self.mode == "checkpoint":
                raise EngineError(
                    f"{self._where()}: role {self.info['user']!r} may not run CHECKPOINT, "
                    "which is all checkpoint mode does",
                    hint=f"needs {grant}",
                )
            self.notes.append(f"CHECKPOINT not permitted for role {self.info['user']!r} "
                              f"(needs {grant}); pg_backup_start's own checkpoint flushes")
            self._checkpoint = {"status": "not-permitted"}
            return
        started = time.monotonic()
        self._query("CHECKPOINT", timeout=max(deadline.remaining(), 0.001), what="CHECKPOINT")
        self._checkpoint = {"status": "done",
                            "seconds": round(time.monotonic() - started, 3)}

    def quiesce(self, deadline: Deadline) -> None:
        if self.light:
            ((lsn, at, timeline),) = self._query(
                "SELECT pg_current_wal_lsn()::text, now()::text, "
                "(SELECT timeline_id FROM pg_control_checkpoint()) "
                if self.info.get("can_read_control") else
                "SELECT pg_current_wal_lsn()::text, now()::text, NULL::int",
                timeout=min(5.0, max(deadline.remaining(), 0.5)),
                what="reading the current WAL LSN")
            self._light = {"lsn": lsn, "lsn_read_at": at, "timeline": timeline}
            self.check_alive()
            return
        if self.mode == "checkpoint":
            self.check_alive()
            return
        version = self.info["server_version_num"]
        stamp = dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
        self._label = f"{self.options.get('label', 'quiesce')} {self.name} {stamp}"
        fast = bool(self.options.get("fast_checkpoint", True))
        start_sql = ("SELECT pg_backup_start(%s, %s)::text" if version >= 150000
                     else "SELECT pg_start_backup(%s, %s, false)::text")
        try:
            ((lsn,),) = self._query(start_sql, (self._label, fast),
                                    timeout=max(deadline.remaining(), 0.001),
                                    what="pg_backup_start")
        except EngineError as exc:
            if not fast and not isinstance(exc, SessionLost):
                exc.hint = ("fast_checkpoint = false waits for a spread checkpoint; set it to "
                            "true or raise the deadline")
            raise
        self._in_backup = True
        self._start_lsn = lsn
        self._started_at = _now()
        self._verify_backup_held(deadline)

    def _verify_backup_held(self, deadline: Deadline) -> None:
        """Ask the server: a second start in this session must be refused (see module doc).

        The refusal (SQLSTATE 55000) is caught inside a PL/pgSQL block, so it never reaches
        the server log as an ERROR (log-based alerting would fire on every ``pre``). The block
        ends without error only when that refusal happened; an accepted second start raises
        its own error. Without PL/pgSQL in the database the bare probe runs (one ERROR line).
        """
        version = self.info["server_version_num"]
        start = ("pg_backup_start('quiesce verify', false)" if version >= 150000
                 else "pg_start_backup('quiesce verify', false, false)")
        block = (
            "DO $quiesce$ BEGIN "
            f"PERFORM {start}; "
            "RAISE EXCEPTION 'quiesce: a second backup start was accepted' "
            f"USING ERRCODE = '{SECOND_START_ACCEPTED}'; "
            "EXCEPTION WHEN object_not_in_prerequisite_state THEN NULL; "
            "END $quiesce$")
        timeout = min(VERIFY_SECONDS, max(deadline.remaining(), 0.5))
        try:
            self._query(block, timeout=timeout, what="verifying backup mode")
        except SessionLost:
            raise
        except EngineError as exc:
            sqlstate = getattr(exc, "sqlstate", None)
            if sqlstate == NO_PLPGSQL:
                self._verify_with_bare_probe(start, timeout)
                return
            if sqlstate != SECOND_START_ACCEPTED:
                raise
            raise EngineError(
                f"{self._where()}: backup mode was not held after pg_backup_start returned "
                "(a second start was accepted)",
                hint="connect to PostgreSQL directly, not through a pooler in transaction "
                     "mode") from exc
        self._check_same_backend()

    def _verify_with_bare_probe(self, start: str, timeout: float) -> None:
        """The probe without PL/pgSQL: its refusal is the proof, and is logged as an ERROR."""
        try:
            self._query(f"SELECT {start}", timeout=timeout, what="verifying backup mode")
        except SessionLost:
            raise
        except EngineError as exc:
            if getattr(exc, "sqlstate", None) != ALREADY_IN_BACKUP:
                raise
            self.notes.append("PL/pgSQL is not installed in the database quiesce connects "
                              "to: the backup-mode check logged one ERROR in the server log")
            self._check_same_backend()
            return
        raise EngineError(
            f"{self._where()}: backup mode was not held after pg_backup_start returned "
            "(a second start was accepted)",
            hint="connect to PostgreSQL directly, not through a pooler in transaction mode",
        )

    def _check_same_backend(self) -> None:
        ((pid,),) = self._query("SELECT pg_backend_pid()", what="checking the backend")
        if pid != self._pid:
            raise SessionLost(
                f"{self._where()}: the backend changed from pid {self._pid} to {pid}",
                hint="connect to PostgreSQL directly, not through a connection pooler",
            )

    @property
    def blocks_writes(self) -> bool:
        """Never: backup mode (and a checkpoint) let every commit through."""
        return False

    def check_alive(self) -> None:
        import psycopg

        conn = self._conn
        if conn is None or conn.closed or conn.broken:
            raise SessionLost(f"{self._where()}: the holding session is closed")
        try:
            with self._severed_after(self.alive_timeout):
                ((pid,),) = conn.execute("SELECT pg_backend_pid()").fetchall()
        except psycopg.Error as exc:
            lost = self._lost("the liveness check", exc)
            if self._severed is None:
                lost.hint = (f"the server restarted or backend pid {self._pid} was terminated; "
                             "any backup it held was aborted")
            raise lost from exc
        if pid != self._pid:
            raise SessionLost(f"{self._where()}: the backend changed from pid {self._pid} to "
                              f"{pid}; the backup held by {self._pid} is gone")

    def release(self, deadline: Deadline) -> dict[str, Any]:
        try:
            self.check_alive()
        except SessionLost as exc:
            if self.mode == "backup":
                exc.args = (f"{exc.args[0]}; the server aborted backup mode, so there is no "
                            "backup_label for this snapshot",)
            raise
        if self.light:
            return self._light_metadata()
        if self.mode == "checkpoint":
            return self._checkpoint_metadata()
        version = self.info["server_version_num"]
        stop_sql = ("SELECT lsn::text, labelfile, spcmapfile FROM pg_backup_stop(false)"
                    if version >= 150000 else
                    "SELECT lsn::text, labelfile, spcmapfile FROM pg_stop_backup(false, false)")
        # pg_backup_stop writes one WAL record and switches segment: it is quick. Give it at
        # least a few seconds even if the deadline is nearly spent - cancelling it loses the
        # backup_label of a snapshot that has already been taken.
        rows = self._query(stop_sql, timeout=max(deadline.remaining(), 5.0),
                           what="pg_backup_stop")
        self._in_backup = False
        stop_lsn, labelfile, spcmapfile = rows[0]
        stopped_at = _now()
        tablespace_map = spcmapfile or None
        timeline = wal.label_timeline(labelfile)
        meta: dict[str, Any] = {
            "mode": "backup",
            "label": self._label,
            "start_lsn": self._start_lsn,
            "stop_lsn": stop_lsn,
            "timeline": timeline,
            "backup_label": labelfile,
            "backup_label_sha256": wal.sha256_text(labelfile),
            "tablespace_map": tablespace_map,
            "tablespace_map_sha256": wal.sha256_text(tablespace_map),
            "started_at": self._started_at,
            "stopped_at": stopped_at,
        }
        if timeline is not None:
            meta["stop_wal_file"] = wal.segment_name(
                timeline, wal.parse_lsn(stop_lsn), self.info["wal_segment_size"],
                containing_previous_byte=True)
        meta["wal_archived"] = self._wait_for_archive(meta.get("stop_wal_file"), deadline)
        meta.update(self._common_metadata())
        return meta

    def _archive_wait_wanted(self) -> bool:
        setting = self.options.get("wait_for_archive", "auto")
        if isinstance(setting, bool):
            return setting
        archive_mode = self.info["archive_mode"]
        if self.info["standby"]:
            return archive_mode == "always"
        return archive_mode in ("on", "always")

    def _wait_for_archive(self, segment: str | None, deadline: Deadline) -> bool | None:
        """True once ``segment`` is archived; None when not waited for; False on timeout."""
        if not self._archive_wait_wanted():
            return None
        if segment is None:
            self.notes.append("cannot tell which WAL file to wait for: no timeline in the label")
            return False
        wanted = float(self.options.get("archive_wait_seconds", DEFAULT_ARCHIVE_WAIT_SECONDS))
        limit = deadline.sooner(wanted)
        began = time.monotonic()
        while True:
            ((last,),) = self._query("SELECT last_archived_wal FROM pg_stat_archiver",
                                     timeout=5.0, what="reading pg_stat_archiver")
            if last and wal.is_segment_name(last[:24]) and last[:24] >= segment:
                return True
            if limit.expired():
                waited = time.monotonic() - began
                cut = (f" (archive_wait_seconds is {wanted:g}, but the release deadline came "
                       "first)" if waited + 0.5 < wanted else "")
                self.notes.append(
                    f"WAL file {segment} was not archived within {waited:.1f}s{cut} (last "
                    f"archived: {last or 'none'}); a restore needs it from pg_wal or the "
                    "archive")
                return False
            time.sleep(min(0.2, limit.remaining()))

    def _checkpoint_metadata(self) -> dict[str, Any]:
        meta: dict[str, Any] = {"mode": "checkpoint"}
        if self.info.get("can_read_control"):
            ((timeline, checkpoint_lsn, redo_lsn, checkpoint_time),) = self._query(
                "SELECT timeline_id, checkpoint_lsn::text, redo_lsn::text, "
                "checkpoint_time::text FROM pg_control_checkpoint()",
                timeout=5.0, what="reading pg_control_checkpoint()")
            meta.update(timeline=timeline, checkpoint_lsn=checkpoint_lsn, redo_lsn=redo_lsn,
                        checkpoint_time=checkpoint_time)
        else:
            meta["timeline"] = None
            self.notes.append("pg_control_checkpoint() not permitted: no checkpoint LSN "
                              "recorded (GRANT EXECUTE ON FUNCTION pg_control_checkpoint() ...)")
        meta.update(self._common_metadata())
        return meta

    def _light_metadata(self) -> dict[str, Any]:
        meta: dict[str, Any] = {
            "mode": "crash-recovery",
            "lsn": self._light.get("lsn"),
            "lsn_read_at": self._light.get("lsn_read_at"),
            "timeline": self._light.get("timeline"),
            "restore": "crash recovery: the restored server replays WAL from its last "
                       "checkpoint, as after a power cut; no backup_label (this snapshot is "
                       "no base backup for point-in-time recovery). Every commit "
                       "acknowledged before lsn_read_at is in it.",
        }
        if self.info.get("can_read_control"):
            ((checkpoint_lsn, redo_lsn),) = self._query(
                "SELECT checkpoint_lsn::text, redo_lsn::text FROM pg_control_checkpoint()",
                timeout=5.0, what="reading pg_control_checkpoint()")
            meta.update(checkpoint_lsn=checkpoint_lsn, redo_lsn=redo_lsn)
        meta.update(self._common_metadata())
        return meta

    def _common_metadata(self) -> dict[str, Any]:
        return {
            "level": {**self.level.to_dict(),
                      **({"files": self._coverage} if self._coverage else {})},
            "server_version": self.info.get("server_version"),
            "server_version_num": self.info.get("server_version_num"),
            "system_identifier": self.info.get("system_identifier"),
            "standby": self.info.get("standby"),
            "backend_pid": self._pid,
            "checkpoint": self._checkpoint,
            "notes": list(self.notes),
        }

    def abort(self) -> None:
        # Closing the session is the abort: the server ends a backup whose session is gone
        # (and closing never blocks on a hung server, unlike a pg_backup_stop would).
        self.close()

    def close(self) -> None:
        conn, self._conn = self._conn, None
        self._in_backup = False
        if conn is not None:
            with contextlib.suppress(Exception):  # close must never raise
                conn.close()

    @property
    def in_backup(self) -> bool:
        return self._in_backup


def _size_bytes(setting: str) -> int:
    """``current_setting('wal_segment_size')`` is e.g. ``16MB``; return bytes."""
    units = {"kB": 1024, "MB": 1024**2, "GB": 1024**3, "B": 1}
    text = setting.strip()
    for suffix, factor in units.items():
        if text.endswith(suffix) and text[: -len(suffix)].strip().isdigit():
            return int(text[: -len(suffix)]) * factor
    return int(text) if text.isdigit() else wal.DEFAULT_SEGMENT_SIZE
