"""One backup cycle of the Azure contract: validate -> pre -> sync -> freeze -> snapshot -> thaw
-> post, with a LIFO unwind.

* Validation first, and nothing runs when it fails: the config, both scripts (opened through
  :func:`quiesce.security.open_trusted`; the descriptors checked here are the ones executed
  later), the snapshot command and the mounts to freeze.
* Without root: the config and scripts may be owned by root or by the user running quiesce
  (:func:`quiesce.security.trusted_uids`), and the cycle runs with ``fsFreezeEnabled`` false;
  with it true validation refuses the run (FIFREEZE needs CAP_SYS_ADMIN), see
  :func:`freeze_privilege_problems`.
* The post-script runs whenever the pre-script was started, whatever happened after it.
* The thaw is in a ``finally``; a watchdog process (in :mod:`quiesce.freezing.freeze`) thaws
  anyway if
  this process dies. Between freeze and thaw nothing is logged, opened or written: log lines
  are buffered in memory and written after the thaw; the status file is written at the end.
* SIGTERM/SIGINT/SIGHUP do not break the window: inside it they are deferred until after the
  thaw, outside it they stop the cycle (the post-script still runs) and are reported. The
  first one to arrive while the post-script runs lets it finish; a second one stops it.

Consistency of the snapshot taken:
``application`` the pre-script succeeded (and the freeze, when enabled, succeeded too);
``filesystem``  the pre-script failed or timed out, continueBackupOnFailure is true and the
                filesystems were frozen;
``crash``       nothing made it consistent (no freeze and a failed pre-script, a failed freeze,
                or a watchdog that thawed before the snapshot ended);
``none``        no snapshot.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import os
import signal
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, TextIO

from quiesce.callers import azure_config, report, scripts, snapshot
from quiesce.callers.report import RunError, RunStatus
from quiesce.errors import (
    AzureCode,
    ConfigError,
    FreezeError,
    HoldIncomplete,
    PermissionProblem,
    Problem,
    QuiesceError,
    ScriptError,
    ValidationError,
)
from quiesce.hold.records import new_run_id
from quiesce.security import TrustedFile, TrustedFileNotFound, open_trusted
from quiesce.timefmt import iso

DEFAULT_FREEZE_TIMEOUT = 60.0
#: How long the runner waits for the holder's early release before leaving it to the post-script.
EARLY_RELEASE_TIMEOUT = 30.0
#: The snapshot must end this long before the watchdog would thaw (kill grace included).
SNAPSHOT_MARGIN = 1.0
#: When the pre-script's hold stops no writes yet, the freeze starts this long after the
#: pre-script exited: a FIFREEZE issued right after a process exit waits for the RCU grace
#: periods its teardown queued (measured on two ext4 disks: +19 ms of freeze window at once,
#: +7 ms after 50 ms, nothing after 100 ms; docs/performance.md). Nothing blocks the
#: application meanwhile (a deferred MariaDB blocks only DDL; backup mode blocks nothing).
FREEZE_SETTLE_SECONDS = 0.1
#: How long sending 'release' between the snapshot and the thaw may take (a few bytes into an
#: idle Unix socket: never more than an instant unless something is badly wrong).
RELEASE_SEND_TIMEOUT = 0.5
#: How long the runner waits for the holder to answer 'status' before the freeze.
HOLD_STATUS_TIMEOUT = 5.0
#: How long the runner waits for the holder to take the write block at the freeze: more than
#: the holder gives itself (BLOCK_SECONDS = 10 s, plus 5 s of grace and the release of a hold
#: it cannot complete), so the runner hears the real reason of a failure.
HOLD_BLOCK_TIMEOUT = 40.0


class Interrupted(QuiesceError):
    """The runner was asked to stop (SIGTERM/SIGINT)."""

    def __init__(self, signum: int, phase: str = "") -> None:
        super().__init__(f"interrupted by {signal.Signals(signum).name}")
        self.signum = signum
        self.phase = phase


class RunLog:
    """Log lines to a stream, or to memory while filesystems are frozen."""

    def __init__(self, stream: TextIO | None = None, *, run_id: str = "") -> None:
        self.stream = stream if stream is not None else sys.stderr
        self.run_id = run_id
        self.held: list[str] | None = None
        self.lines: list[str] = []  # everything, for callers that want it

    def __call__(self, message: str) -> None:
        stamp = dt.datetime.now(dt.UTC).strftime("%H:%M:%S.%f")[:-3]
        line = f"{stamp} quiesce[{self.run_id}] {message}"
        self.lines.append(line)
        if self.held is not None:
            self.held.append(line)
            return
        self._write([line])

    def _write(self, lines: list[str]) -> None:
        with contextlib.suppress(OSError, ValueError):
            self.stream.write("".join(f"{line}\n" for line in lines))
            self.stream.flush()

    def hold(self) -> None:
        if self.held is None:
            self.held = []

    def release(self) -> None:
        held, self.held = self.held, None
        if held:
            self._write(held)


@dataclass
class RunOptions:
    config_path: str = azure_config.DEFAULT_PATH
    snapshot_command: str | None = None
    freeze_mounts: Sequence[str] | None = None
    freeze_timeout: float = DEFAULT_FREEZE_TIMEOUT
    status_file: str | None = None
    #: Consent to freeze every freezable local filesystem (``/`` included) when no
    #: ``freeze_mounts`` are given. ``quiesce run`` sets it from --freeze-all, or in a real
    #: Azure environment (:func:`real_azure_environment`); without it such a run is refused.
    freeze_all: bool = True


@dataclass
class Prepared:
    """Everything validation produced; the script descriptors stay open until the end."""

    config: azure_config.AzureConfig
    scripts: dict[str, TrustedFile]
    mounts: list[Any]  # quiesce.freezing.freeze.Mount
    provider: snapshot.SnapshotProvider
    notes: list[str] = field(default_factory=list)
    #: The runtime dir of the hold the post-script's 'quiesce post' would release, when the
    #: post-script is a quiesce wrapper: the runner then releases at the thaw (early_release).
    hold_runtime_dir: str | None = None
    #: The same dir when the pre-script is the matching 'quiesce pre' wrapper: its holder may
    #: then leave the write block for the freeze (DEFER_BLOCK_ENV, completed by 'block').
    defer_runtime_dir: str | None = None

    def close(self) -> None:
        for trusted in self.scripts.values():
            trusted.close()


def status_file_problems(path: str) -> list[Problem]:
    """Whether the status file can be written where it is asked for, checked before anything
    runs: automation waiting for that file must not find nothing after a run that otherwise
    went fine (it is written once, at the end)."""
    where = "--status-file"
    target = os.path.abspath(path)
    directory = os.path.dirname(target)
    if os.path.isdir(target):
        return [Problem(where, f"{path} is a directory", "name a file, e.g. "
                        f"{os.path.join(target, 'quiesce-status.json')}")]
    if not os.path.isdir(directory):
        return [Problem(where, f"the directory {directory} does not exist",
                        f"create it (mkdir -p {directory}) or choose another --status-file")]
    if not os.access(directory, os.W_OK | os.X_OK):
        return [Problem(where, f"the directory {directory} is not writable by uid "
                        f"{os.geteuid()}", "choose a directory quiesce can write to")]
    return []


CAP_SYS_ADMIN = 21  # linux/capability.h


def has_cap_sys_admin(status_path: str = "/proc/self/status") -> bool:
    """Whether this process's effective capabilities include CAP_SYS_ADMIN (FIFREEZE needs
    it); read from ``CapEff`` in /proc/self/status, False when that cannot be read."""
    try:
        with open(status_path, encoding="ascii", errors="replace") as handle:
            for line in handle:
                if line.startswith("CapEff:"):
                    return bool(int(line.split()[1], 16) >> CAP_SYS_ADMIN & 1)
    except (OSError, ValueError, IndexError):
        return False
    return False


def freeze_privilege_problems(command: str, fs_freeze: bool) -> list[Problem]:
    """A non-root run with fsFreezeEnabled true cannot freeze (FIFREEZE needs CAP_SYS_ADMIN):
    say so before anything runs, instead of failing the freeze in the middle of the cycle.

    As root nothing changes (a root without CAP_SYS_ADMIN, e.g. in an unprivileged container,
    still learns it from the freeze step, as before). Everything else works without root: the
    config and scripts need only be owned by root or by the user running quiesce.
    """
    uid = os.geteuid()
    if uid == 0 or not fs_freeze or has_cap_sys_admin():
        return []
    from quiesce.security import owner_name

    return [Problem("fsFreezeEnabled", f"is true, but quiesce {command} runs as "
                    f"{owner_name(uid)}, not root: freezing a filesystem (FIFREEZE) needs "
                    "root (CAP_SYS_ADMIN)",
                    f"run it as root (e.g. sudo quiesce {command} ...), or set "
                    '"fsFreezeEnabled": false in the config to run the cycle without freezing '
                    "(the pre/post-scripts still bracket the snapshot)")]


def _owner_word() -> str:
    """Who must own the files quiesce trusts, in words: "root", or "you or root"."""
    uid = os.geteuid()
    if uid == 0:
        return "root"
    from quiesce.security import user_name

    return f"{user_name(uid)} or root"


def _runner_word() -> str:
    """Who the scripts run as, in words: "root", or the user's name."""
    uid = os.geteuid()
    if uid == 0:
        return "root"
    from quiesce.security import user_name

    return user_name(uid)


