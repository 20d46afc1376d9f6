"""The MySQL/MariaDB Quiescer: one dedicated session takes, proves and releases a backup lock.

Lifecycle (driven by the core, in the holder process):

``prepare(deadline)``
    Reads the password from its trusted file, opens the holding session (autocommit, never
    reconnects) and a second, short-query "probe" session, reads ``@@version`` to tell MySQL
    from MariaDB, sets ``wait_timeout`` on the holding session so an idle hold is not cut by the
    server, checks the privileges the hold will need (binlog and replica status), chooses the
    level (``level = "auto"``: the light level only when every condition is verified, see
    :meth:`MySQLQuiescer._choose_level`) and the lock plan
    (:func:`quiesce_mysql.flavour.plan_locks`). When the plan includes FLUSH TABLES WITH READ
    LOCK it pre-flushes tables (``FLUSH LOCAL TABLES``, never written to the binlog) so the
    global lock that follows has little left to flush.
``quiesce(deadline)``
    Takes each lock in short attempts (``lock_wait_timeout`` = 1 s) so that writers queued
    behind a waiting FTWRL are stalled for at most a second at a time; between attempts it
    reads the process list to name what blocks the lock and, once ``kill_blockers_after``
    seconds have passed, sends KILL QUERY to it. After ``lock_wait_seconds`` (or the deadline)
    it gives up with :class:`LockWaitTimeout` naming the blocking statements, having released
    whatever it had taken. At the light level, once DDL is blocked (so no table can change
    engine), it counts the non-transactional tables and, if there are any, adds the commit
    block: the full level. Then it proves the lock is held from the probe session
    (:mod:`quiesce_mysql.verify`) and fails - unlocking - if it cannot.
``check_alive()``
    ``COM_PING`` on the holding session without reconnect; :class:`SessionLost` if it is gone.
``release(deadline)``
    Reads binlog coordinates, GTID positions and replica status in the holding session while
    the lock is still held, releases in reverse order in that same session, confirms from the
    probe session that no lock is left (killing the holding session if one is), and returns
    the metadata.
``abort()``
    Best-effort undo of everything, then closes the sessions: a MySQL/MariaDB lock dies with
    its session, so closing is the last line of defence. Never raises.
"""

from __future__ import annotations

import contextlib
import os
import threading
import time
from typing import Any

from quiesce.deadline import Deadline
from quiesce.engine import InstanceSettings, Quiescer
from quiesce.errors import EngineError, LockWaitTimeout, SessionLost
from quiesce.freezing.freeze_set import LEVEL_LIGHT, LevelChoice
from quiesce_mysql.config import MySQLOptions, read_password
from quiesce_mysql.flavour import (
    LockPlan,
    LockStep,
    ServerInfo,
    binlog_status_statement,
    commit_block,
    commit_dirs,
    durability_problem,
    gtid_variables,
    level_variables_query,
    light_level_support,
    nontransactional_count_query,
    parse_server,
    plan_locks,
    recovery_paths,
    replica_status_statement,
    sees_every_table,
    split_at_commit_block,
    tablespace_files_query,
)
from quiesce_mysql.processlist import (
    Statement,
    candidate_blockers,
    column_text,
    describe_blockers,
    parse_rows,
    processlist_query,
    row_to_json,
)
from quiesce_mysql.session import (
    ACCESS_DENIED,
    ER_KILL_DENIED,
    ER_LOCK_WAIT_TIMEOUT,
    ER_NO_SUCH_THREAD,
    IO_MARGIN,
    Endpoint,
    close_quietly,
    connect,
    describe_error,
    error_number,
    is_connection_lost,
    run,
    run_dicts,
    set_io_timeout,
)
from quiesce_mysql.verify import HELD, UNKNOWN, VERIFY_HINTS, LockSources, LockVerifier

ATTEMPT_SECONDS = 1  # lock_wait_timeout of one attempt (whole seconds; MySQL's minimum is 1)
RETRY_GAP = 0.25  # pause between attempts: lets the writers queued behind a waiting FTWRL run
SHORT_TIMEOUT = 5.0
WAIT_TIMEOUT_MARGIN = 600  # seconds added to max_hold_seconds for the session's wait_timeout

