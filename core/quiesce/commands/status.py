"""``quiesce status``: what is held, by which holder process, since when, until when.

Exit status 0 whether or not something is held (it is a question, not a check); 2 when the
runtime dir is unsafe or the holder does not answer.
"""

from __future__ import annotations

import argparse
import json
from typing import Any

from quiesce.commands import add_runtime_dir_option
from quiesce.hold import protocol as proto


def configure(parser: argparse.ArgumentParser) -> None:
    add_runtime_dir_option(parser)
    parser.add_argument("--json", action="store_true", help="print the state as JSON")


def main(args: argparse.Namespace) -> int:
    from quiesce.errors import NoActiveHold

    rundir = proto.runtime_dir(args.runtime_dir)
    try:
        state = proto.request(rundir, "status", timeout=10.0)
        state["held"] = state.get("state") in ("holding", "quiescing", "releasing")
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
    _print(state, args.json)
    return 0


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
    for inst in state.get("instances") or []:
        line = f"  {inst.get('plugin')}/{inst.get('name')}: {inst.get('status')}"
        if inst.get("held_seconds") is not None:
            line += f" for {inst['held_seconds']:.1f} s"
        if inst.get("error"):
            line += f"; {inst['error']}"
        print(line)
