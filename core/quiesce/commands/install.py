"""``quiesce install <agent>``: install quiesce as a snapshot agent's pre/post hook.

Agents: ``azure`` (Azure VM Backup), ``qemu-ga`` (QEMU guest agent), ``vmware`` (VMware Tools),
``gce`` (Compute Engine guest-flush), ``aws`` (Data Lifecycle Manager); docs/platforms.md says
what each needs. Every install also writes the quiesce.toml skeleton when none exists and a
manifest of what it wrote (``/var/lib/quiesce/installed/<agent>.json``).

Exit status: 0 installed (or already up to date, or --dry-run); 2 an existing file differs and
--force was not given (nothing written), or another error.
"""

from __future__ import annotations

import argparse

AGENT_HELP = ("azure: Azure VM Backup; qemu-ga: QEMU guest agent (KVM, Proxmox, OpenStack); "
              "vmware: VMware Tools; gce: Compute Engine guest-flush; aws: Data Lifecycle "
              "Manager")


def configure(parser: argparse.ArgumentParser) -> None:
    from quiesce.callers.install import AGENTS

    parser.add_argument("target", choices=AGENTS, metavar="AGENT",
                        help=f"the snapshot agent to install for ({AGENT_HELP})")
    parser.add_argument("--plugins", metavar="NAME,...",
                        help="engines to put in the quiesce.toml skeleton (default: every "
                             "installed engine)")
    parser.add_argument("--prefix", metavar="DIR", default="/",
                        help="install into the tree DIR as if it were / (azure: paths inside "
                             "the files follow the prefix)")
    parser.add_argument("--max-hold-seconds", type=int, metavar="N", default=None,
                        help="max_hold_seconds for the skeleton; for azure it also sizes "
                             "timeoutInSeconds (default: 300)")
    parser.add_argument("--deadline", type=float, metavar="SECONDS", default=None,
                        help="pre's deadline, for agents whose own limit the guest cannot see "
                             "(qemu-ga: default 30; aws: default 50, sizes ExecutionTimeout; "
                             "vmware and gce: default from the agent's timeout)")
    parser.add_argument("--quiesce", metavar="PATH", default=None,
                        help="the quiesce executable the hooks run, as seen inside the tree "
                             "(default: this one; needed under --prefix when it lives "
                             "elsewhere there)")
    parser.add_argument("--hook", choices=["hook.d", "direct"], default=None,
                        help="qemu-ga only: a script in fsfreeze-hook.d run by the default "
                             "hook (default; a failed pre does not stop the freeze), or the "
                             "agent's own hook (a failed pre refuses the freeze)")
    parser.add_argument("--dry-run", action="store_true",
                        help="show what would be written, write nothing")
    parser.add_argument("--force", action="store_true",
                        help="replace differing files, keeping a timestamped backup of each")


def main(args: argparse.Namespace) -> int:
    import math

    from quiesce.callers.install import adapter, base
    from quiesce.errors import QuiesceError
    from quiesce.settings import DEFAULT_MAX_HOLD, MAX_HOLD_LIMIT, parse_plugin_list

    agent = getattr(args, "target", "azure")
    max_hold = args.max_hold_seconds if args.max_hold_seconds is not None else DEFAULT_MAX_HOLD
    if not 1 <= max_hold <= MAX_HOLD_LIMIT:
        raise QuiesceError(f"--max-hold-seconds {max_hold} is out of range",
                           hint=f"use 1..{MAX_HOLD_LIMIT}")
    deadline = getattr(args, "deadline", None)
    if deadline is not None and not (math.isfinite(deadline) and 0 < deadline <= 1800):
        raise QuiesceError(f"--deadline {deadline:g} is not a number of seconds in 1..1800",
                           hint="give the agent's limit less a margin, e.g. --deadline 30")
    hook = getattr(args, "hook", None)
    if hook is not None and agent != "qemu-ga":
        raise QuiesceError("--hook applies to qemu-ga only",
                           hint=f"drop --hook from 'quiesce install {agent}'")
    if deadline is not None and agent == "azure":
        raise QuiesceError("--deadline does not apply to azure: 'quiesce pre' reads "
                           "timeoutInSeconds from the Azure config at every backup",
                           hint="drop --deadline; size the Azure timeout with "
                                "--max-hold-seconds")
    if getattr(args, "quiesce", None) is not None and agent == "azure":
        raise QuiesceError("--quiesce does not apply to azure: its wrappers run this quiesce, "
                           "by its path on this machine",
                           hint="run 'quiesce install azure' from the quiesce the wrappers "
                                "should run")
    module = adapter(agent)
    ctx = base.Context(agent, args.prefix, parse_plugin_list(args.plugins), max_hold,
                       args.force, deadline, getattr(args, "quiesce", None),
                       {"hook": hook})
    (module.resolve if hasattr(module, "resolve") else base.resolve)(ctx)
    if ctx.unsafe:
        # The hooks run as root at every backup: whoever can replace what they exec owns
        # the machine. Refused like the Azure extension refuses a script others can write.
        raise QuiesceError(
            f"the hooks would run {ctx.command[0]}, which users other than root can replace: "
            + "; ".join(ctx.unsafe),
            hint="install quiesce where only root can write (e.g. a root-owned venv under "
                 "/opt with mode 755 directories; never under /tmp, /var/tmp or /dev/shm, "
                 f"sticky or not), then run 'quiesce install {agent}' from it")
    plan = module.make_plan(ctx)
    if args.dry_run:
        for planned in plan.files:
            print(f"== {planned.path} (mode {planned.display_mode}): would "
                  f"{_verb(planned.action)}")
            if planned.action not in (base.UNCHANGED, base.KEEP):
                print(planned.content.decode(), end="")
        print(f"== manifest {base.manifest_path(plan.prefix, agent)}: would write it")
        for note in plan.notes:
            print(f"then: {note}")
        return 2 if any(f.action == base.CONFLICT for f in plan.files) else 0
    try:
        manifest = base.apply(plan)
    except base.InstallConflict:
        for planned in plan.files:
            print(f"  {planned.action:<9} {planned.path}")
        raise
    for planned in plan.files:
        line = f"  {_done(planned.action):<9} {planned.path} ({planned.display_mode})"
        if planned.backup:
            line += f"; previous version kept as {planned.backup}"
        if planned.action == base.KEEP:
            line += ("; existing configuration kept (--force replaces it with the skeleton)"
                     if planned.keep_existing else
                     "; the agent's existing configuration is never replaced")
        print(line)
    print(f"  manifest  {manifest}")
    for note in plan.notes:
        print(f"next: {note}")
    return 0


def _verb(action: str) -> str:
    return {"create": "create it", "unchanged": "leave it unchanged",
            "replace": "replace it (keeping a backup)", "fix-mode": "fix its owner/mode",
            "keep": "keep the existing configuration",
            "conflict": "REFUSE: it differs (use --force to replace it)"}[action]


def _done(action: str) -> str:
    return {"create": "created", "unchanged": "unchanged", "replace": "replaced",
            "fix-mode": "fixed", "keep": "kept"}.get(action, action)