PRIVILEGE_HINTS = {
    "FLUSH TABLES WITH READ LOCK": "GRANT RELOAD ON *.* TO the quiesce account",
    "FLUSH LOCAL TABLES": "GRANT RELOAD ON *.* TO the quiesce account",
    "LOCK INSTANCE FOR BACKUP": "GRANT BACKUP_ADMIN ON *.* TO the quiesce account",
    "BACKUP STAGE START": "GRANT RELOAD ON *.* TO the quiesce account",
    "BACKUP STAGE BLOCK_COMMIT": "GRANT RELOAD ON *.* TO the quiesce account",
}


class MySQLQuiescer(Quiescer):
    """One MySQL or MariaDB server, quiesced through one dedicated session."""

    def __init__(self, settings: InstanceSettings) -> None:
        super().__init__(settings)
        self.options = MySQLOptions.from_mapping(settings.options, f"mysql ({settings.name})")
        self.info: ServerInfo | None = None
        self.plan: LockPlan | None = None
        self.thread_id: int | None = None
        self._endpoint: Endpoint | None = None
        self._conn: Any = None
        self._probe: Any = None
        self._lock_sources = LockSources()  # learnt by pre's verification, kept for the block
        self._commit_dirs: list[str] = []  # read with the light level's conditions
        self._io = threading.RLock()  # one statement at a time on the holding session
        self._taken: list[LockStep] = []
        self._lost: str | None = None
        self._locked_at: float | None = None
        self._log_bin = False
        self._server_id: int | None = None
        self._read_only = False
        self._nontransactional: int | None = None
        self._lock_report: dict[str, Any] = {}
        self._notes: list[str] = []
        self.level = LevelChoice(self.options.level)
        self._coverage: dict[str, Any] | None = None
        # Deferred to the caller's freeze (defer_block): the steps that stop writes, taken by
        # block(); None when nothing is deferred.
        self._early: tuple[LockStep, ...] = ()
        self._late: tuple[LockStep, ...] | None = None
        self._late_reason = ""
        self._blocked_at: float | None = None

    # -- lifecycle --------------------------------------------------------------------------

    def prepare(self, deadline: Deadline) -> None:
        password = read_password(self.options.password_file) if self.options.password_file \
            else ""
        self._endpoint = Endpoint(self.options, password)
        self._conn = connect(self._endpoint, deadline, purpose="hold")
        self.thread_id = int(self._conn.thread_id())
        row = self._run("SELECT CONNECTION_ID(), @@version, @@version_comment, @@server_id, "
                        "@@log_bin, @@read_only", deadline=deadline)[0]
        if int(row[0]) != self.thread_id:
            raise EngineError(f"{self.name}: the server reports connection id {row[0]} but the "
                              f"handshake said {self.thread_id}",
                              hint="connect to the server directly, not through a proxy or "
                                   "pooler: locks are bound to one server session")
        self.info = parse_server(column_text(row[1]), column_text(row[2]))
        self._server_id = int(row[3])
        self._log_bin = bool(int(row[4]))
        self._read_only = bool(int(row[5]))
        hold = int(self.settings.max_hold_seconds) + WAIT_TIMEOUT_MARGIN
        self._run("SET SESSION wait_timeout = %s", (hold,), deadline=deadline)
        if self.options.level == "auto" and self.options.lock == "auto":
            self._choose_level(deadline)
        else:
            self.level.decide()
        self.plan = plan_locks(self.info, self.options.lock,
                               light=self.level.chosen == LEVEL_LIGHT)
        self._check_status_privileges(deadline)
        self._probe = connect(self._endpoint, deadline, purpose="probe")
        if any(step.kind == "ftwrl" for step in self.plan.steps):
            self._preflush(deadline)

    def quiesce(self, deadline: Deadline) -> None:
        if self._conn is None or self.plan is None:
            raise EngineError(f"{self.name}: quiesce() called before prepare()")
        budget = deadline.sooner(self.options.lock_wait_seconds)
        started = time.monotonic()
        report: dict[str, Any] = {"attempts": 0, "killed_blockers": [], "verified_by": []}
        self._lock_report = report
        try:
            steps = self.plan.steps if self._late is None else self._early
            for step in steps:
                self._acquire(step, budget, deadline, report)
            if self.level.chosen == LEVEL_LIGHT:
                self._confirm_light(budget, deadline, report)
            self._locked_at = time.monotonic()
            report["wait_seconds"] = round(self._locked_at - started, 3)
            self._verify_held(deadline, report)
        except BaseException:
            self._undo_all()
            raise

    def defer_block(self) -> bool:
        """At the full level, leave the commit block (BACKUP STAGE BLOCK_COMMIT, or FLUSH
        TABLES WITH READ LOCK) for :meth:`block`; at the light level, leave for it the commit
        block a fall back to the full level would add. False when the plan cannot be cut."""
        if self.plan is None or self.info is None or self._locked_at is not None:
            return False
        if self.level.chosen == LEVEL_LIGHT:
            self._early, self._late = self.plan.steps, ()
            self._late_reason = "light level: nothing stops commits"
            return True
        cut = split_at_commit_block(self.plan)
        if cut is None:
            return False
        self._early, self._late = cut
        self._late_reason = (f"{' + '.join(s.kind for s in cut[1])} deferred to the caller's "
                             "freeze")
        # The plan says what is taken: until block() only the early steps (so the record of
        # a hold whose block never came does not claim a commit block).
        self.plan = LockPlan(self.plan.requested, cut[0], self.plan.reason)
        return True

    def block(self, deadline: Deadline) -> None:
        """Take the deferred commit block and prove it held; nothing to do when the light
        level kept (no non-transactional table was found)."""
        if self._late is None or self.plan is None or self._locked_at is None:
            raise EngineError(f"{self.name}: block() without a deferred commit block")
        if not self._late or self._blocked_at is not None:
            return
        budget = deadline.sooner(self.options.lock_wait_seconds)
        report = self._lock_report
        before = len(self._taken)
        for step in self._late:
            self._acquire(step, budget, deadline, report)
        blocked_at = time.monotonic()
        self._verify_held(deadline, report, self._taken[before:])
        # Only a proven block counts (in the record too: binlog_position_exact).
        self._blocked_at = blocked_at
        self.plan = LockPlan(self.plan.requested, self._early + self._late,
                             f"{self.plan.reason}; {self._late_reason}")

    @property
    def blocks_writes(self) -> bool:
        return any(step.blocks_writes for step in self._taken)

    @property
    def relies_on_freeze(self) -> bool:
        return self.level.chosen == LEVEL_LIGHT

    @property
    def commit_paths(self) -> tuple[str, ...]:
        """The redo and binary log directories, at the light level only: the full level's
        commit block stops commits for the whole freeze, whatever its order."""
        return tuple(self._commit_dirs) if self.relies_on_freeze else ()

    def check_alive(self) -> None:
        if self._lost:
            raise SessionLost(f"{self.name}: {self._lost}")
        if self._conn is None:
            raise SessionLost(f"{self.name}: the holding session is not open")
        with self._io:
            try:
                set_io_timeout(self._conn, SHORT_TIMEOUT)
                self._conn.ping(reconnect=False)
            except Exception as exc:
                self._mark_lost(exc)
                raise SessionLost(f"{self.name}: {self._lost}",
                                  hint="the lock ended with the session; the snapshot may "
                                       "not be application-consistent") from exc

    def release(self, deadline: Deadline) -> dict[str, Any]:
        self.check_alive()
        if self.plan is None or self.info is None or self._locked_at is None:
            raise EngineError(f"{self.name}: release() called before quiesce()")
        metadata = self._base_metadata()
        try:
            metadata.update(self._coordinates(deadline))
        except SessionLost:
            raise
        except EngineError as exc:  # not worth keeping writers blocked: record and release
            metadata["coordinates_error"] = str(exc)
        held = time.monotonic() - (self._locked_at or time.monotonic())
        for step in reversed(list(self._taken)):
            for sql in step.release:
                self._run(sql, deadline=deadline)
            self._taken.remove(step)
        if "commit_block" in metadata and self._blocked_at is not None:
            # until the unlock just done (the coordinates were read inside the block)
            metadata["commit_block"]["held_seconds"] = round(
                time.monotonic() - self._blocked_at, 3)
        metadata["held_seconds"] = round(held, 3)
        metadata["release_confirmed_by"] = self._confirm_released(deadline)
        if self._notes:
            metadata["notes"] = list(self._notes)
        return metadata

    def abort(self) -> None:
        with contextlib.suppress(Exception):
            self._undo_all()
        self.close()

    def close(self) -> None:
        conn, self._conn = self._conn, None
        probe, self._probe = self._probe, None
        close_quietly(conn)
        close_quietly(probe)

    # -- prepare helpers --------------------------------------------------------------------

    def _check_status_privileges(self, deadline: Deadline) -> None:
        """Run the status statements now, so a missing GRANT fails before anything is locked."""
        assert self.info is not None
        statements = [replica_status_statement(self.info)]
        if self._log_bin:
            statements.insert(0, binlog_status_statement(self.info))
        for sql in statements:
            try:
                self._run(sql, deadline=deadline, raw=True)
            except Exception as exc:
                if error_number(exc) in ACCESS_DENIED:
                    raise EngineError(
                        f"{self.name}: {sql} is not permitted for {self.options.user!r} "
                        f"({describe_error(exc)}); quiesce records binlog and replica "
                        "coordinates with it",
                        hint=_status_grant_hint(self.info),
                    ) from exc
                raise self._engine_error(sql, exc) from exc

    def _preflush(self, deadline: Deadline) -> None:
        """FLUSH LOCAL TABLES before FTWRL, in short attempts; never fatal (FTWRL flushes too)."""
        budget = deadline.sooner(self.options.lock_wait_seconds)
        while True:
            try:
                self._run("SET SESSION lock_wait_timeout = %s", (ATTEMPT_SECONDS,),
                          deadline=deadline)
                self._run("FLUSH LOCAL TABLES", deadline=deadline,
                          timeout=ATTEMPT_SECONDS + IO_MARGIN, raw=True)
                return
            except Exception as exc:
                if error_number(exc) != ER_LOCK_WAIT_TIMEOUT:
                    if is_connection_lost(exc):
                        self._mark_lost(exc)
                        raise EngineError(f"{self.name}: lost the session while flushing "
                                          f"({describe_error(exc)})") from exc
                    if error_number(exc) in ACCESS_DENIED:
                        raise self._engine_error("FLUSH LOCAL TABLES", exc) from exc
                    self._notes.append(f"pre-flush skipped: {describe_error(exc)}")
                    return
            if budget.remaining() < ATTEMPT_SECONDS:
                self._notes.append("pre-flush skipped: tables stayed busy")
                return
            time.sleep(RETRY_GAP)

    # -- the level --------------------------------------------------------------------------

    def _choose_level(self, deadline: Deadline) -> None:
        """Check every condition of the light level and record each with its evidence; the
        light level is chosen only when all hold (the table engines are checked later, once
        DDL is blocked: :meth:`_confirm_light`)."""
        from quiesce.freezing import freeze_set

        assert self.info is not None
        level = self.level
        unsupported = light_level_support(self.info)
        level.check("server", unsupported is None,
                    unsupported or f"{self.info.describe()}: "
                    + ("atomic DDL, BACKUP STAGE BLOCK_DDL" if self.info.is_mariadb
                       else "LOCK INSTANCE FOR BACKUP"))
        sql, params = level_variables_query()
        variables = {column_text(r[0]).lower(): column_text(r[1])
                     for r in self._run(sql, params, deadline=deadline)}
        durable = durability_problem(variables)
        level.check("durability", durable is None, durable or (
            "innodb_flush_log_at_trx_commit = 1"
            + (", sync_binlog = 1" if variables.get("log_bin", "").upper() in ("1", "ON")
               else ", binary log off")))
        grants = [column_text(r[0]) for r in self._run("SHOW GRANTS", deadline=deadline)]
        sees = sees_every_table(grants)
        level.check("table engines can be counted", sees,
                    "the account holds SELECT (or ALL) on *.*, so information_schema shows "
                    "every table" if sees else
                    f"{self.options.user!r} cannot see every table (information_schema shows "
                    "only tables an account has privileges on): GRANT SELECT ON *.* to allow "
                    "the light level")
        datadir = variables.get("datadir", "")
        self._commit_dirs = commit_dirs(variables)
        pid, how = self._server_pid(variables)
        level.check_server_here(pid, how, datadir)
        freeze = freeze_set.for_instance(self.settings.caller_freeze)
        level.check_caller_freezes(freeze)
        files: list[str] = []
        try:
            files = [column_text(r[0]) for r in self._run(
                tablespace_files_query(self.info), deadline=deadline, timeout=30)]
        except SessionLost:
            raise
        except EngineError as exc:
            level.check("files recovery needs", False,
                        f"cannot list InnoDB files outside the data directory ({exc}); GRANT "
                        "PROCESS to the account to allow the light level")
        else:
            paths = recovery_paths(variables, files)
            coverage = freeze_set.all_frozen_together(freeze, paths)
            self._coverage = coverage.to_dict()
            level.check("files recovery needs", coverage.frozen_together, coverage.reason)
        level.decide()

    def _server_pid(self, variables: dict[str, str]) -> tuple[int | None, str]:
        from quiesce.freezing import freeze_set

        sock = getattr(self._conn, "_sock", None)
        if sock is None:
            return None, "the connection has no socket"
        pid_file = variables.get("pid_file", "")
        if pid_file and not os.path.isabs(pid_file):
            pid_file = os.path.join(variables.get("datadir", ""), pid_file)
        listed = freeze_set.read_pid_file(pid_file) if pid_file else None
        return freeze_set.server_pid(sock, listed)

    def _confirm_light(self, budget: Deadline, deadline: Deadline,
                       report: dict[str, Any]) -> None:
        """With DDL blocked, count the non-transactional tables; any -> the full level."""
        assert self.info is not None and self.plan is not None
        sql, params = nontransactional_count_query()
        try:
            count = int(self._run(sql, params, deadline=deadline, timeout=30)[0][0])
        except SessionLost:
            raise
        except EngineError as exc:
            count = None
            why = f"the non-transactional tables could not be counted ({exc})"
        else:
            why = (f"{count} non-transactional table(s) (MyISAM, Aria, CSV...) found with DDL "
                   "blocked: their files need the commit block")
        self._nontransactional = count
        self.level.check("transactional tables only", count == 0,
                         "every application table is transactional (counted with DDL "
                         "blocked, so none can change engine)" if count == 0 else why)
        if count == 0:
            return
        step = commit_block(self.info, self.plan)
        self.level.fall_back(why)
        if self._late is not None:  # deferred: block() takes it at the caller's freeze
            self._late = (step,)
            self._late_reason = f"full level: {why}; {step.kind} added at the caller's freeze"
            return
        self.plan = LockPlan(self.plan.requested, (*self.plan.steps, step),
                             f"full level: {why}; {step.kind} added")
        self._acquire(step, budget, deadline, report)

    # -- locking ----------------------------------------------------------------------------

    def _acquire(self, step: LockStep, budget: Deadline, deadline: Deadline,
                 report: dict[str, Any]) -> None:
        started = time.monotonic()
        seen: list[Statement] = []
        killed: list[dict[str, Any]] = report["killed_blockers"]
        kill_after = self.options.kill_blockers_after
        while True:
            report["attempts"] += 1
            failure = self._attempt(step, deadline)
            if failure is None:
                self._taken.append(step)
                return
            waited = time.monotonic() - started
            blockers = self._blockers(min_seconds=min(waited, ATTEMPT_SECONDS) * 0.8)
            if blockers:
                seen = blockers
            if kill_after is not None and waited >= kill_after and blockers:
                killed.extend(self._kill_queries(blockers))
            if budget.remaining() < RETRY_GAP + 0.2 or deadline.remaining() < ATTEMPT_SECONDS:
                raise LockWaitTimeout(
                    f"{self.name}: could not take {step.kind} ({'; '.join(step.acquire)}) in "
                    f"{waited:.1f}s: the lock waits behind running work. Blocking: "
                    f"{describe_blockers(seen)}. Nothing is left locked; writers proceed.",
                    hint=self._timeout_hint(killed),
                )
            time.sleep(RETRY_GAP)

    def _attempt(self, step: LockStep, deadline: Deadline) -> BaseException | None:
        """One try at ``step`` bounded by ATTEMPT_SECONDS; the lock-wait error, or None."""
        self._run("SET SESSION lock_wait_timeout = %s", (ATTEMPT_SECONDS,), deadline=deadline)
        for sql in step.acquire:
            try:
                self._run(sql, deadline=deadline, timeout=ATTEMPT_SECONDS + IO_MARGIN, raw=True)
            except Exception as exc:
                if is_connection_lost(exc):
                    self._mark_lost(exc)
                    self._kill_holder()
                    raise SessionLost(f"{self.name}: lost the session during {sql} "
                                      f"({describe_error(exc)})") from exc
                self._undo(step)
                if error_number(exc) == ER_LOCK_WAIT_TIMEOUT:
                    return exc
                raise self._engine_error(sql, exc) from exc
        return None

    def _verify_held(self, deadline: Deadline, report: dict[str, Any],
                     steps: list[LockStep] | None = None) -> None:
        assert self.info is not None and self.thread_id is not None
        verifier = LockVerifier(self._probe_conn(deadline), self.info, self.thread_id,
                                timeout=min(SHORT_TIMEOUT, max(1.0, deadline.remaining())),
                                sources=self._lock_sources)
        try:
            if not verifier.thread_alive():
                raise EngineError(f"{self.name}: the holding session (id {self.thread_id}) is "
                                  "not in the server's process list after locking",
                                  hint="connect to the server directly, not through a proxy")
            for step in self._taken if steps is None else steps:
                evidence = verifier.check(step)
                if evidence.result != HELD:
                    hint = (VERIFY_HINTS[self.info.flavour] if evidence.result == UNKNOWN
                            else "another session or a proxy may have interfered; retry")
                    raise EngineError(
                        f"{self.name}: {step.kind} could not be proven held "
                        f"({evidence.method}: {evidence.detail}); refusing to report a lock "
                        "that may not exist, so it was released",
                        hint=hint,
                    )
                report["verified_by"].append(f"{step.kind}: {evidence.method}")
        except EngineError:
            raise
        except Exception as exc:
            raise EngineError(f"{self.name}: could not verify the lock "
                              f"({describe_error(exc)})") from exc

    def _undo(self, step: LockStep) -> None:
        for sql in step.undo:
            with contextlib.suppress(Exception):
                self._run(sql, timeout=SHORT_TIMEOUT, raw=True)

    def _undo_all(self) -> None:
        """Release what is held, newest first; if the session cannot, kill it."""
        failed = False
        for step in reversed(list(self._taken)):
            for sql in step.undo:
                try:
                    self._run(sql, timeout=SHORT_TIMEOUT, raw=True)
                except Exception:
                    failed = True
            self._taken.remove(step)
        if failed:
            self._kill_holder()

    # -- blockers ---------------------------------------------------------------------------

    def _blockers(self, min_seconds: float) -> list[Statement]:
        assert self.info is not None
        try:
            probe = self._probe_conn(Deadline(SHORT_TIMEOUT))
            rows = run(probe, processlist_query(self.info.is_mariadb), timeout=SHORT_TIMEOUT)
        except Exception as exc:
            self._notes.append(f"process list unreadable: {describe_error(exc)}")
            return []
        exclude = {self.thread_id or 0, _thread_id(self._probe)}
        return candidate_blockers(parse_rows(rows), exclude_ids=exclude,
                                  min_seconds=min_seconds)

    def _kill_queries(self, blockers: list[Statement]) -> list[dict[str, Any]]:
        killed = []
        for statement in blockers:
            entry = statement.as_dict()
            try:
                run(self._probe_conn(Deadline(SHORT_TIMEOUT)), "KILL QUERY %s",
                    (statement.id,), timeout=SHORT_TIMEOUT)
                entry["killed"] = True
            except Exception as exc:
                number = error_number(exc)
                if number == ER_NO_SUCH_THREAD:
                    continue  # it finished by itself
                entry["killed"] = False
                entry["error"] = describe_error(exc)
                if number == ER_KILL_DENIED:
                    entry["error"] += (" - GRANT CONNECTION_ADMIN (MySQL 8, MariaDB 10.5.2+) "
                                       "or SUPER to kill other users' statements")
            killed.append(entry)
        return killed

    def _timeout_hint(self, killed: list[dict[str, Any]]) -> str:
        if self.options.kill_blockers_after is None:
            return ("let the blocking statement finish or stop it, raise lock_wait_seconds, "
                    "or set kill_blockers_after to KILL QUERY blockers automatically")
        denied = [k for k in killed if not k.get("killed")]
        if denied:
            return f"KILL QUERY failed: {denied[0].get('error', '')}"
        return ("the blockers were killed but the lock still could not be taken in time; "
                "raise lock_wait_seconds")

    # -- release helpers --------------------------------------------------------------------

    def _base_metadata(self) -> dict[str, Any]:
        assert self.info is not None and self.plan is not None
        return {
            "flavour": self.info.flavour,
            "version": self.info.version_text,
            "version_string": self.info.version_string,
            "server_id": self._server_id,
            "read_only": self._read_only,
            "thread_id": self.thread_id,
            "lock": {
                "requested": self.plan.requested,
                "taken": self.plan.kinds,
                "reason": self.plan.reason,
                "statements": [sql for step in self.plan.steps for sql in step.acquire],
                **self._lock_report,
            },
            # Without the commit block (LOCK INSTANCE FOR BACKUP or BLOCK_DDL alone) DML keeps
            # committing during the hold: the binlog position (read at release) is where the
            # hold ended, later than the snapshot's; the restored server's own InnoDB recovery
            # knows the exact one.
            "binlog_position_exact": self.plan.blocks_writes,
            "binlog_position_note": (
                "read while commits were blocked: the snapshot's position" if
                self.plan.blocks_writes else
                "read at release while commits went on: at or after the snapshot's; the "
                "restored server's crash recovery reports the exact one"),
            "nontransactional_tables": self._nontransactional,
            **self._deferral_metadata(),
            "level": {**self.level.to_dict(),
                      **({"files": self._coverage} if self._coverage else {})},
        }

    def _deferral_metadata(self) -> dict[str, Any]:
        """Whether the commit block waited for the caller's freeze, and for how long it held."""
        if self._late is None:
            return {}
        return {"commit_block": {
            "deferred_to_freeze": True,
            "steps": [step.kind for step in self._late],
            "taken": bool(self._late) and self._blocked_at is not None,
            "held_seconds": None,  # release() sets it once unlocked
            "reason": self._late_reason,
        }}

    def _coordinates(self, deadline: Deadline) -> dict[str, Any]:
        assert self.info is not None
        out: dict[str, Any] = {}
        if self._log_bin:
            sql = binlog_status_statement(self.info)
            rows = self._dicts(sql, deadline)
            if rows:
                row = rows[0]
                out["binlog"] = {
                    "statement": sql,
                    "file": column_text(row.get("File")),
                    "position": int(row.get("Position") or 0),
                }
                gtid_set = row.get("Executed_Gtid_Set")
                if gtid_set:
                    out["binlog"]["executed_gtid_set"] = column_text(gtid_set)
            else:
                out["binlog"] = {"statement": sql, "enabled": True, "file": None}
        else:
            out["binlog"] = {"enabled": False}
        variables = gtid_variables(self.info)
        if variables:
            select = ", ".join(f"@@global.{name}" for name in variables)
            row_values = self._run(f"SELECT {select}", deadline=deadline)[0]
            out["gtid"] = {name: column_text(value) for name, value in zip(variables, row_values,
                                                                     strict=True)}
        replica_sql = replica_status_statement(self.info)
        replicas = self._dicts(replica_sql, deadline)
        out["role"] = "replica" if replicas else "primary"
        out["replica"] = ({"statement": replica_sql, "channels": [row_to_json(r)
                                                                  for r in replicas]}
                          if replicas else None)
        return out

    def _confirm_released(self, deadline: Deadline) -> str:
        """How the release was confirmed from the probe session; kills the holder if needed."""
        assert self.info is not None and self.plan is not None and self.thread_id is not None
        try:
            verifier = LockVerifier(self._probe_conn(deadline), self.info, self.thread_id,
                                    timeout=SHORT_TIMEOUT, sources=self._lock_sources)
            results = [verifier.check(step) for step in self.plan.steps]
            still = [r for r in results if r.result == HELD]
            if not still:
                if all(r.result != UNKNOWN for r in results):
                    return "; ".join(sorted({r.method for r in results}))
                return "UNLOCK succeeded in the holding session (no lock view available)"
            self._notes.append("a lock still looked held after UNLOCK ("
                               f"{still[0].method}: {still[0].detail}); the holding session "
                               "was killed to end it")
            self._kill_holder()
            close_quietly(self._conn, graceful=False)
            self._conn = None
            gone = self._wait_thread_gone(verifier, Deadline(SHORT_TIMEOUT))
            return "holding session killed" if gone else "holding session kill not confirmed"
        except Exception as exc:
            self._notes.append(f"release confirmation failed: {describe_error(exc)}")
            return "UNLOCK succeeded in the holding session (confirmation failed)"

    @staticmethod
    def _wait_thread_gone(verifier: LockVerifier, deadline: Deadline) -> bool:
        while not deadline.expired():
            if not verifier.thread_alive():
                return True
            time.sleep(0.05)
        return False

    # -- sessions ---------------------------------------------------------------------------

    def _run(self, sql: str, params: tuple[Any, ...] | None = None, *,
             deadline: Deadline | None = None, timeout: float = SHORT_TIMEOUT,
             raw: bool = False) -> list[tuple[Any, ...]]:
        """A statement on the holding session, bounded by ``timeout`` and the deadline.

        ``raw``: let driver errors through (the caller interprets them). Otherwise a lost
        session becomes SessionLost and other errors EngineError.
        """
        if self._conn is None:
            raise SessionLost(f"{self.name}: the holding session is closed")
        bound = timeout if deadline is None else max(0.5, min(timeout, deadline.remaining()
                                                             + IO_MARGIN))
        with self._io:
            try:
                return run(self._conn, sql, params, timeout=bound)
            except Exception as exc:
                if raw and error_number(exc) is not None:
                    raise
                if is_connection_lost(exc):
                    self._mark_lost(exc)
                    verb = sql.split(maxsplit=1)[0]
                    raise SessionLost(f"{self.name}: the holding session was lost during "
                                      f"{verb} ({describe_error(exc)})") from exc
                if raw:
                    raise
                raise self._engine_error(sql, exc) from exc

    def _dicts(self, sql: str, deadline: Deadline) -> list[dict[str, Any]]:
        if self._conn is None:
            raise SessionLost(f"{self.name}: the holding session is closed")
        with self._io:
            try:
                return run_dicts(self._conn, sql, timeout=max(0.5, min(
                    SHORT_TIMEOUT, deadline.remaining() + IO_MARGIN)))
            except Exception as exc:
                if is_connection_lost(exc):
                    self._mark_lost(exc)
                    raise SessionLost(f"{self.name}: the holding session was lost during "
                                      f"{sql} ({describe_error(exc)})") from exc
                raise self._engine_error(sql, exc) from exc

    def _probe_conn(self, deadline: Deadline) -> Any:
        """The second session (not the holding one: reconnecting it is harmless)."""
        if self._probe is not None and getattr(self._probe, "_sock", None) is not None:
            try:  # the server may have closed it while idle (wait_timeout) during the hold
                set_io_timeout(self._probe, SHORT_TIMEOUT)
                self._probe.ping(reconnect=False)
                return self._probe
            except Exception:  # noqa: S110 - replaced by a fresh probe session below
                pass
        if self._endpoint is None:
            raise EngineError(f"{self.name}: not prepared")
        close_quietly(self._probe, graceful=False)
        self._probe = connect(self._endpoint, deadline.sooner(SHORT_TIMEOUT)
                              if deadline.remaining() > 1 else Deadline(SHORT_TIMEOUT),
                              purpose="probe")
        self._lock_sources = LockSources()  # learnt anew: it may reach another server
        return self._probe

    def _kill_holder(self) -> None:
        """End the holding session from the probe session (its locks die with it)."""
        if self.thread_id is None or self._endpoint is None:
            return
        with contextlib.suppress(Exception):
            run(self._probe_conn(Deadline(SHORT_TIMEOUT)), "KILL CONNECTION %s",
                (self.thread_id,), timeout=SHORT_TIMEOUT)

    def _mark_lost(self, exc: BaseException) -> None:
        if self._lost is None:
            self._lost = f"the holding session (id {self.thread_id}) was lost: " \
                         f"{describe_error(exc)}"
        self._taken.clear()
        conn, self._conn = self._conn, None
        close_quietly(conn, graceful=False)

    def _engine_error(self, sql: str, exc: BaseException) -> EngineError:
        number = error_number(exc)
        if number in ACCESS_DENIED:
            hint = PRIVILEGE_HINTS.get(sql, "see the GRANTs in docs/engines.md")
            return EngineError(f"{self.name}: {sql} is not permitted for "
                               f"{self.options.user!r} ({describe_error(exc)})", hint=hint)
        return EngineError(f"{self.name}: {sql} failed ({describe_error(exc)})")


def _status_grant_hint(info: ServerInfo) -> str:
    if info.is_mariadb:
        if info.at_least(10, 5, 9):
            return ("GRANT BINLOG MONITOR, SLAVE MONITOR ON *.* TO the quiesce account")
        if info.at_least(10, 5, 2):
            return "GRANT BINLOG MONITOR, REPLICATION SLAVE ADMIN ON *.* TO the quiesce account"
        return "GRANT REPLICATION CLIENT ON *.* TO the quiesce account"
    return "GRANT REPLICATION CLIENT ON *.* TO the quiesce account"


def _thread_id(conn: Any) -> int:
    try:
        return int(conn.thread_id()) if conn is not None else 0
    except Exception:
        return 0
