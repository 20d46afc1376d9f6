"""``quiesce pre``: quiesce every selected instance and leave them held by a holder process.

Exit status: 0 every instance is held; 1 an instance could not be quiesced (everything already
taken was released again, nothing is held); 2 nothing was attempted (bad configuration, a hold
already active, the holder could not start).
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
from typing import Any

from quiesce.commands import add_runtime_dir_option

# Extra seconds 'pre' waits for the holder past pre_timeout_seconds (interpreter start-up,
# plugin imports) before it gives up and kills it.
STARTUP_MARGIN = 30.0


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", default="/etc/quiesce/quiesce.toml",
                        help="quiesce.toml to use (default: %(default)s)")
    parser.add_argument("--plugins", metavar="NAME,...",
                        help="quiesce only these engines (overrides 'plugins' in the config)")
    add_runtime_dir_option(parser)
    parser.add_argument("--json", action="store_true", help="print the result as JSON")


def main(args: argparse.Namespace) -> int:
    from quiesce import holder_protocol as proto
    from quiesce.errors import HoldActive, HolderError, QuiesceError
    from quiesce.settings import load_settings, parse_plugin_list

    rundir = proto.runtime_dir(args.runtime_dir)
    plugins = parse_plugin_list(args.plugins)
    # Validate in this process: every configuration problem is reported before anything starts.
    settings = load_settings(args.config, plugins=plugins)

    if os.path.isdir(rundir):
        proto.check_runtime_dir(rundir)
        try:
            state = proto.request(rundir, "status", timeout=5.0)
        except QuiesceError:
            state = None
        if state is not None:
            if state.get("state") in ("holding", "quiescing", "releasing", "starting"):
                raise HoldActive(
                    f"a hold is already active (run {state.get('run_id')}, holder pid "
                    f"{state.get('holder_pid')}, state {state.get('state')}); it is left "
                    "untouched",
                    hint="run 'quiesce post' to release it first; 'quiesce status' shows it")
            # A holder that already released by itself and is waiting for a 'post' that never
            # came: its result stays in result.json and the run record; let the new hold start.
            with contextlib.suppress(QuiesceError):
                proto.request(rundir, "retire", timeout=5.0)

    read_fd, write_fd = os.pipe()
    # -B: the holder writes no .pyc (see quiesce.holder.main: frozen filesystems).
    argv = [sys.executable, "-B", "-m", "quiesce.holder", "--config", settings.path,
            "--runtime-dir", rundir, "--ready-fd", str(write_fd)]
    if plugins is not None:
        argv += ["--plugins", ",".join(plugins)]
    try:
        holder = subprocess.Popen(
            argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL, pass_fds=(write_fd,), start_new_session=True, cwd="/")
    except OSError as exc:
        raise HolderError(f"cannot start the holder ({argv[0]}): {exc}") from exc
    finally:
        os.close(write_fd)
    wait = settings.pre_timeout_seconds + STARTUP_MARGIN
    try:
        raw = _read_all(read_fd, wait)
    finally:
        os.close(read_fd)
    if raw is None:
        holder.kill()
        raise HolderError(
            f"the holder (pid {holder.pid}) did not report within {wait:g} s and was killed",
            hint="check the servers; lower connect/lock timeouts in quiesce.toml")
    try:
        ready: dict[str, Any] = json.loads(raw)
    except ValueError:
        code = holder.poll()
        raise HolderError(
            f"the holder (pid {holder.pid}) exited without reporting (exit status {code})",
            hint=f"run {' '.join(argv[:4])} by hand to see why") from None
    ready.setdefault("runtime_dir", rundir)
    if ready.get("ok"):
        _print_held(ready, args.json)
        return 0
    if not ready.get("instances"):
        # Nothing was attempted (a hold already active, the configuration changed under us, the
        # runtime dir is unusable): same treatment as a configuration error in this process.
        if args.json:
            print(json.dumps(ready, indent=2))
        raise QuiesceError(str(ready.get("error")), hint=str(ready.get("hint") or ""))
    _print_failed(ready, args.json)
    return 1


def _read_all(fd: int, timeout: float) -> bytes | None:
    """Everything the holder writes on the readiness pipe, until EOF; None on timeout."""
    deadline = time.monotonic() + timeout
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
