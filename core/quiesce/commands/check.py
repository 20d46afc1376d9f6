"""``quiesce check``: validate an Azure config, its scripts and the mounts, running nothing.

Prints every problem with its code and how to fix it, and the filesystems a run would freeze
(limited, like ``quiesce run``, by ``--freeze-mount``). When the scripts are quiesce wrappers
(``quiesce install azure``), the quiesce.toml that ``quiesce pre`` would load is validated too
(see :mod:`quiesce.callers.check_hold`), and whether systemd can give the holder, guardian and
freeze
watchdog a scope of their own here (see :mod:`quiesce.scope`). Exit 0 when all is well, 2
otherwise.
"""

from __future__ import annotations

import argparse

DEFAULT_CONFIG = "/etc/azure/VMSnapshotScriptPluginConfig.json"


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", metavar="PATH", default=DEFAULT_CONFIG,
                        help=f"the Azure script config (default: {DEFAULT_CONFIG})")
    parser.add_argument("--freeze-mount", metavar="PATH", action="append", dest="freeze_mounts",
                        help="check only this mount point, as `quiesce run --freeze-mount` "
                             "would freeze it (repeatable); default: every freezable local "
                             "filesystem")


def main(args: argparse.Namespace) -> int:
    import sys

    from quiesce.callers.check_hold import check_hold, merge_into
    from quiesce.callers.runner import check, format_check
    from quiesce.scope import check_note

    result = check(args.config, args.freeze_mounts)
    merge_into(result, check_hold(result.config, args.config))
    # A fact about this machine, not a problem nor a note on the config: a line of its own.
    result.checked.append(("helpers' cgroup", check_note()))
    sys.stdout.write(format_check(result))
    from quiesce import journal

    journal.log_event("check", "checked", "all good" if result.ok else
                      "; ".join(f"{e.code}: {e.message}" for e in result.errors),
                      priority=journal.INFO if result.ok else journal.WARNING,
                      config=args.config, problems=len(result.errors),
                      would_freeze=",".join(m.mount_point for m in result.mounts) or None)
    return 0 if result.ok else 2
