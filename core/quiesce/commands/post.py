"""``quiesce post``: tell the holder to release, and report per instance what was recorded.

Start-up time is on the application's critical path (the locks are still held), so this module
imports only the holder's client protocol before the release request is sent: no plugin, no
configuration parsing, no driver.

Exit status: 0 every instance was "released" (held until now: the snapshot is
application-consistent); 1 anything else ("auto-released", "lost", "failed"): the snapshot may
not be application-consistent; 2 no hold to release (or the holder could not be reached).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from typing import Any

from quiesce import holder_protocol as proto
from quiesce.commands import add_runtime_dir_option

GUARDIAN_WAIT_SECONDS = 90.0


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", default="/etc/quiesce/quiesce.toml",
                        help="accepted for symmetry with 'pre'; the holder already knows it")
    add_runtime_dir_option(parser)
    parser.add_argument("--json", action="store_true", help="print the result as JSON")


def main(args: argparse.Namespace) -> int:
    from quiesce.errors import NoActiveHold

    rundir = proto.runtime_dir(args.runtime_dir)
    try:
        outcome = proto.request(rundir, "release", timeout=120.0)
        outcome["collected_from"] = outcome.get("collected_from", "holder")
    except NoActiveHold:
        outcome = _uncollected(rundir)
        if outcome is None:
            raise
    if not outcome.get("ok", True) and "instances" not in outcome:
        from quiesce.errors import HolderError

        raise HolderError(f"the holder refused: {outcome.get('error')}")
    instances = outcome.get("instances") or []
    consistent = bool(instances) and all(i.get("status") == proto.RELEASED for i in instances)
    outcome["consistent"] = consistent
    if not outcome.get("message"):
        outcome["message"] = _message(consistent)
    elif not consistent and "NOT" not in str(outcome["message"]):
        outcome["message"] = f"{outcome.get('message')}: {_message(False)}"
    _print(outcome, args.json)
    return 0 if consistent else 1


def _uncollected(rundir: str) -> dict[str, Any] | None:
    """The result a holder (or its guardian) left behind when nobody was there to ask."""
    give_up = time.monotonic() + GUARDIAN_WAIT_SECONDS
    while True:
        result = proto.read_result(rundir)
        if result is not None:
            proto.consume_result(rundir)
            result["collected_from"] = "result-file"
            return result
        # A guardian may still be recovering (it holds the lock until the result is written).
        if not proto.lock_held(rundir) or time.monotonic() > give_up:
            return None
        time.sleep(0.1)


def _message(consistent: bool) -> str:
    if consistent:
        return ("every instance was held until 'post': the snapshot is application-consistent")
    return ("not every instance was held until 'post': the snapshot may NOT be "
            "application-consistent")


def _print(outcome: dict[str, Any], as_json: bool) -> None:
    if as_json:
        outcome.pop("log", None)
        print(json.dumps(outcome, indent=2, default=str))
        return
    stream = sys.stdout if outcome["consistent"] else sys.stderr
    print(f"quiesce post: run {outcome.get('run_id')}: {outcome['message']}", file=stream)
    for inst in outcome.get("instances") or []:
        held = inst.get("held_seconds")
        line = f"  {inst.get('plugin')}/{inst.get('name')}: {inst.get('status')}"
        if held is not None:
            line += f" after {held:.3f} s"
        if inst.get("error"):
            line += f"; {inst['error']}"
        if inst.get("note"):
            line += f" ({inst['note']})"
        print(line, file=stream)
        for key, value in sorted((inst.get("metadata") or {}).items()):
            text = str(value)
            if "\n" in text or len(text) > 100:
                text = f"<{len(text)} characters, in the run record>"
            print(f"    {key}: {text}", file=stream)
    if outcome.get("record"):
        print(f"  record: {outcome['record']}", file=stream)
