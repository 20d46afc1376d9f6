"""``quiesce pre``: quiesce every selected instance and leave them held by a holder process.

Exit status: 0 every instance is held; 1 an instance could not be quiesced in time (everything
already taken was released again, nothing is held); 2 nothing was attempted (bad configuration,
the holder could not start); 3 a hold is already active (a retried hook, a second snapshot
request): it is left untouched, and this 'pre' holds nothing.

The deadline: ``pre`` answers, holding everything or nothing, within the smallest of
``pre_timeout_seconds``, ``--deadline`` and the limit read from ``--azure-config`` (Azure's
``timeoutInSeconds`` less its poll period and a second of start-up), counted from this
process's start. The holder enforces the same deadline by itself, so a ``pre`` that is killed
or abandoned by its caller cannot leave a hold that starts later: a lock granted after the
deadline is released at once and recorded "late".
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import select
import subprocess
import sys
import time
from collections.abc import Sequence
from typing import Any

from quiesce.commands import add_runtime_dir_option

# Seconds 'pre' waits for the holder's answer to an "abort" at the deadline.
ABORT_WAIT_SECONDS = 1.0
EXIT_HOLD_ACTIVE = 3


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", default="/etc/quiesce/quiesce.toml",
                        help="quiesce.toml to use (default: %(default)s)")
    parser.add_argument("--plugins", metavar="NAME,...",
                        help="quiesce only these engines (overrides 'plugins' in the config)")
    parser.add_argument("--deadline", type=float, metavar="SECONDS",
                        help="hold everything within SECONDS of pre's start, or nothing (the "
                             "caller's own limit less its margin)")
    parser.add_argument("--azure-config", metavar="PATH",
                        help="take the deadline from this Azure VMSnapshotScriptPluginConfig"
                             ".json, read now: timeoutInSeconds less the poll period and 1 s")
    add_runtime_dir_option(parser)
    parser.add_argument("--json", action="store_true", help="print the result as JSON")


def deadline_seconds(pre_timeout: float, explicit: float | None, azure: Any = None,
                     azure_path: str = "") -> float:
    """pre's deadline in seconds from its start: the smallest limit that applies (``azure``:
    the loaded Azure config the wrapper named)."""
    import math

    from quiesce.errors import QuiesceError

    limits = [float(pre_timeout)]
    if explicit is not None:
        if not math.isfinite(explicit) or explicit <= 0:
            raise QuiesceError(f"--deadline {explicit:g} is not a positive number of seconds",
                               hint="pass the caller's time limit less a margin, e.g. 25")
        limits.append(explicit)
    if azure is not None:
        from quiesce.callers.caller_deadline import azure_pre_deadline

        seconds = azure_pre_deadline(azure)
        if seconds <= 0:
            raise QuiesceError(
                f"timeoutInSeconds in {azure_path} leaves no time for 'pre' once Azure's "
                "poll period is taken off", hint="raise timeoutInSeconds (see 'quiesce check')")
        limits.append(seconds)
    return min(limits)


def declare_azure_freeze(azure: Any, environ: dict[str, str] | Any = None) -> dict[str, str]:
    """Tell the holder (through its environment) whether Azure freezes filesystems, unless a
    runner already declared exactly what it freezes (that declaration wins). Returns what was
    set: the holder, started before the Azure config is read, gets it with its go message."""
    from quiesce.freezing.freeze_set import AZURE_FREEZE_ENV, FREEZE_MOUNTS_ENV

    env = os.environ if environ is None else environ
    if FREEZE_MOUNTS_ENV in env:
        return {}
    env[AZURE_FREEZE_ENV] = "true" if azure.fs_freeze else "false"
    return {AZURE_FREEZE_ENV: env[AZURE_FREEZE_ENV]}


def main(args: argparse.Namespace) -> int:
    started = time.monotonic()  # first thing: the deadline counts from here
    from quiesce.errors import HoldActive

    try:
        return _main(args, started)
    except HoldActive as exc:
        print(f"quiesce pre: {exc}", file=sys.stderr)
        if exc.hint:
            print(f"  fix: {exc.hint}", file=sys.stderr)
        if args.json:
            from quiesce.cli import error_document

            print(json.dumps({"command": "pre", "error": error_document(exc)}, indent=2))
        return EXIT_HOLD_ACTIVE


def _main(args: argparse.Namespace, started: float) -> int:
    from quiesce.hold import protocol as proto

    rundir = proto.runtime_dir(args.runtime_dir)
    # The holder starts first and imports what it needs (plugins, drivers) while this process
    # checks; it touches nothing before the go message (quiesce.hold.warmup).
    holder = _Starting(rundir, os.path.abspath(args.config), args.plugins)
    try:
        cutoff, environ, previous = _checks(args, started, rundir)
    except BaseException:
        holder.abandon()
        raise
    seconds = cutoff - started
    raw = holder.go(cutoff, environ)
    if raw is not None and time.monotonic() > cutoff:
        raw = None  # the answer came after the deadline: the caller may be snapshotting now
    if raw is None:
        return _gave_up(rundir, holder.pid, seconds, args.json)
    try:
        ready: dict[str, Any] = json.loads(raw)
    except ValueError:
        from quiesce.errors import HolderError

        raise HolderError(
            f"the holder (pid {holder.pid}) exited without reporting (exit status "
            f"{holder.process.poll()})",
            hint=f"run {' '.join(holder.argv[:4])} by hand to see why") from None
    ready.setdefault("runtime_dir", rundir)
    if previous is not None:
        ready["uncollected"] = previous
        ready.setdefault("warnings", []).append(previous["warning"])
    _journal(ready)
    return _report(ready, holder.config, args.json)


def _checks(args: argparse.Namespace, started: float,
            rundir: str) -> tuple[float, dict[str, str], dict[str, Any] | None]:
    """Everything pre checks before the holder may start: (the deadline, the environment
    declared for the holder, the uncollected outcome of a previous hold)."""
    from quiesce.hold.records import check_writable
    from quiesce.settings import load_core_settings

    # Only the engine-neutral keys here (no plugin, no driver): the holder validates the whole
    # file once, before it quiesces anything, and its problems come back as ours.
    settings = load_core_settings(args.config)
    azure = None
    environ: dict[str, str] = {}
    if args.azure_config is not None:
        from quiesce.callers.azure_config import load_azure_config

        azure = load_azure_config(args.azure_config)  # read now: the user may have edited it
        environ = declare_azure_freeze(azure)
    seconds = deadline_seconds(settings.pre_timeout_seconds, args.deadline, azure,
                               args.azure_config or "")
    check_writable(settings.state_dir)
    cutoff = started + seconds
    _refuse_an_active_hold(rundir, cutoff)
    # An outcome nobody collected (an automatic release, a lost hold) is superseded by this
    # hold: say so now (its run record stays in the state dir).
    return cutoff, environ, _uncollected(rundir)


class _Starting:
    """The holder, started before pre's checks with a ready pipe and a go pipe."""

    def __init__(self, rundir: str, config: str, plugins: str | None) -> None:
        """``plugins``: --plugins as given (the holder parses it, with
        quiesce.settings.parse_plugin_list, which this process does not import yet)."""
        from quiesce.errors import HolderError

        self.config = config
        read_fd, self.write_fd = os.pipe()
        self.ready_fd, ready_write = os.pipe()
        # -B: the holder writes no .pyc (see quiesce.hold.holder.main: frozen filesystems).
        self.argv = [sys.executable, "-B", "-m", "quiesce.hold.holder", "--config", config,
                     "--runtime-dir", rundir, "--ready-fd", str(ready_write),
                     "--go-fd", str(read_fd)]
        if plugins is not None:
            self.argv += ["--plugins", plugins]
        try:
            self.process = _start_holder(self.argv, ready_write, read_fd)
        except OSError as exc:
            for fd in (self.write_fd, self.ready_fd):
                os.close(fd)
            raise HolderError(f"cannot start the holder ({self.argv[0]}): {exc}") from exc
        finally:
            os.close(read_fd)
            os.close(ready_write)
        self.pid = self.process.pid

    def go(self, cutoff: float, environ: dict[str, str]) -> bytes | None:
        """Say go; the holder's readiness message (b"" if it exited without one), or None
        when none came by the deadline."""
        from quiesce.hold.warmup import go_message

        try:
            os.write(self.write_fd, go_message(cutoff, environ))
        except OSError:
            pass  # the holder is gone: its ready pipe is at EOF, reported as such
        finally:
            os.close(self.write_fd)
        try:
            return _read_all(self.ready_fd, cutoff - time.monotonic())
        finally:
            os.close(self.ready_fd)

    def abandon(self) -> None:
        """pre attempts nothing: the holder, which has touched nothing yet, is stopped."""
        for fd in (self.write_fd, self.ready_fd):
            with contextlib.suppress(OSError):
                os.close(fd)
        with contextlib.suppress(OSError):
            self.process.kill()
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.process.wait(5)


