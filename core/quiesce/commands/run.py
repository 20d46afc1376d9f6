"""``quiesce run``: one whole backup cycle of the Azure pre/post-script contract.

Exit status: 0 snapshot taken and application-consistent with no error; 1 snapshot taken but
degraded, or a post-script error; 2 no snapshot (including invalid configuration).
The run log (script output included) goes to stderr; the report or ``--json`` to stdout.
"""

from __future__ import annotations

import argparse
import math

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


def main(args: argparse.Namespace) -> int:
    import sys

    from quiesce.callers.report import human_report
    from quiesce.callers.runner import RunOptions, run

    options = RunOptions(
        config_path=args.config,
        snapshot_command=args.snapshot_command,
        freeze_mounts=args.freeze_mounts,
        freeze_timeout=args.freeze_timeout,
        status_file=args.status_file,
    )
    status = run(options, log_stream=sys.stderr, install_signal_handlers=True)
    sys.stdout.write(status.to_json() if args.json else human_report(status))
    sys.stdout.flush()
    return status.exit_code
