"""``quiesce post``: tell the holder to release, and report per instance what was recorded.

Start-up time is on the application's critical path (the locks are still held), so this module
imports only the holder's client protocol before the release request is sent: no plugin, no
configuration parsing, no driver.

Exit status: 0 the holder says the hold was complete before 'pre' answered (within its
deadline) and every instance was "released" by this 'post' (the snapshot is
application-consistent); 1 anything else ("auto-released", "lost", "late", "aborted",
"failed", a 'pre' that failed or a holder that died): the snapshot may NOT be
application-consistent; 2 there was no hold at all (or the holder could not be reached, or the
active hold belongs to another run).
"""

from __future__ import annotations

import json
import os
import sys
import time
from typing import TYPE_CHECKING, Any

from quiesce.commands import add_runtime_dir_option
from quiesce.hold import protocol as proto

if TYPE_CHECKING:
    import argparse

GUARDIAN_WAIT_SECONDS = 90.0


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", default="/etc/quiesce/quiesce.toml",
                        help="accepted for symmetry with 'pre'; the holder already knows it")
    add_runtime_dir_option(parser)
    parser.add_argument("--caller-failed", metavar="REASON",
                        help="the snapshot agent reported a failure (e.g. VMware's "
                             "freezeFail): release, and record the run as NOT consistent "
                             "with REASON")
    parser.add_argument("--json", action="store_true", help="print the result as JSON")
    parser.add_argument("--metrics-file", metavar="PATH",
                        help="after the release, write a Prometheus node-exporter textfile "
                             "(atomically) with the run records' health (see 'quiesce status')")


def fast_main(argv: list[str]) -> int | None:
    """``post`` with its usual arguments (``--runtime-dir DIR``, ``--config PATH``, ``--json``)
    read without argparse; None for anything else (``--help``, a typo), which then goes
    through the full parser and its messages."""
    from quiesce.errors import QuiesceError

    values: dict[str, str | None] = {"--runtime-dir": None, "--config": None,
                                     "--metrics-file": None}
    as_json = False
    rest = list(argv)
    while rest:
        item = rest.pop(0)
        name, eq, value = item.partition("=")
        if item == "--json":
            as_json = True
        elif name in values and eq and value:
            values[name] = value
        elif item in values and rest and not rest[0].startswith("-"):
            values[item] = rest.pop(0)
        else:
            return None
    try:
        return run(values["--runtime-dir"], as_json, metrics_file=values["--metrics-file"])
    except QuiesceError as exc:
        from quiesce.cli import report_error

        return report_error("post", exc, as_json)


def main(args: argparse.Namespace) -> int:
    return run(args.runtime_dir, args.json, getattr(args, "caller_failed", None),
               metrics_file=args.metrics_file)


def run(runtime_dir: str | None, as_json: bool, caller_failed: str | None = None, *,
        metrics_file: str | None = None) -> int:
    from quiesce.errors import NoActiveHold

    rundir = proto.runtime_dir(runtime_dir)
    fields = {}
    run_id = os.environ.get("QUIESCE_RUN_ID")
    if run_id:
        fields["run_id"] = run_id  # never release (or report) another run's hold
    if caller_failed:
        fields["caller_failed"] = caller_failed[:500]  # the holder records it
    outcome: dict[str, Any] | None
    try:
        outcome = proto.request(rundir, "release", timeout=120.0, **fields)
        outcome["collected_from"] = outcome.get("collected_from", "holder")
    except NoActiveHold:
        outcome = _uncollected(rundir)
        if outcome is None:
            outcome = _died(rundir)
        if outcome is None:
            raise
    if not outcome.get("ok", True) and "instances" not in outcome:
        from quiesce.errors import HolderError

        raise HolderError(f"the holder refused: {outcome.get('error')}")
    instances = outcome.get("instances") or []
    # Both must say so: the holder (the hold was complete in time and released by 'post'),
    # and every instance.
    consistent = (outcome.get("consistent") is True and bool(instances)
                  and all(i.get("status") == proto.RELEASED for i in instances))
    if caller_failed:
        # Whatever quiesce held, the agent says its snapshot failed: never consistent.
        consistent = False
        outcome["caller_failed"] = caller_failed
        if caller_failed not in str(outcome.get("message") or ""):
            outcome["message"] = (f"the snapshot agent reported a failure ({caller_failed}): "
                                  f"{outcome.get('message') or _message(False)}")
    outcome["consistent"] = consistent
    if not outcome.get("message"):
        outcome["message"] = _message(consistent)
    elif not consistent and "NOT" not in str(outcome["message"]):
        outcome["message"] = f"{outcome.get('message')}: {_message(False)}"
    _aftercare(outcome, metrics_file)  # everything here runs after the release
    _print(outcome, as_json)
    _print_aftercare(outcome, as_json)
    if outcome.get("record_error"):
        return 1  # the record (and with it e.g. the backup_label) is not on disk
    return 0 if consistent else 1


def _uncollected(rundir: str) -> dict[str, Any] | None:
    """The result a holder (or its guardian) left behind when nobody was there to ask."""
    give_up = time.monotonic() + GUARDIAN_WAIT_SECONDS
    while True:
        result = proto.read_result(rundir)
        if result is not None:
            from quiesce.hold.trace import clear_trace

            proto.consume_result(rundir)
            clear_trace(rundir)
            result["collected_from"] = "result-file"
            return result
        # A guardian may still be recovering (it holds the lock until the result is written).
        if not proto.lock_held(rundir) or time.monotonic() > give_up:
            return None
        time.sleep(0.1)