WAAGENT_DIR = "/var/lib/waagent"
VMSNAPSHOT_HANDLER = "Microsoft.Azure.RecoveryServices.VMSnapshotLinux-"
FREEZE_CONSENT_HINT = ("a rehearsal: pass --freeze-mount PATH (a filesystem you may stall); a "
                       "real backup of this machine: pass --freeze-all; --dry-run shows the "
                       "plan without running anything")


def real_azure_environment(waagent_dir: str = WAAGENT_DIR) -> bool:
    """True only on an Azure VM where Azure VM Backup runs: the VMSnapshotLinux extension's
    handler is installed (``/var/lib/waagent/Microsoft.Azure.RecoveryServices.
    VMSnapshotLinux-<version>/HandlerEnvironment.json``). There, freezing every filesystem
    is what the Azure extension itself does, so ``quiesce run`` needs no --freeze-all."""
    try:
        names = os.listdir(waagent_dir)
    except OSError:
        return False
    return any(name.startswith(VMSNAPSHOT_HANDLER) and os.path.isfile(
        os.path.join(waagent_dir, name, "HandlerEnvironment.json")) for name in names)


def freeze_consent_message(mounts: Sequence[Any]) -> str:
    listed = ", ".join(m.mount_point for m in mounts)
    root = " (/ included: every process that writes stalls until the thaw)" if any(
        m.mount_point == "/" for m in mounts) else ""
    return (f"without --freeze-mount this run would freeze every freezable local "
            f"filesystem{root}: {listed}; outside a real Azure VM Backup environment that "
            "needs --freeze-all")


