"""``quiesce run``: one whole backup cycle of the Azure pre/post-script contract.

Exit status: 0 snapshot taken and application-consistent with no error; 1 snapshot taken but
degraded, or a post-script error; 2 no snapshot (including invalid configuration).
The run log (script output included) goes to stderr; the report or ``--json`` to stdout.

Without ``--freeze-mount``, a run freezes every freezable local filesystem, ``/`` included:
what a real backup of the machine needs, and a surprise during a rehearsal. So outside a real
Azure VM Backup environment (:func:`quiesce.callers.runner.real_azure_environment`) it is
refused (exit 2, nothing run) unless ``--freeze-all`` says so; ``--dry-run`` prints the plan,
the freeze set included, and runs nothing (exit 0 when a run would be accepted, 2 otherwise).

After the cycle (the thaw and the post-script are over), each phase is logged as one journal
event (:mod:`quiesce.journal`), and ``--metrics-file`` writes a node-exporter textfile.
"""

from __future__ import annotations

import argparse
import math
from typing import Any

DEFAULT_CONFIG = "/etc/azure/VMSnapshotScriptPluginConfig.json"


def _seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of seconds") from None
    if not value > 0 or not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"{text!r} must be a positive number of seconds")
    return value


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", metavar="PATH", default=DEFAULT_CONFIG,
                        help=f"the Azure script config (default: {DEFAULT_CONFIG})")
    parser.add_argument("--json", action="store_true",
                        help="print the status as JSON on stdout instead of the report")
    parser.add_argument("--status-file", metavar="PATH",
                        help="also write the status JSON to PATH (atomically)")
    parser.add_argument("--snapshot-command", metavar="CMD",
                        help="command that takes the snapshot while frozen (split into words "
                             "like a shell, never run by one); gets QUIESCE_RUN_ID and "
                             "QUIESCE_FROZEN_MOUNTS. Default: none, an outside orchestrator "
                             "snapshots")
    parser.add_argument("--freeze-mount", metavar="PATH", action="append", dest="freeze_mounts",
                        help="freeze only this mount point (repeatable); default: every "
                             "freezable local filesystem")
    parser.add_argument("--freeze-timeout", metavar="SECONDS", type=_seconds, default=60.0,
                        help="the watchdog thaws everything after this long (default: 60)")
    parser.add_argument("--freeze-all", action="store_true",
                        help="consent to freeze every freezable local filesystem, / included, "
                             "when no --freeze-mount is given (implied on a real Azure VM "
                             "Backup machine)")
    parser.add_argument("--dry-run", action="store_true",
                        help="validate and print what would run and be frozen; run nothing")
    parser.add_argument("--metrics-file", metavar="PATH",
                        help="after the run, write a Prometheus node-exporter textfile "
                             "(atomically) with this run's outcome and timings")


def main(args: argparse.Namespace) -> int:
    import sys

    from quiesce.callers.report import human_report
    from quiesce.callers.runner import RunOptions, real_azure_environment, run

    freeze_all = bool(args.freeze_all) or real_azure_environment()
    if args.dry_run:
        return _dry_run(args, freeze_all)
    options = RunOptions(
        config_path=args.config,
        snapshot_command=args.snapshot_command,
        freeze_mounts=args.freeze_mounts,
        freeze_timeout=args.freeze_timeout,
        status_file=args.status_file,
        freeze_all=freeze_all,
    )
    status = run(options, log_stream=sys.stderr, install_signal_handlers=True)
    _journal(status)
    if args.metrics_file:
        from quiesce.hold.health import write_metrics

        try:
            write_metrics(args.metrics_file, metrics_text(status))
        except OSError as exc:
            status.notes.append(f"the metrics file {args.metrics_file} could not be written: "
                                f"{exc}")
    sys.stdout.write(status.to_json() if args.json else human_report(status))
    sys.stdout.flush()
    return status.exit_code