def _refuse_an_active_hold(rundir: str, cutoff: float) -> None:
    """HoldActive when a hold exists or is being set up in ``rundir`` (left untouched); a
    holder that only waits for its outcome to be collected is retired."""
    from quiesce.errors import HoldActive, QuiesceError
    from quiesce.hold import protocol as proto
    from quiesce.hold.states import ACTIVE

    if not os.path.isdir(rundir):
        return
    proto.check_runtime_dir(rundir)
    try:
        state = proto.request(rundir, "status",
                              timeout=max(0.1, min(5.0, cutoff - time.monotonic())))
    except QuiesceError:
        return
    if state.get("state") in ACTIVE:
        raise HoldActive(
            f"a hold is already active (run {state.get('run_id')}, holder pid "
            f"{state.get('holder_pid')}, state {state.get('state')}); it is left untouched",
            hint="run 'quiesce post' to release it first; 'quiesce status' shows it")
    # A holder that already released by itself and is waiting for a 'post' that never came:
    # its result stays in result.json and the run record; let the new hold start.
    with contextlib.suppress(QuiesceError):
        proto.request(rundir, "retire", timeout=5.0)


def _report(ready: dict[str, Any], config_path: str, as_json: bool) -> int:
    """The holder's readiness message as pre's output and exit status."""
    from quiesce.errors import HoldActive, QuiesceError

    if ready.get("ok"):
        _print_held(ready, as_json)
        return 0
    if ready.get("kind") == "HoldActive":
        raise HoldActive(str(ready.get("error")), hint=str(ready.get("hint") or ""))
    if ready.get("kind") == "ConfigError" and ready.get("problems"):
        from quiesce.errors import ConfigError, Problem

        raise ConfigError(config_path, [
            Problem(p.get("where", ""), p.get("message", ""), p.get("hint") or "")
            for p in ready["problems"]])
    if not ready.get("instances"):
        # Nothing was attempted (a hold already active, the configuration changed under us, the
        # runtime dir is unusable): same treatment as a configuration error in this process.
        if as_json:
            print(json.dumps(ready, indent=2))
        raise QuiesceError(str(ready.get("error")), hint=str(ready.get("hint") or ""))
    _print_failed(ready, as_json)
    return 1