def validate(options: RunOptions) -> tuple[Prepared | None, list[RunError]]:
    """Check everything a run needs, collecting every problem; run nothing."""
    errors: list[RunError] = []

    def add(problems: Sequence[Problem], default: str = report.VALIDATION_FAILED) -> None:
        errors.extend(RunError.from_problem(p, "validate", default) for p in problems)

    if options.status_file:
        add(status_file_problems(options.status_file))
    provider = snapshot.make_provider(options.snapshot_command)
    add(provider.problems(), report.SNAPSHOT_FAILED)
    if not options.freeze_timeout > 0 or options.freeze_timeout == float("inf"):
        add([Problem("--freeze-timeout", f"{options.freeze_timeout!r} is not a positive number "
                     "of seconds", "e.g. --freeze-timeout 60")])

    try:
        config = azure_config.load_azure_config(options.config_path)
    except (ValidationError, TrustedFileNotFound) as exc:
        add(exc.problems)
        return None, errors
    except QuiesceError as exc:
        errors.append(RunError.azure(AzureCode.INCORRECT_JSON_CONFIG_FILE, "validate",
                                     str(exc), exc.hint))
        return None, errors

    cannot_freeze = freeze_privilege_problems("run", config.fs_freeze)
    add(cannot_freeze)
    opened: dict[str, TrustedFile] = {}
    for phase in ("pre", "post"):
        spec = config.script(phase)
        try:
            trusted = open_trusted(spec.path, "script",
                                   code=AzureCode.for_phase(phase, "permission"))
        except TrustedFileNotFound as exc:
            missing = AzureCode.for_phase(phase, "not-found")
            errors.append(RunError.azure(missing, "validate", str(exc),
                                         f"create the {phase}-script at {spec.path} (mode 700, "
                                         f"owned by {_owner_word()}) or fix "
                                         f"{phase}ScriptLocation"))
            continue
        except PermissionProblem as exc:
            add(exc.problems)
            continue
        unrunnable = scripts.interpreter_problem(trusted.fd, spec.path)
        if unrunnable is not None:
            code = AzureCode.for_phase(phase, "failed")
            errors.append(RunError.azure(code, "validate", *unrunnable))
            trusted.close()
            continue
        opened[phase] = trusted

    mounts: list[Any] = []
    notes: list[str] = []
    if config.fs_freeze and not cannot_freeze:
        from quiesce.freezing.freeze import discover_mounts

        try:
            mounts = discover_mounts(list(options.freeze_mounts) if options.freeze_mounts
                                     else None)
        except FreezeError as exc:
            errors.append(RunError(report.FREEZE_FAILED, None, "validate", str(exc), exc.hint))
        else:
            if not mounts:
                notes.append("no freezable filesystem found: nothing will be frozen")
            elif not options.freeze_mounts and not options.freeze_all:
                errors.append(RunError(report.VALIDATION_FAILED, None, "validate",
                                       freeze_consent_message(mounts), FREEZE_CONSENT_HINT))
    elif options.freeze_mounts:
        notes.append("fsFreezeEnabled is false in the config: --freeze-mount is ignored")

    prepared = Prepared(config, opened, mounts, provider, notes)
    find_hold(prepared)
    if errors:
        prepared.close()
        return None, errors
    return prepared, errors