def _dry_run(args: argparse.Namespace, freeze_all: bool) -> int:
    """Validate like a run and print the plan; nothing is run or frozen."""
    import json
    import sys

    from quiesce.callers.runner import (
        FREEZE_CONSENT_HINT,
        check,
        format_check,
        freeze_consent_message,
    )

    result = check(args.config, args.freeze_mounts)
    freezing = bool(result.freeze_enabled) and not result.freeze_refused
    mounts = result.mounts if freezing else []
    refused = bool(mounts) and not args.freeze_mounts and not freeze_all
    ok = result.ok and not refused
    if args.json:
        print(json.dumps({
            "dry_run": True, "ok": ok, "config": args.config,
            "freeze": [{"mount_point": m.mount_point, "fstype": m.fstype, "source": m.source}
                       for m in mounts],
            "freeze_all_needed": refused, "snapshot_command": args.snapshot_command,
            "errors": [e.as_dict() for e in result.errors]}, indent=2))
        return 0 if ok else 2
    sys.stdout.write(format_check(result))
    print(f"snapshot: {args.snapshot_command or 'none here (an outside orchestrator snapshots)'}")
    if refused:
        print(f"REFUSED: {freeze_consent_message(mounts)}")
        print(f"  fix: {FREEZE_CONSENT_HINT}")
    print("dry run: nothing was run or frozen"
          + ("; 'quiesce run' with these options would go ahead" if ok else ""))
    return 0 if ok else 2


def _journal(status: Any) -> None:
    """One event per phase that ran, then the outcome; sent after the thaw and the
    post-script, never blocking (quiesce.journal)."""
    from quiesce import journal

    for phase in status.phases.values():
        if phase.status == "skipped" and phase.start is None:
            continue
        bad = phase.status not in ("ok", "disabled", "skipped")
        journal.log_event("run", phase.name, f"{phase.status}"
                          + (f": {phase.detail}" if phase.detail else ""),
                          priority=journal.WARNING if bad else journal.INFO,
                          run_id=status.run_id, status=phase.status,
                          duration_ms=phase.duration_ms, attempts=phase.attempts or None)
    consistent = status.exit_code == 0
    journal.log_event("run", "done", f"consistency {status.consistency}, snapshot "
                      f"{'taken' if status.snapshot_taken else 'NOT taken'}, exit "
                      f"{status.exit_code}", priority=journal.priority_for(consistent),
                      run_id=status.run_id, consistency=status.consistency,
                      snapshot_taken=status.snapshot_taken, exit_code=status.exit_code,
                      freeze_window_ms=status.freeze.get("window_ms"),
                      errors="; ".join(f"{e.code}: {e.message}" for e in status.errors)
                      or None)


def metrics_text(status: Any) -> str:
    """This run as a node-exporter textfile: outcome, freeze window and phase durations."""
    lines: list[str] = []

    def gauge(name: str, help_text: str, samples: list[tuple[str, float]]) -> None:
        lines.extend([f"# HELP {name} {help_text}", f"# TYPE {name} gauge"])
        lines.extend(f"{name}{labels} {value:.6g}" for labels, value in samples)

    gauge("quiesce_run_last_exit_code", "exit status of the last 'quiesce run' (0 consistent, "
          "1 degraded, 2 no snapshot)", [("", status.exit_code)])
    gauge("quiesce_run_last_consistent", "1 when the last run's snapshot is "
          "application-consistent", [("", 1 if status.exit_code == 0 else 0)])
    gauge("quiesce_run_last_snapshot_taken", "1 when the last run took a snapshot",
          [("", 1 if status.snapshot_taken else 0)])
    if status.finished_at is not None:
        gauge("quiesce_run_last_timestamp_seconds", "when the last run finished",
              [("", status.finished_at)])
    window = status.freeze.get("window_ms")
    if window is not None:
        gauge("quiesce_run_last_freeze_window_seconds", "how long the filesystems were frozen",
              [("", window / 1000)])
    phases = [(f'{{phase="{p.name}"}}', p.duration_ms / 1000)
              for p in status.phases.values() if p.duration_ms is not None]
    if phases:
        gauge("quiesce_run_last_phase_seconds", "duration of each phase of the last run",
              phases)
    gauge("quiesce_run_last_watchdog_fired", "1 when the freeze watchdog had to thaw",
          [("", 1 if status.freeze.get("watchdog_fired") else 0)])
    return "\n".join(lines) + "\n"