def _died(rundir: str) -> dict[str, Any] | None:
    """The outcome of a hold whose holder and guardian both died without reporting: its trace
    is all that is left. Reported as lost (and recorded, when the state dir is known)."""
    from quiesce.hold.trace import clear_trace, read_trace

    trace = read_trace(rundir)
    if trace is None or proto.lock_held(rundir):
        return None
    pid = trace.get("holder_pid")
    message = (f"the holder (pid {pid}) of run {trace.get('run_id')} died while it was "
               f"{trace.get('state')} and left no result (its guardian died too): every "
               "lock ended with it, so the snapshot may NOT be application-consistent")
    outcome: dict[str, Any] = {
        "ok": True, "state": "lost", "consistent": False, "message": message,
        "run_id": trace.get("run_id"), "holder_pid": pid, "config": trace.get("config"),
        "since": trace.get("since"), "until": trace.get("until"), "released_at": None,
        "instances": [], "collected_from": "hold-trace"}
    outcome["record"] = _record_lost(trace, outcome)
    clear_trace(rundir)
    return outcome


def _record_lost(trace: dict[str, Any], outcome: dict[str, Any]) -> str | None:
    from quiesce.errors import QuiesceError
    from quiesce.hold.records import RunRecord, valid_run_id, write_record

    state_dir, run_id = trace.get("state_dir"), str(trace.get("run_id"))
    if not isinstance(state_dir, str) or not valid_run_id(run_id):
        return None
    record = RunRecord(
        run_id=run_id, state=outcome["state"], consistent=False, message=outcome["message"],
        config=outcome["config"], holder_pid=trace.get("holder_pid"),
        started_at=trace.get("started_at"), since=outcome["since"], until=outcome["until"],
        instances=outcome["instances"],
        log=["written by 'quiesce post' from the hold trace: the holder left none"])
    try:
        return write_record(state_dir, record)
    except (OSError, QuiesceError):
        return None


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
            if ("\n" in text or len(text) > 100) and outcome.get("record"):
                text = f"<{len(text)} characters, in the run record>"
            elif "\n" in text:
                # No record on disk: this output is the only copy, so show it whole.
                text = "\n" + "\n".join(f"      {line}" for line in text.splitlines())
            print(f"    {key}: {text}", file=stream)
    if outcome.get("record"):
        print(f"  record: {outcome['record']}", file=stream)
    if outcome.get("record_error"):
        print(f"  RECORD NOT WRITTEN: {outcome['record_error']}", file=sys.stderr)


def _aftercare(outcome: dict[str, Any], metrics_file: str | None) -> None:
    """After the release: hand the record to ``record_command``, log one event, write the
    metrics file. Their failures are reported, never change the outcome's consistency."""
    from quiesce import journal
    from quiesce.errors import QuiesceError

    settings = None
    config = outcome.get("config")
    if isinstance(config, str) and (outcome.get("record") or metrics_file):
        from quiesce.settings import load_core_settings

        try:
            settings = load_core_settings(config)
        except QuiesceError as exc:
            outcome.setdefault("warnings", []).append(
                f"cannot read {config} after the release, so record_command and the metrics "
                f"were skipped: {exc}")
    record = outcome.get("record")
    if settings is not None and settings.record_command and isinstance(record, str):
        from quiesce.hold.records import ship_record

        outcome["record_command"] = ship_record(settings.record_command,
                                                settings.record_command_timeout_seconds,
                                                record, str(outcome.get("run_id")))
    consistent = outcome.get("consistent") is True
    journal.log_event("post", str(outcome.get("state") or "released"),
                      str(outcome.get("message")), priority=journal.priority_for(consistent),
                      run_id=outcome.get("run_id"), consistent=consistent, record=record,
                      collected_from=outcome.get("collected_from"),
                      record_error=outcome.get("record_error"),
                      record_command_error=(outcome.get("record_command") or {}).get("error"))
    if metrics_file:
        from quiesce.hold import health

        state_dir = settings.state_dir if settings is not None else None
        try:
            records = health.read_records(state_dir) if state_dir else []
            health.write_metrics(metrics_file,
                                 health.metrics_text(health.assess(records)))
        except OSError as exc:
            outcome.setdefault("warnings", []).append(
                f"cannot write the metrics file {metrics_file}: {exc}")


def _print_aftercare(outcome: dict[str, Any], as_json: bool) -> None:
    if as_json:
        return
    shipped = outcome.get("record_command")
    if shipped is not None:
        if shipped.get("ok"):
            print(f"  record handed to {shipped['command'][0]}", file=sys.stdout)
        else:
            print(f"  RECORD NOT HANDED OVER: {' '.join(shipped['command'])}: "
                  f"{shipped.get('error')}", file=sys.stderr)
            for line in str(shipped.get("output") or "").splitlines()[-10:]:
                print(f"    {line}", file=sys.stderr)
    for warning in outcome.get("warnings") or []:
        print(f"  warning: {warning}", file=sys.stderr)