class Runner:
    """Runs one cycle. ``run()`` returns the :class:`RunStatus`; it raises nothing for a
    failure of the cycle (those are errors in the status)."""

    def __init__(self, options: RunOptions, *, log_stream: TextIO | None = None,
                 run_id: str | None = None,
                 session_factory: Callable[..., Any] | None = None) -> None:
        self.options = options
        self.run_id = run_id or new_run_id()
        self.log = RunLog(log_stream, run_id=self.run_id)
        self.status = RunStatus(self.run_id, options.config_path, time.time())
        self._session_factory = session_factory
        self._critical = False
        self._pending_signal: int | None = None
        self._pending_phase = ""
        self._in_post = False
        self.early_release: dict[str, Any] | None = None
        # The hold deferred to the freeze: settle and block timings, and why it failed.
        self.hold_info: dict[str, Any] = {}
        self.hold_error: HoldIncomplete | None = None
        self._block_connection: Any = None  # protocol.LingeringRequest, open until the thaw
        self._release_before_thaw_allowed = False
        self._early_session: Any = None
        self._stops = 0  # stop signals received so far

    # -- signals ------------------------------------------------------------------------------

    def handle_signal(self, signum: int, frame: object = None) -> None:
        """Signal handler: defer inside the freeze window, stop the cycle outside it.

        The post-script releases what the pre-script took, so the first stop signal of a run
        that arrives while it runs lets it finish (it is bounded by timeoutInSeconds) and is
        reported after it; a second stop signal stops it like any other phase.
        """
        self._stops += 1
        if self._critical:
            self._pending_signal = signum
            self._pending_phase = self._current_phase()
            return
        if self._in_post and self._stops == 1:
            self._pending_signal = signum
            self._pending_phase = "post"
            with contextlib.suppress(OSError):  # raw write: no buffered-stream re-entry
                os.write(2, f"quiesce run: {signal.Signals(signum).name}: letting the "
                            "post-script finish (it releases what the pre-script took); "
                            "send it again to stop the post-script\n".encode())
            return
        raise Interrupted(signum, self._current_phase())

    @contextlib.contextmanager
    def signal_handlers(self) -> Iterator[None]:
        # SIGHUP too: a dropped SSH session must not skip the post-script.
        previous = {s: signal.signal(s, self.handle_signal)
                    for s in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)}
        try:
            yield
        finally:
            for s, handler in previous.items():
                signal.signal(s, handler)

    @contextlib.contextmanager
    def _window(self) -> Iterator[None]:
        """The freeze window: logs held in memory, signals deferred."""
        self._critical = True
        self.log.hold()
        try:
            yield
        finally:
            self._critical = False
            self.log.release()

    def _raise_pending(self) -> None:
        if self._pending_signal is not None:
            signum, self._pending_signal = self._pending_signal, None
            raise Interrupted(signum, self._pending_phase)

    # -- the cycle ----------------------------------------------------------------------------

    def run(self) -> RunStatus:
        status = self.status
        self.log(f"run {self.run_id}: config {self.options.config_path}")
        record = status.phase("validate")
        record.start, t0 = time.time(), time.monotonic()
        try:
            prepared, errors = validate(self.options)
        except Interrupted as exc:
            prepared, errors = None, [RunError(report.INTERRUPTED, None, "validate", str(exc),
                                               "nothing was run; run again")]
        record.duration_ms = (time.monotonic() - t0) * 1000
        for name in ("pre", "sync", "freeze", "snapshot", "thaw", "post"):
            status.phase(name)
        status.freeze = {"enabled": None, "mounts": [], "planned": [], "window_ms": None,
                         "timeout_s": self.options.freeze_timeout, "watchdog_fired": False}
        status.snapshot = {"provider": None, "taken": False}
        if prepared is None:
            record.status = "failed"
            record.detail = f"{len(errors)} problem(s); nothing was run"
            status.errors.extend(errors)
            for error in errors:
                self.log(f"validate: {error.code}: {error.message}")
            return self._finish()
        record.status = "ok"
        status.notes.extend(prepared.notes)
        status.freeze["enabled"] = prepared.config.fs_freeze
        status.freeze["planned"] = [m.mount_point for m in prepared.mounts]
        status.snapshot["provider"] = prepared.provider.name
        try:
            self._cycle(prepared)
        except Interrupted as exc:
            finished = exc.phase == "post" and status.phase("post").status != "interrupted"
            status.errors.append(RunError(report.INTERRUPTED, None,
                                          exc.phase or self._current_phase(),
                                          f"{exc} during the post-script, which was let finish"
                                          if finished else f"{exc}; the cycle was stopped",
                                          "run again when the interruption is resolved"))
        except Exception as exc:  # a bug must not hide the status or skip the post-script
            status.errors.append(RunError(report.INTERNAL_ERROR, None, self._current_phase(),
                                          f"{type(exc).__name__}: {exc}",
                                          "please report this as a quiesce bug"))
            self.log(f"internal error: {exc!r}")
        finally:
            prepared.close()
        return self._finish()

    def _current_phase(self) -> str:
        started = [p.name for p in self.status.phases.values() if p.start is not None]
        return started[-1] if started else "validate"

    def _finish(self) -> RunStatus:
        status = self.status
        status.finished_at = time.time()
        if not status.snapshot_taken:
            status.consistency = "none"
        self.log(f"done: consistency {status.consistency}, snapshot "
                 f"{'taken' if status.snapshot_taken else 'NOT taken'}, exit {status.exit_code}")
        if self.options.status_file:
            try:
                report.write_atomically(self.options.status_file, status.to_json())
            except OSError as exc:
                self.log(f"cannot write the status file {self.options.status_file}: {exc}")
                status.notes.append(f"the status file could not be written: {exc}")
        return status

    def _cycle(self, prepared: Prepared) -> None:
        config = prepared.config
        pre_ok = False
        self._early_session = self._prepare_freeze(prepared)
        try:
            pre = self._script_phase("pre", prepared)
            pre_ended = time.monotonic()
            pre_ok = pre is not None and pre.ok
            if not pre_ok and not config.continue_on_failure:
                self.log("pre-script failed and continueBackupOnFailure is false: no snapshot")
                self.status.notes.append("no snapshot: the pre-script failed and "
                                         "continueBackupOnFailure is false")
                for name in ("sync", "freeze", "snapshot", "thaw"):
                    self.status.phase(name).detail = "skipped: the pre-script failed"
                return
            self._raise_pending()
            self._snapshot_phases(prepared, pre_ok, pre_ended)
        finally:
            self._close_block_connection()  # after the thaw, whatever happened
            if self._early_session is not None:
                self._early_session.cancel()  # no-op once it froze
            # The post-script runs whenever the pre-script was started, whatever happened.
            self._in_post = True
            try:
                self._script_phase("post", prepared)
            finally:
                self._in_post = False
            if sys.exc_info()[1] is None:
                self._raise_pending()  # a stop signal that let the post-script finish

    def _script_phase(self, phase: str, prepared: Prepared) -> scripts.ScriptResult | None:
        spec = prepared.config.script(phase)
        record = self.status.phase(phase)
        record.start, t0 = time.time(), time.monotonic()
        self.log(f"{phase}: running {spec.path} (timeout {spec.timeout}s, "
                 f"retries {spec.retries})")
        env = dict(os.environ)
        env["QUIESCE_RUN_ID"] = self.run_id
        env["QUIESCE_PHASE"] = phase
        # What this run freezes together (maybe nothing): an engine allowed a lighter level
        # checks its files against it; always set, so it overrides any other assumption.
        from quiesce.freezing.freeze_set import FREEZE_MOUNTS_ENV, freeze_mounts_value

        frozen = [m.mount_point for m in prepared.mounts] if prepared.config.fs_freeze else []
        env[FREEZE_MOUNTS_ENV] = freeze_mounts_value(self.run_id, frozen)
        from quiesce.hold.protocol import DEFER_BLOCK_ENV, defer_block_value

        env.pop(DEFER_BLOCK_ENV, None)
        if phase == "pre" and prepared.defer_runtime_dir is not None:
            env[DEFER_BLOCK_ENV] = defer_block_value(self.run_id, prepared.defer_runtime_dir)
        try:
            result = scripts.run_script(
                phase, spec.path, spec.params, timeout=spec.timeout, retries=spec.retries,
                fd=prepared.scripts[phase].fd, env=env,
                sink=lambda stream, line: self.log(f"{phase} {stream}: {line}"))
        except ScriptError as exc:
            record.duration_ms = (time.monotonic() - t0) * 1000
            record.status = "failed"
            record.detail = str(exc)
            self.status.errors.append(RunError.azure(
                exc.code or AzureCode.for_phase(phase, "failed"), phase, str(exc), exc.hint))
            self.log(f"{phase}: {exc}")
            return None
        except Interrupted:
            record.duration_ms = (time.monotonic() - t0) * 1000
            record.status = "interrupted"
            raise
        record.duration_ms = (time.monotonic() - t0) * 1000
        record.attempts = len(result.attempts)
        record.extra = {
            "exit_codes": result.exit_codes,
            "attempt_results": [
                {"number": a.number, "start": iso(a.started_at),
                 "duration": round(a.duration_s, 6),
                 "duration_ms": round(a.duration_s * 1000, 3), "exit_code": a.exit_code,
                 "signal": a.signal, "timed_out": a.timed_out,
                 "output_bytes": a.output_bytes()}
                for a in result.attempts],
            "output": result.output_json(),
        }
        if result.ok:
            record.status = "ok"
            self.log(f"{phase}: ok ({record.attempts} attempt(s), "
                     f"{result.duration_s:.2f}s)")
            return result
        record.status = "timeout" if result.timed_out else "failed"
        record.detail = result.describe()
        code = result.code
        assert code is not None
        tail = "; last output: " + " | ".join(result.output_tail[-3:]) \
            if result.output_tail else ""
        if result.timed_out:
            hint = (f"make the {phase}-script finish within timeoutInSeconds "
                    f"({spec.timeout}s), or raise timeoutInSeconds (at most 1800)")
        else:
            hint = f"run {spec.path} by hand as {_runner_word()} to see why it fails"
        self.status.errors.append(RunError.azure(code, phase, result.describe() + tail, hint))
        self.log(f"{phase}: {result.describe()}")
        return result

    def _snapshot_phases(self, prepared: Prepared, pre_ok: bool, pre_ended: float) -> None:
        """sync -> freeze -> snapshot -> thaw: the bracket itself stays here, in one piece;
        what comes before and after it is in the helpers below."""
        status = self.status
        config = prepared.config
        freezing = config.fs_freeze and bool(prepared.mounts)
        complete = self._hold_before_freeze(prepared, pre_ok, pre_ended)
        self._sync_phase(freezing)
        session = self._freeze_session(prepared, freezing)
        frozen_ok = False

        freeze_rec, snap_rec, thaw_rec = (status.phase(n) for n in ("freeze", "snapshot",
                                                                    "thaw"))
        result: snapshot.SnapshotResult | None = None
        freeze_error: FreezeError | None = None
        frozen_started = time.monotonic()
        with self._window():
            try:
                if session is not None:
                    freeze_rec.start, t0 = time.time(), time.monotonic()
                    session, frozen_ok, freeze_error = self._freeze_step(prepared, session,
                                                                         complete)
                    freeze_rec.status = "ok" if frozen_ok else "failed"
                    if freeze_error is not None:
                        freeze_rec.detail = str(freeze_error)
                    freeze_rec.duration_ms = (time.monotonic() - t0) * 1000
                    frozen_started = t0
                elif complete is not None:
                    with contextlib.suppress(HoldIncomplete):  # no freeze: before the snapshot
                        complete()
                pre_ok = pre_ok and self.hold_error is None
                if self.hold_error is not None and not config.continue_on_failure:
                    snap_rec.detail = ("skipped: the hold could not be completed at the freeze "
                                       "and continueBackupOnFailure is false")
                elif session is None or frozen_ok or config.continue_on_failure:
                    snap_rec.start, t1 = time.time(), time.monotonic()
                    if session is not None and frozen_ok:
                        used = time.monotonic() - frozen_started
                        budget = self.options.freeze_timeout - used - SNAPSHOT_MARGIN
                        budget = max(budget, min(0.1, self.options.freeze_timeout / 2))
                        mounts = [m.mount_point for m in session.frozen]
                    else:
                        budget = max(self.options.freeze_timeout, 1.0)
                        mounts = []
                    result = prepared.provider.take(self.run_id, mounts, budget)
                    snap_rec.duration_ms = (time.monotonic() - t1) * 1000
                    snap_rec.status = "ok" if result.taken else (
                        "timeout" if result.timed_out else "failed")
                    snap_rec.detail = result.detail
            finally:
                self._end_window(prepared, session, pre_ok, frozen_ok)
                if session is not None:
                    thaw_rec.status = "failed" if session.thaw_errors else (
                        "ok" if frozen_ok else "skipped")
                    if not frozen_ok:
                        thaw_rec.detail = "nothing was frozen"

        self._report_window(prepared, session, freeze_error, result)
        status.snapshot_taken = bool(result and result.taken)
        status.consistency = self._consistency(pre_ok, freezing, frozen_ok, session)
        self._raise_pending()

    def _end_window(self, prepared: Prepared, session: Any, pre_ok: bool,
                    frozen_ok: bool) -> None:
        """The thaw, with the hold's release before it (a hold that stops commits) or right
        after it (any other), once the snapshot is over: the application's write stall ends
        there rather than after the post-script's interpreter has started."""
        thaw_rec = self.status.phase("thaw")
        released_early = False
        try:
            released_early = pre_ok and frozen_ok and self._release_before_thaw()
        except Exception:  # noqa: S110 - nothing may keep the thaw below from running
            pass
        finally:
            if session is not None:
                thaw_rec.start, t2 = time.time(), time.monotonic()
                session.thaw()
                thaw_rec.duration_ms = (time.monotonic() - t2) * 1000

        def at_thaw() -> dict[str, Any] | None:
            # The holder also learns whether the freeze held (a lighter level relies on it).
            return release_at_thaw(
                prepared.hold_runtime_dir, self.run_id,
                frozen_together=session is None or (frozen_ok and not session.watchdog_fired))

        if released_early:
            self.early_release = self._collect_early_release(at_thaw)
            stands = self.early_release is not None and self.early_release.get("before_thaw")
            if stands and session is not None and session.watchdog_fired:
                # Released as if the freeze held, and the watchdog had thawed first: the
                # holder revises its record (a hold that counted on the freeze is not
                # consistent; none should have been released early, but a plugin may not say).
                # (A release asked again after the thaw already said so.)
                at_thaw()
        elif pre_ok:
            self.early_release = at_thaw()

    def _release_before_thaw(self) -> bool:
        """Between the snapshot and the thaw: send 'release' on the connection of 'block'
        when the hold stops commits and does not count on the freeze (docs/performance.md).
        The snapshot is taken, so the lock has done its work; ended now, the application's
        commits wait only for the thaw, as in a bare freeze, instead of for the holder's
        unlock after it. Only a socket write: nothing here touches a filesystem, logs, or waits
        for the holder, whose answer (:meth:`_collect_early_release`) is read after the thaw.
        False when not sent; the release then comes after the thaw, as before."""
        connection = self._block_connection
        if connection is None or not self._release_before_thaw_allowed:
            return False
        try:
            connection.send("release", timeout=RELEASE_SEND_TIMEOUT, run_id=self.run_id,
                            keep=True, frozen_together=True, before_thaw=True)
        except QuiesceError:
            return False  # the connection is closed after the thaw (_cycle), not in the window
        return True

    def _collect_early_release(self, at_thaw: Callable[[], dict[str, Any] | None]
                               ) -> dict[str, Any] | None:
        """After the thaw: the holder's answer to the 'release' sent before it. A connection
        the holder closed without answering (it may have dropped the line) is asked again
        on a fresh one (``at_thaw``: this run's hold only, and a hold already released answers
        with its outcome); a holder that did not answer in time is not asked twice."""
        from quiesce.errors import NoActiveHold

        connection = self._block_connection
        assert connection is not None
        try:
            answer = connection.receive(EARLY_RELEASE_TIMEOUT)
        except NoActiveHold:
            return at_thaw()
        except QuiesceError as exc:
            return {"ok": False, "error": str(exc), "before_thaw": True}
        return {**release_answer(answer), "before_thaw": True}

    def _close_block_connection(self) -> None:
        connection, self._block_connection = self._block_connection, None
        if connection is not None:
            connection.close()

    def _freeze_step(self, prepared: Prepared, session: Any, complete: Callable[[], None] | None
                     ) -> tuple[Any, bool, FreezeError | None]:
        """Freeze, completing the hold just before the first FIFREEZE when it was deferred:
        (the session, frozen, the freeze's error). If the hold cannot be completed nothing was
        frozen; with continueBackupOnFailure a fresh session freezes anyway (a crash-consistent
        copy, as after a failed pre-script)."""
        try:
            if complete is None:
                session.freeze()
            else:
                session.freeze(before=complete)
        except HoldIncomplete:
            if not prepared.config.continue_on_failure:
                return session, False, None
            session = self._freeze_session(prepared, True, fresh=True)
            try:
                session.freeze()
            except FreezeError as exc:
                return session, False, exc
        except FreezeError as exc:
            return session, False, exc
        return session, True, None

    def _hold_before_freeze(self, prepared: Prepared, pre_ok: bool,
                            pre_ended: float) -> Callable[[], None] | None:
        """When the pre-script is 'quiesce pre' and may have deferred its write block: ask
        the holder what it holds; if nothing stops writes yet, let the kernel settle after the
        pre-script's exit (FREEZE_SETTLE_SECONDS) before the freeze. Returns the step that
        completes the hold just before the first FIFREEZE (None: nothing to complete)."""
        rundir = prepared.defer_runtime_dir
        if not pre_ok or rundir is None:
            return None
        from quiesce.hold import protocol as proto

        # 'status' goes on a connection that stays open: used again just before the first
        # FIFREEZE ('block') and between the snapshot and the thaw ('release'), so the holder's
        # thread that reads it is created here, not right before the freeze, and nothing is
        # closed near it (docs/performance.md).
        connection: proto.LingeringRequest | None = None
        try:
            connection = proto.LingeringRequest(rundir, HOLD_STATUS_TIMEOUT)
            answer = connection.request("status", timeout=HOLD_STATUS_TIMEOUT)
        except QuiesceError as exc:
            if connection is not None:
                connection.close()
                connection = None
            answer = {"ok": False, "error": str(exc)}
            self.log(f"hold: no status before the freeze ({exc}); the freeze asks again")
        if answer.get("ok"):
            self._commit_paths_last(answer.get("commit_paths"))
        stops_commits = answer.get("block_pending") is True or answer.get("blocks_writes") is True
        if connection is not None and answer.get("ok") and stops_commits:
            self._block_connection = connection
            # A lighter level counts on the freeze, whose outcome is known only after the
            # thaw: such a hold is released after it, told whether the freeze held.
            self._release_before_thaw_allowed = answer.get("relies_on_freeze") is False
        elif connection is not None:
            connection.close()  # nothing to block or release early: before the settle
        if answer.get("ok") and answer.get("blocks_writes") is False:
            wait = pre_ended + FREEZE_SETTLE_SECONDS - time.monotonic()
            if wait > 0:
                time.sleep(wait)
            self.hold_info["settled_ms"] = round(max(0.0, wait) * 1000, 3)
        if answer.get("ok") and answer.get("block_pending") is False:
            return None

        def complete() -> None:  # runs between the sync and the first FIFREEZE: no logging
            t0 = time.monotonic()
            try:
                reply = self._ask_block(rundir)
            except QuiesceError as exc:
                reply = {"ok": False, "error": f"the holder could not be asked ({exc})"}
            self.hold_info["block"] = {"ok": bool(reply.get("ok")),
                                       "blocked": reply.get("blocked"),
                                       "ms": round((time.monotonic() - t0) * 1000, 3),
                                       "error": reply.get("error")}
            if not reply.get("ok"):
                self.hold_error = HoldIncomplete(
                    f"the databases' hold could not be completed at the freeze: "
                    f"{reply.get('error')}",
                    hint="see the holder's run record ('quiesce status'); the pre-script's "
                         "hold counts as failed for this snapshot")
                raise self.hold_error

        return complete

    def _commit_paths_last(self, paths: Any) -> None:
        """Freeze the filesystems the databases' commits wait for (their WAL, as the holder
        reports it) last, and thaw them first, where the freeze order allows: commits then
        go on while the other filesystems freeze (docs/performance.md). Any order gives the
        same snapshot, taken once all are frozen; a failure here keeps the order as it was."""
        session = self._early_session
        if not isinstance(paths, list) or not paths or session is None \
                or not hasattr(session, "reorder"):
            return
        from quiesce.freezing.mounts import device_of, discover_mounts

        ours = {m.device for m in session.mounts}
        if len(ours) < 2:
            return
        try:
            found = (device_of(p) for p in paths if isinstance(p, str) and os.path.isabs(p))
            late = {d for d in found if d is not None and d in ours}
            if not late:
                return
            session.reorder(discover_mounts([m.mount_point for m in session.mounts], late=late))
        except (FreezeError, OSError, ValueError) as exc:
            self.log(f"freeze: kept the freeze order ({exc})")
            return
        self.hold_info["frozen_last"] = [m.mount_point for m in session.mounts
                                         if m.device in late]

    def _ask_block(self, rundir: str) -> dict[str, Any]:
        """Send 'block' on the connection opened before the settle; on a fresh one if that
        one is gone (the holder drops a connection that sends nothing for a while; 'block'
        is idempotent, so asking again is safe). The connection is closed after the thaw
        (_cycle): a close here would lengthen the freeze that follows."""
        from quiesce.errors import NoActiveHold
        from quiesce.hold import protocol as proto

        early: proto.LingeringRequest | None = self._block_connection
        if early is not None:
            try:
                return early.request("block", timeout=HOLD_BLOCK_TIMEOUT, run_id=self.run_id)
            except NoActiveHold:  # closed unanswered; a timeout is not asked twice
                self._close_block_connection()
        fresh = proto.LingeringRequest(rundir, HOLD_STATUS_TIMEOUT)
        self._block_connection = fresh
        return fresh.request("block", timeout=HOLD_BLOCK_TIMEOUT, run_id=self.run_id)

    def _sync_phase(self, freezing: bool) -> None:
        record = self.status.phase("sync")
        record.start, t0 = time.time(), time.monotonic()
        if freezing:
            # FreezeSession syncs exactly the filesystems it freezes (syncfs), so a hung
            # network filesystem elsewhere cannot stall the cycle; counted in its phase.
            record.detail = "each filesystem to freeze is synced by the freeze step"
        else:
            os.sync()  # no freeze: flushing everything makes the crash-consistent copy fresher
        record.duration_ms = (time.monotonic() - t0) * 1000
        record.status = "ok"

    def _prepare_freeze(self, prepared: Prepared) -> Any:
        """Before the pre-script: the FreezeSession with its watchdog already started (its
        deadline waits for the freeze), so that start-up is not spent while the databases
        are held. None when nothing will be frozen, or when it cannot start yet (the freeze
        step then starts it as before)."""
        if not (prepared.config.fs_freeze and prepared.mounts):
            return None
        from quiesce.freezing.freeze import FreezeSession

        factory = self._session_factory or FreezeSession
        session = factory(prepared.mounts, self.options.freeze_timeout, sync=True)
        if not hasattr(session, "prepare"):
            return None
        try:
            session.prepare()
        except FreezeError as exc:
            self.log(f"freeze: could not start the watchdog before the pre-script ({exc}); "
                     "it starts at the freeze instead")
            return None
        return session

    def _freeze_session(self, prepared: Prepared, freezing: bool, fresh: bool = False) -> Any:
        """The FreezeSession for this cycle, or None (then freeze and thaw are "disabled")."""
        if freezing and self._early_session is not None and not fresh:
            return self._early_session
        if freezing:
            from quiesce.freezing.freeze import FreezeSession

            factory = self._session_factory or FreezeSession
            return factory(prepared.mounts, self.options.freeze_timeout, sync=True)
        reason = "fsFreezeEnabled is false" if not prepared.config.fs_freeze else \
            "no freezable filesystem"
        for name in ("freeze", "thaw"):
            self.status.phase(name).status = "disabled"
            self.status.phase(name).detail = reason
        return None

    def _report_window(self, prepared: Prepared, session: Any,
                       freeze_error: FreezeError | None,
                       result: snapshot.SnapshotResult | None) -> None:
        """After the thaw (files may be written again): what happened in the window."""
        status = self.status
        config = prepared.config
        snap_rec = status.phase("snapshot")
        if self.hold_info:
            status.hold.update(self.hold_info)
        if self.hold_error is not None:
            status.errors.append(RunError(report.HOLD_INCOMPLETE, None, "freeze",
                                          str(self.hold_error), self.hold_error.hint))
            self.log(f"hold: {self.hold_error}")
        if self.early_release is not None:
            before = bool(self.early_release.get("before_thaw"))
            status.hold.update({"released_at_thaw": self.early_release["ok"],
                                "released_before_thaw": before and self.early_release["ok"],
                                "runtime_dir": prepared.hold_runtime_dir,
                                "error": self.early_release.get("error")})
            when = "after the snapshot, before the thaw" if before else "at the thaw"
            self.log(f"hold: released {when}" if self.early_release["ok"] else
                     f"hold: not released {when} ({self.early_release.get('error')}); "
                     "the post-script releases it")
        if session is not None:
            status.freeze["mounts"] = [m.mount_point for m in session.frozen]
            status.freeze["window_ms"] = None if session.window_ms is None else round(
                session.window_ms, 3)
            status.freeze["watchdog_fired"] = bool(session.watchdog_fired)
            status.freeze["notes"] = list(session.notes)
            self.log(f"freeze: {', '.join(status.freeze['mounts']) or 'nothing'} frozen, "
                     f"window {status.freeze['window_ms']} ms")
        if freeze_error is not None:
            status.errors.append(RunError(report.FREEZE_FAILED, None, "freeze",
                                          str(freeze_error), freeze_error.hint))
            self.log(f"freeze: {freeze_error}")
            if not config.continue_on_failure:
                snap_rec.detail = "skipped: the freeze failed and continueBackupOnFailure is " \
                                  "false"
        if session is not None:
            for text in session.thaw_errors:
                status.errors.append(RunError(
                    report.THAW_FAILED, None, "thaw", text,
                    "check `fsfreeze -u <mount>` by hand and the kernel log (dmesg)"))
                self.log(f"thaw: {text}")
            if session.watchdog_fired:
                status.errors.append(RunError(
                    report.WATCHDOG_THAWED, None, "thaw",
                    f"the watchdog thawed the filesystems after {self.options.freeze_timeout:g}"
                    " s, before the snapshot step ended: the snapshot may not be consistent",
                    "raise --freeze-timeout or make the snapshot faster"))

        if result is not None:
            status.snapshot = {**status.snapshot, **result.as_dict()}
            for line in result.output:
                self.log(f"snapshot {line}")
            self.log(f"snapshot: {result.detail}")
            if not result.taken:
                status.errors.append(RunError(
                    report.SNAPSHOT_FAILED, None, "snapshot",
                    f"{prepared.provider.describe()}: {result.detail}",
                    "run the snapshot command by hand to see why it fails"
                    if isinstance(prepared.provider, snapshot.CommandSnapshot) else ""))

    @staticmethod
    def _consistency(pre_ok: bool, freezing: bool, frozen_ok: bool, session: Any) -> str:
        if freezing and (not frozen_ok or session.watchdog_fired):
            return "crash"
        if pre_ok:
            return "application"
        return "filesystem" if freezing else "crash"


