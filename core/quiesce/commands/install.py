"""``quiesce install azure``: install quiesce as Azure VM Backup's pre/post scripts.

Exit status: 0 installed (or already up to date, or --dry-run); 2 an existing file differs and
--force was not given (nothing written), or another error.
"""

from __future__ import annotations

import argparse


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("target", choices=["azure"],
                        help="what to install for (only 'azure' for now)")
    parser.add_argument("--plugins", metavar="NAME,...",
                        help="engines to put in the quiesce.toml skeleton (default: every "
                             "installed engine)")
    parser.add_argument("--prefix", metavar="DIR", default="/",
                        help="install under DIR instead of / (paths inside the files follow)")
    parser.add_argument("--max-hold-seconds", type=int, metavar="N", default=None,
                        help="max_hold_seconds for the skeleton; also sizes timeoutInSeconds "
                             "(default: 300)")
    parser.add_argument("--dry-run", action="store_true",
                        help="show what would be written, write nothing")
    parser.add_argument("--force", action="store_true",
                        help="replace differing files, keeping a timestamped backup of each")


def main(args: argparse.Namespace) -> int:
    from quiesce.callers import azure_install as inst
    from quiesce.errors import QuiesceError
    from quiesce.settings import DEFAULT_MAX_HOLD, MAX_HOLD_LIMIT, parse_plugin_list

    max_hold = args.max_hold_seconds if args.max_hold_seconds is not None else DEFAULT_MAX_HOLD
    if not 1 <= max_hold <= MAX_HOLD_LIMIT:
        raise QuiesceError(f"--max-hold-seconds {max_hold} is out of range",
                           hint=f"use 1..{MAX_HOLD_LIMIT}")
    files = inst.plan(args.prefix, parse_plugin_list(args.plugins), force=args.force,
                      max_hold=max_hold)
    command = inst.quiesce_command()
    unsafe = inst.command_problems(command)
    if unsafe:
        # The wrappers run as root at every backup: whoever can replace what they exec owns
        # the machine. Refused like the Azure extension refuses a script others can write.
        raise QuiesceError(
            f"the wrappers would run {command[0]}, which users other than root can replace: "
            + "; ".join(unsafe),
            hint="install quiesce where only root can write (e.g. a root-owned venv under "
                 "/opt with mode 755 directories; never under /tmp, /var/tmp or /dev/shm, "
                 "sticky or not), then run 'quiesce install azure' from it")
    if args.dry_run:
        for planned in files:
            print(f"== {planned.path} (mode {planned.display_mode}): would "
                  f"{_verb(planned.action)}")
            if planned.action not in (inst.UNCHANGED, inst.KEEP):
                print(planned.content.decode(), end="")
        return 2 if any(f.action == inst.CONFLICT for f in files) else 0
    try:
        inst.apply(files)
    except inst.InstallConflict:
        for planned in files:
            print(f"  {planned.action:<9} {planned.path}")
        raise
    for planned in files:
        line = f"  {_done(planned.action):<9} {planned.path} ({planned.display_mode})"
        if planned.backup:
            line += f"; previous version kept as {planned.backup}"
        if planned.action == inst.KEEP:
            line += "; existing configuration kept (--force replaces it with the skeleton)"
        print(line)
    toml = next(f.path for f in files if f.path.endswith(inst.QUIESCE_TOML))
    config = next(f.path for f in files if f.path.endswith(inst.AZURE_CONFIG))
    print(f"next: describe your databases in {toml}, then check with 'quiesce check --config "
          f"{config}' and try 'quiesce pre' / 'quiesce post' by hand once")
    return 0


def _verb(action: str) -> str:
    return {"create": "create it", "unchanged": "leave it unchanged",
            "replace": "replace it (keeping a backup)", "fix-mode": "fix its owner/mode",
            "keep": "keep the existing configuration",
            "conflict": "REFUSE: it differs (use --force to replace it)"}[action]


def _done(action: str) -> str:
    return {"create": "created", "unchanged": "unchanged", "replace": "replaced",
            "fix-mode": "fixed", "keep": "kept"}.get(action, action)
