"""``quiesce status``: what is held, by which holder process, since when, until when, and
whether the run records show something to alert on.

Exit status 0 whether or not something is held (it is a question, not a check); 2 when the
runtime dir is unsafe or the holder does not answer. With ``--check`` (or ``--max-age``) the
problems :mod:`quiesce.hold.health` finds become exit statuses: 3 the last hold ended without
'post' and nobody collected it, 4 the last run is not application-consistent, 5 no
application-consistent hold within ``--max-age`` hours (the first that applies, in that order;
``--json`` lists them all under ``health.problems``).
"""

from __future__ import annotations

import argparse
import json
from typing import Any

from quiesce.commands import add_runtime_dir_option
from quiesce.hold import protocol as proto


def _hours(text: str) -> float:
    import math

    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of hours") from None
    if not value > 0 or not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"{text!r} must be a positive number of hours")
    return value


def configure(parser: argparse.ArgumentParser) -> None:
    add_runtime_dir_option(parser)
    parser.add_argument("--json", action="store_true", help="print the state as JSON")
    parser.add_argument("--config", metavar="PATH",
                        help="the quiesce.toml whose state_dir holds the run records (default: "
                             "/etc/quiesce/quiesce.toml when it exists)")
    parser.add_argument("--state-dir", metavar="DIR",
                        help="read the run records here instead (overrides --config)")
    parser.add_argument("--check", action="store_true",
                        help="exit 3 when the last hold ended without 'post' and was never "
                             "collected, 4 when the last run is not application-consistent, "
                             "5 when --max-age is exceeded; 0 when all is well")
    parser.add_argument("--max-age", metavar="HOURS", type=_hours,
                        help="a problem (exit 5, implies --check) when no "
                             "application-consistent hold was released within HOURS")
    parser.add_argument("--metrics-file", metavar="PATH",
                        help="also write a Prometheus node-exporter textfile (atomically)")


def main(args: argparse.Namespace) -> int:
    from quiesce.errors import NoActiveHold

    rundir = proto.runtime_dir(args.runtime_dir)
    try:
        state = proto.request(rundir, "status", timeout=10.0)
        from quiesce.hold.states import MAY_HOLD

        state["held"] = state.get("state") in MAY_HOLD
    except NoActiveHold:
        state = {"held": False, "state": "idle", "holder_pid": None, "instances": []}
        # A result file the holder did not write is reported (exit 2, as 'post' would), not
        # hidden behind "nothing is held".
        pending = proto.read_result(rundir)
        if pending is not None:
            state["uncollected"] = {k: pending.get(k) for k in
                                    ("run_id", "state", "message", "released_at", "instances")}
        if proto.lock_held(rundir):
            state["state"] = "busy"
        elif pending is None:
            from quiesce.hold.trace import read_trace

            trace = read_trace(rundir)
            if trace is not None:
                # Holder and guardian both died without a result: 'post' reports it lost.
                state["state"] = "lost"
                state["lost"] = {k: trace.get(k) for k in
                                 ("run_id", "holder_pid", "state", "started_at", "since")}
    state["runtime_dir"] = rundir
    alerting = bool(args.check or args.max_age is not None)
    health = _health(state, args, strict=alerting or bool(args.metrics_file))
    state["health"] = health.as_dict() if health is not None else None
    if health is not None and args.metrics_file:
        from quiesce.hold.health import metrics_text, write_metrics

        try:
            write_metrics(args.metrics_file, metrics_text(health))
        except OSError as exc:
            from quiesce.errors import QuiesceError

            raise QuiesceError(f"cannot write the metrics file {args.metrics_file}: "
                               f"{exc.strerror or exc}",
                               hint="point --metrics-file at the node-exporter textfile "
                                    "directory (e.g. /var/lib/prometheus/node-exporter)") from exc
    _print(state, args.json)
    if health is not None:
        from quiesce import journal

        journal.log_event("status", "checked",
                          "; ".join(p["message"] for p in health.as_dict()["problems"])
                          or "no problem found", priority=journal.WARNING if health.problems
                          else journal.INFO, state=state.get("state"),
                          problems=",".join(health.problems) or None)
    if alerting and health is not None:
        return int(health.exit_code)
    return 0