def find_hold(prepared: Prepared) -> None:
    """Which hold the runner may release at the thaw (a quiesce post wrapper), and complete at
    the freeze (the matching quiesce pre wrapper, on the same runtime dir)."""
    config, opened = prepared.config, prepared.scripts
    if "post" in opened:
        prepared.hold_runtime_dir = wrapper_runtime_dir(opened["post"], config.script("post"),
                                                        "post")
    if "pre" in opened and prepared.hold_runtime_dir is not None:
        pre_dir = wrapper_runtime_dir(opened["pre"], config.script("pre"), "pre")
        if pre_dir == prepared.hold_runtime_dir:
            prepared.defer_runtime_dir = pre_dir


def wrapper_runtime_dir(trusted: TrustedFile, spec: Any, command: str) -> str | None:
    """The runtime dir a quiesce ``command`` wrapper script uses, when its call can be read
    without running it (no shell expansion in it); else None."""
    from quiesce.callers.check_hold import WrapperArgumentError, find_wrapper_call, parse_call
    from quiesce.errors import QuiesceError
    from quiesce.hold import protocol as proto

    try:
        text = trusted.read_bytes(1024 * 1024).decode("utf-8", "replace")
        call = find_wrapper_call(text, spec.path, list(spec.params))
        if call is None or call.command != command or call.expanded:
            return None
        args = parse_call(call)
        return proto.runtime_dir(getattr(args, "runtime_dir", None))
    except (WrapperArgumentError, QuiesceError, OSError, ValueError):
        return None


