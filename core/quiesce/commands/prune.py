"""``quiesce prune``: remove run records older than ``keep_days``.

A record is the only copy of its snapshot's metadata (PostgreSQL's backup_label, binlog
coordinates, oplog time) and no snapshot contains its own record, so records must be kept at
least as long as the snapshots are: ``keep_days`` (quiesce.toml) or ``--keep-days`` must be at
least the snapshots' retention. The newest record is always kept. Exit 0 on success (even when
nothing was old enough), 2 when nothing says how long to keep records or the state dir is
unsafe.
"""

from __future__ import annotations

import argparse
import json

DEFAULT_PATH = "/etc/quiesce/quiesce.toml"


def _days(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number of days") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text!r} must be at least 1 day")
    return value


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", default=DEFAULT_PATH,
                        help="quiesce.toml with state_dir and keep_days (default: %(default)s)")
    parser.add_argument("--keep-days", metavar="DAYS", type=_days,
                        help="keep records of the last DAYS days (overrides keep_days); at "
                             "least as long as your snapshots are kept")
    parser.add_argument("--state-dir", metavar="DIR",
                        help="the state dir to prune (overrides the config's state_dir)")
    parser.add_argument("--dry-run", action="store_true",
                        help="list what would be removed, remove nothing")
    parser.add_argument("--json", action="store_true", help="print the result as JSON")


def main(args: argparse.Namespace) -> int:
    from quiesce import journal
    from quiesce.errors import QuiesceError
    from quiesce.hold.records import prune

    keep_days, state_dir = args.keep_days, args.state_dir
    if keep_days is None or state_dir is None:
        from quiesce.settings import load_core_settings

        settings = load_core_settings(args.config)
        keep_days = keep_days if keep_days is not None else settings.keep_days
        state_dir = state_dir or settings.state_dir
    if keep_days is None:
        raise QuiesceError(
            f"nothing says how long to keep run records: {args.config} sets no keep_days",
            hint="set keep_days in quiesce.toml (or pass --keep-days) to at least the number "
                 "of days your snapshots are kept: a record is the only copy of its "
                 "snapshot's backup_label")
    removed, kept = prune(state_dir, keep_days, dry_run=args.dry_run)
    if not args.dry_run and removed:
        journal.log_event("prune", "pruned", f"removed {len(removed)} run record(s) older "
                          f"than {keep_days} days from {state_dir}", state_dir=state_dir,
                          removed=len(removed), kept=len(kept), keep_days=keep_days)
    if args.json:
        print(json.dumps({"state_dir": state_dir, "keep_days": keep_days,
                          "dry_run": args.dry_run, "removed": removed, "kept": len(kept)},
                         indent=2))
        return 0
    verb = "would remove" if args.dry_run else "removed"
    print(f"quiesce prune: {verb} {len(removed)} run record(s) older than {keep_days} days "
          f"from {state_dir}; {len(kept)} kept")
    for run_id in removed:
        print(f"  {run_id}")
    return 0