def _uncollected(state: dict[str, Any]) -> dict[str, Any] | None:
    """The hold that ended without 'post' and that nobody collected, if any."""
    from quiesce.hold.health import ENDED_WITHOUT_POST

    if state.get("uncollected"):
        return dict(state["uncollected"])
    if state.get("state") == "lost" and state.get("lost"):
        return {"run_id": state["lost"].get("run_id"), "state": "lost"}
    if state.get("state") in ENDED_WITHOUT_POST:  # a lingering holder that released by itself
        return {"run_id": state.get("run_id"), "state": state.get("state")}
    return None


def _state_dir(args: argparse.Namespace) -> str:
    if args.state_dir:
        return str(args.state_dir)
    import os

    from quiesce.settings import DEFAULT_PATH, load_core_settings

    if args.config or os.path.exists(DEFAULT_PATH):
        return load_core_settings(args.config or DEFAULT_PATH).state_dir
    from quiesce.hold.records import default_state_dir

    return default_state_dir()


def _health(state: dict[str, Any], args: argparse.Namespace, *, strict: bool) -> Any:
    """The run records' health; None when they cannot be read and nobody asked (a plain
    'status' stays a question that answers 0)."""
    from quiesce.errors import QuiesceError
    from quiesce.hold import health

    try:
        state_dir = _state_dir(args)
        records = health.read_records(state_dir)
    except QuiesceError as exc:
        if strict:
            raise
        state["health_error"] = str(exc)
        return None
    state["state_dir"] = state_dir
    return health.assess(records, uncollected=_uncollected(state), max_age_hours=args.max_age)


def _print(state: dict[str, Any], as_json: bool) -> None:
    if as_json:
        print(json.dumps(state, indent=2, default=str))
        return
    if not state["held"]:
        if state["state"] == "lost":
            lost = state["lost"]
            print(f"nothing is held any more: the holder (pid {lost.get('holder_pid')}) of run "
                  f"{lost.get('run_id')} died while {lost.get('state')} and left no result; "
                  "'quiesce post' reports that hold as lost")
        elif state["state"] == "busy":
            print(f"nothing is held in {state['runtime_dir']}, but a holder or guardian is "
                  "still finishing")
        elif state["state"] in ("idle",):
            print(f"nothing is held (no holder in {state['runtime_dir']})")
        else:
            print(f"nothing is held any more: the holder (pid {state.get('holder_pid')}) "
                  f"is in state {state['state']} and waits for 'quiesce post' to collect "
                  "the result")
        pending = state.get("uncollected")
        if pending:
            print(f"uncollected result of run {pending.get('run_id')}: {pending.get('message')}")
        _print_health(state)
        return
    line = f"{state['state']}: run {state.get('run_id')}, holder pid {state.get('holder_pid')}"
    if state["state"] == "quiescing" and state.get("since") is None:
        line += ", acquiring the locks (not held yet)"  # no hold times before the hold
    if state.get("since") is not None:
        line += f", since {state['since']}"
        if state.get("until") is not None:
            line += f", until {state['until']}"
        if state.get("remaining_seconds") is not None:
            line += f" ({state['remaining_seconds']} s left)"
    print(line)
    if state.get("block_pending"):
        print("  commits go on: the commit block waits for 'quiesce run' to take it just "
              "before its freeze")
    for inst in state.get("instances") or []:
        line = f"  {inst.get('plugin')}/{inst.get('name')}: {inst.get('status')}"
        if inst.get("held_seconds") is not None:
            line += f" for {inst['held_seconds']:.1f} s"
        if inst.get("error"):
            line += f"; {inst['error']}"
        print(line)
    _print_health(state)


def _print_health(state: dict[str, Any]) -> None:
    health = state.get("health")
    if not health:
        return
    last = health.get("last_run")
    if last:
        word = "application-consistent" if last["consistent"] else "NOT application-consistent"
        print(f"last run: {last['run_id']}, {last['state']}, {word}"
              + (f", released at {last['released_at']}" if last.get("released_at") else ""))
    for problem in health["problems"]:
        print(f"PROBLEM ({problem['problem']}, exit {problem['exit_code']} with --check): "
              f"{problem['message']}")