def release_at_thaw(rundir: str | None, run_id: str, *,
                    frozen_together: bool = True) -> dict[str, Any] | None:
    """Ask the holder to release the moment the snapshot is over (its post then only collects
    the outcome). Only this run's hold (QUIESCE_RUN_ID) is released; any failure leaves the
    release to the post-script, as before. Writes nothing and logs nothing here."""
    if rundir is None:
        return None
    from quiesce.errors import QuiesceError
    from quiesce.hold import protocol as proto

    try:
        answer = proto.request(rundir, "release", timeout=EARLY_RELEASE_TIMEOUT,
                               run_id=run_id, keep=True, frozen_together=frozen_together)
    except QuiesceError as exc:
        return {"ok": False, "error": str(exc)}
    return release_answer(answer)


def release_answer(answer: dict[str, Any]) -> dict[str, Any]:
    """What the run keeps of the holder's answer to the runner's 'release'."""
    return {"ok": bool(answer.get("ok")), "state": answer.get("state"),
            "error": answer.get("error")}


def run(options: RunOptions, *, log_stream: TextIO | None = None,
        install_signal_handlers: bool = False) -> RunStatus:
    """Run one cycle and return its status."""
    runner = Runner(options, log_stream=log_stream)
    if install_signal_handlers:
        with runner.signal_handlers():
            return runner.run()
    return runner.run()


