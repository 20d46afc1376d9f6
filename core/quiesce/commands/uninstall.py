"""``quiesce uninstall <agent>``: remove exactly what ``quiesce install <agent>`` wrote.

Exit status 0 done (or, with ``--dry-run``, would be done); 2 refused: no manifest, a manifest
that cannot be trusted, or a file that changed since the install (then nothing is removed).
"""

from __future__ import annotations

import argparse
import json

AGENTS = ("azure", "qemu-ga", "vmware", "gce", "aws")


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("agent", choices=AGENTS, help="the snapshot agent to uninstall from")
    parser.add_argument("--prefix", metavar="DIR", default="/",
                        help="the tree 'install --prefix' wrote to (default: /)")
    parser.add_argument("--dry-run", action="store_true",
                        help="show what would be removed or restored, change nothing")
    parser.add_argument("--keep-changed", action="store_true",
                        help="leave the files that changed since the install (e.g. your "
                             "edited quiesce.toml) and remove the rest")
    parser.add_argument("--json", action="store_true", help="print the plan as JSON")


def main(args: argparse.Namespace) -> int:
    from quiesce import journal
    from quiesce.callers.uninstall import (
        CHANGED,
        GONE,
        LEAVE,
        RESTORE,
        apply_uninstall,
        plan_uninstall,
    )

    plan = plan_uninstall(args.prefix, args.agent)
    if not args.dry_run:
        # Raises, changing nothing, while a file changed (unless --keep-changed).
        apply_uninstall(plan, keep_changed=args.keep_changed)
        journal.log_event("uninstall", "removed", f"uninstalled {args.agent} from "
                          f"{args.prefix}", agent=args.agent, prefix=args.prefix,
                          files=len(plan.steps))
    if args.json:
        print(json.dumps({"agent": args.agent, "prefix": args.prefix, "dry_run": args.dry_run,
                          "manifest": plan.manifest,
                          "files": [{"path": s.path, "host_path": s.host, "action": s.action,
                                     "why": s.why or None, "backup": s.backup}
                                    for s in plan.steps]}, indent=2))
        return 2 if args.dry_run and plan.changed and not args.keep_changed else 0
    words = {"remove": ("would remove", "removed"), RESTORE: ("would restore", "restored"),
             LEAVE: ("would leave", "left"), GONE: ("already gone", "already gone"),
             CHANGED: ("CHANGED, would keep", "CHANGED, kept") if args.keep_changed
             else ("CHANGED, refused", "CHANGED, refused")}
    head = "quiesce uninstall" + (" --dry-run" if args.dry_run else "")
    print(f"{head} {args.agent}: manifest {plan.manifest}")
    for step in plan.steps:
        word = words[step.action][0 if args.dry_run else 1]
        print(f"  {word}: {step.host}" + (f" ({step.why})" if step.why else ""))
    print(f"  {'would remove' if args.dry_run else 'removed'}: {plan.manifest} (the manifest)")
    if args.dry_run and plan.changed and not args.keep_changed:
        print(f"  {len(plan.changed)} file(s) changed since the install: uninstall would "
              "refuse and remove nothing")
        return 2
    return 0