def _start_holder(argv: list[str], ready_fd: int, *fds: int) -> subprocess.Popen[bytes]:
    """Start the holder (and with it its guardian) in a systemd scope of its own where systemd
    runs the machine, so a caller that kills its whole cgroup cannot take the processes that
    release the locks with it (quiesce.scope); else, or if systemd-run fails, directly."""
    from quiesce.scope import in_own_scope, scope_unit_name

    decision = in_own_scope(argv, scope_unit_name("holder", f"{os.getpid()}"))

    def start(command: Sequence[str]) -> subprocess.Popen[bytes]:
        return subprocess.Popen(
            list(command), stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL, pass_fds=(ready_fd, *fds), start_new_session=True,
            cwd="/")

    if not decision.wrapped:
        return start(argv)
    try:
        return start(decision.argv)
    except OSError:
        return start(argv)


def _gave_up(rundir: str, holder_pid: int, seconds: float, as_json: bool) -> int:
    """The deadline passed without a complete hold: tell the holder (it enforces the deadline
    by itself too) and say so. Nothing is held for this snapshot."""
    from quiesce.errors import QuiesceError
    from quiesce.hold import protocol as proto

    with contextlib.suppress(QuiesceError):
        proto.request(rundir, "abort", timeout=ABORT_WAIT_SECONDS)
    message = (f"not every instance was held within the deadline ({seconds:g} s): nothing is "
               "held for this snapshot; a lock granted later is released at once")
    _journal({"ok": False, "state": "failed", "error": message, "holder_pid": holder_pid})
    if as_json:
        print(json.dumps({"ok": False, "state": "failed", "error": message,
                          "holder_pid": holder_pid, "runtime_dir": rundir,
                          "instances": []}, indent=2))
    else:
        print(f"quiesce pre: FAILED, {message}", file=sys.stderr)
        print(f"  the holder (pid {holder_pid}) records which instance was late; "
              "'quiesce post' reports it", file=sys.stderr)
    return 1