# -- quiesce check ------------------------------------------------------------------------------


@dataclass
class CheckResult:
    config_path: str
    config: azure_config.AzureConfig | None = None
    errors: list[RunError] = field(default_factory=list)
    checked: list[tuple[str, str]] = field(default_factory=list)  # (what, "ok"/"problems")
    mounts: list[Any] = field(default_factory=list)
    freeze_enabled: bool | None = None
    freeze_refused: bool = False  # fsFreezeEnabled true, but freezing needs root
    freeze_mounts: Sequence[str] | None = None  # the --freeze-mount limit, if any
    notes: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.errors


def _lenient_script_paths(path: str) -> dict[str, str]:
    """Script locations from a config that failed validation, to check them anyway."""
    import json

    try:
        with open_trusted(path, "config") as trusted:
            document = json.loads(trusted.read_bytes(azure_config.MAX_CONFIG_BYTES))
    except (QuiesceError, ValueError, OSError, RecursionError):
        return {}
    if not isinstance(document, dict):
        return {}
    out = {}
    for phase in ("pre", "post"):
        value = document.get(f"{phase}ScriptLocation")
        if isinstance(value, str) and value.startswith("/"):
            out[phase] = value
    return out


def check(config_path: str, freeze_mounts: Sequence[str] | None = None) -> CheckResult:
    """Everything ``quiesce run`` would validate, reported in full; nothing is run or frozen."""
    result = CheckResult(config_path, freeze_mounts=freeze_mounts)
    cannot_freeze: list[Problem] = []

    def add(problems: Sequence[Problem], default: str = report.VALIDATION_FAILED) -> None:
        result.errors.extend(RunError.from_problem(p, "check", default) for p in problems)

    script_paths: dict[str, str] = {}
    try:
        result.config = azure_config.load_azure_config(config_path)
        script_paths = {p: result.config.script(p).path for p in ("pre", "post")}
        result.checked.append(("config", "ok"))
        cannot_freeze = freeze_privilege_problems("check", result.config.fs_freeze)
        add(cannot_freeze)
        result.freeze_refused = bool(cannot_freeze)
    except (ValidationError, TrustedFileNotFound) as exc:
        add(exc.problems)
        result.checked.append(("config", "problems"))
        if isinstance(exc, ConfigError):
            script_paths = _lenient_script_paths(config_path)

    for phase, path in script_paths.items():
        before = len(result.errors)
        try:
            with open_trusted(path, "script",
                              code=AzureCode.for_phase(phase, "permission")) as trusted:
                unrunnable = scripts.interpreter_problem(trusted.fd, path)
                if unrunnable is not None:
                    result.errors.append(RunError.azure(
                        AzureCode.for_phase(phase, "failed"), "check", *unrunnable))
                else:
                    note = scripts.azure_shell_note(path, trusted.fd)
                    if note:
                        result.notes.append(note)
        except TrustedFileNotFound as exc:
            result.errors.append(RunError.azure(
                AzureCode.for_phase(phase, "not-found"), "check", str(exc),
                f"create the {phase}-script at {path} (mode 700, owned by {_owner_word()}) "
                f"or fix {phase}ScriptLocation"))
        except PermissionProblem as exc:
            add(exc.problems)
        result.checked.append((f"{phase}-script {path}",
                               "ok" if len(result.errors) == before else "problems"))

    result.freeze_enabled = result.config.fs_freeze if result.config else None
    if result.freeze_enabled and not cannot_freeze:  # a rejected config freezes nothing
        from quiesce.freezing.freeze import discover_mounts

        try:
            result.mounts = discover_mounts(list(freeze_mounts) if freeze_mounts else None)
        except FreezeError as exc:
            result.errors.append(RunError(report.FREEZE_FAILED, None, "check", str(exc),
                                          exc.hint))
    return result


