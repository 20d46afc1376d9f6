"""``quiesce restore-check``: check a restored PostgreSQL data directory before its first start.

    quiesce restore-check [--pg-bindir DIR] [--json] DATADIR

Reads only: nothing in DATADIR is changed. Prints each check and then what to do, in order
(docs/restore.md is the runbook). Exit 0 when nothing needs fixing, 1 when something does,
2 when DATADIR is not a stopped PostgreSQL data directory or the arguments are wrong.
"""

from __future__ import annotations

import argparse
import json

MARKS = {"ok": "ok     ", "problem": "PROBLEM", "note": "note   "}


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("data_dir", metavar="DATADIR",
                        help="the RESTORED PostgreSQL data directory (never a live one)")
    parser.add_argument("--pg-bindir", metavar="DIR",
                        help="where pg_waldump of the data directory's PostgreSQL version is "
                             "(default: /usr/lib/postgresql/N/bin, /usr/pgsql-N/bin, PATH)")
    parser.add_argument("--json", action="store_true", help="print the result as JSON")


def main(args: argparse.Namespace) -> int:
    from quiesce_postgresql.checklist import check_restored

    result = check_restored(args.data_dir, pg_bindir=args.pg_bindir)
    if args.json:
        print(json.dumps({"command": "restore-check", **result.as_dict()}, indent=2))
    else:
        print(f"restore-check {result.data_dir}")
        for item in result.items:
            print(f"  {MARKS.get(item.status, item.status)}  {item.name}: {item.text}")
        print("what to do, in order:")
        for n, step in enumerate(result.steps, 1):
            print(f"  {n}. {step}")
    return 1 if result.problems else 0