def _read_all(fd: int, timeout: float) -> bytes | None:
    """Everything the holder writes on the readiness pipe, until EOF; None on timeout."""
    deadline = time.monotonic() + max(0.0, timeout)
    chunks: list[bytes] = []
    while True:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            return None
        ready, _, _ = select.select([fd], [], [], remaining)
        if not ready:
            return None
        chunk = os.read(fd, 65536)
        if not chunk:
            return b"".join(chunks)
        chunks.append(chunk)
        if chunk.endswith(b"\n"):
            # One message per hold: done without waiting for EOF (the holder closes it next).
            return b"".join(chunks)


def _print_held(ready: dict[str, Any], as_json: bool) -> None:
    if as_json:
        print(json.dumps(ready, indent=2))
        return
    instances = ready.get("instances", [])
    print(f"quiesce pre: holding {len(instances)} instance(s) (run {ready.get('run_id')}, "
          f"holder pid {ready.get('holder_pid')})")
    for inst in instances:
        print(f"  {inst['plugin']}/{inst['name']}: {inst['status']}")
    print(f"  held since {ready.get('since')}; released automatically at {ready.get('until')} "
          f"(max_hold_seconds {ready.get('max_hold_seconds'):g}) unless 'quiesce post' "
          "comes first")
    for warning in ready.get("warnings") or []:
        print(f"  warning: {warning}")


def _print_failed(ready: dict[str, Any], as_json: bool) -> None:
    if as_json:
        print(json.dumps(ready, indent=2))
        return
    print("quiesce pre: FAILED, nothing is held", file=sys.stderr)
    for inst in ready.get("instances", []):
        line = f"  {inst['plugin']}/{inst['name']}: {inst['status']}"
        if inst.get("error"):
            line += f": {inst['error']}"
        elif inst.get("note"):
            line += f" ({inst['note']})"
        print(line, file=sys.stderr)
    if not ready.get("instances"):
        print(f"  {ready.get('error')}", file=sys.stderr)


def _uncollected(rundir: str) -> dict[str, Any] | None:
    """The result a previous hold left for a 'post' that never came (result.json), as the
    warning this 'pre' reports; None when there is none (or it cannot be read)."""
    from quiesce.errors import QuiesceError
    from quiesce.hold import protocol as proto

    if not os.path.isdir(rundir):
        return None
    try:
        result = proto.read_result(rundir)
    except QuiesceError:
        return None
    if result is None:
        return None
    record = result.get("record")
    warning = (f"the previous hold (run {result.get('run_id')}) ended {result.get('state')} "
               f"and no 'post' collected it: {result.get('message')}"
               + (f"; its record: {record}" if record else ""))
    from quiesce import journal

    journal.log_event("pre", "uncollected", warning, priority=journal.WARNING,
                      run_id=result.get("run_id"), state=result.get("state"),
                      consistent=False, record=record)
    return {"run_id": result.get("run_id"), "state": result.get("state"),
            "released_at": result.get("released_at"), "record": record, "warning": warning}


def _journal(ready: dict[str, Any]) -> None:
    """One event for this 'pre': held, or failed with why (sent before 'pre' exits, never
    blocking: see quiesce.journal)."""
    from quiesce import journal

    instances = ready.get("instances") or []
    names = ", ".join(f"{i.get('plugin')}/{i.get('name')}" for i in instances)
    if ready.get("ok"):
        journal.log_event("pre", "held", f"holding {len(instances)} instance(s): {names}",
                          run_id=ready.get("run_id"), holder_pid=ready.get("holder_pid"),
                          until=ready.get("until"), instances=len(instances))
        return
    failed = [f"{i.get('plugin')}/{i.get('name')}: {i.get('error')}" for i in instances
              if i.get("error")]
    journal.log_event("pre", "failed", "; ".join(failed) or str(ready.get("error")),
                      priority=journal.ERR, run_id=ready.get("run_id"),
                      holder_pid=ready.get("holder_pid"), instances=len(instances))