def format_check(result: CheckResult) -> str:
    lines = [f"quiesce check {result.config_path}"]
    for what, verdict in result.checked:
        lines.append(f"  {what}: {verdict}")
    if result.freeze_enabled is None:
        lines.append("  freeze: nothing (the config was rejected; see the problems below)")
    elif result.freeze_enabled is False:
        lines.append("  freeze: off (fsFreezeEnabled is false)")
    elif result.freeze_refused:
        lines.append("  freeze: refused (it needs root; see the problem below)")
    elif result.mounts:
        lines.append("  'quiesce run' would freeze, in this order"
                     + (":" if result.freeze_mounts else
                        " (every freezable local filesystem: a real backup; 'run' needs "
                        "--freeze-all for it outside Azure, or --freeze-mount PATH):"))
        lines.extend(f"    {m.mount_point} ({m.fstype} on {m.source})" for m in result.mounts)
    else:
        lines.append("  would freeze: nothing (no freezable filesystem found)")
    lines.extend(f"note: {note}" for note in result.notes)
    for error in result.errors:
        number = f" ({error.number})" if error.number is not None else ""
        lines.append(f"problem {error.code}{number}: {error.message}")
        if error.hint:
            lines.append(f"  fix: {error.hint}")
    lines.append("all good" if result.ok else f"{len(result.errors)} problem(s)")
    return "\n".join(lines) + "\n"
