"""``quiesce check``: validate the installed snapshot-agent hooks, running nothing.

Azure (the default when no other agent is installed, or with ``--config``): validates the
Azure config, its scripts and the mounts, and prints the filesystems a run would freeze
(limited, like ``quiesce run``, by ``--freeze-mount``). When the scripts are quiesce wrappers
(``quiesce install azure``), the quiesce.toml that ``quiesce pre`` would load is validated too
(see :mod:`quiesce.callers.check_hold`), and whether systemd can give the holder, guardian and
freeze watchdog a scope of their own here (see :mod:`quiesce.scope`).

Other agents (``--agent qemu-ga|vmware|gce|aws``, or every agent whose install manifest is
found under ``--prefix``): the hook (present, root-owned, executable, not writable by others),
the quiesce it runs, the quiesce.toml ``pre`` would load, the agent's switch, and ``pre``'s
deadline against the agent's own timeout (see :mod:`quiesce.callers.install.checking`).

Prints every problem with its code and how to fix it. Exit 0 when all is well, 2 otherwise.
"""

from __future__ import annotations

import argparse

DEFAULT_CONFIG = "/etc/azure/VMSnapshotScriptPluginConfig.json"


def configure(parser: argparse.ArgumentParser) -> None:
    from quiesce.callers.install import AGENTS

    parser.add_argument("--config", metavar="PATH", default=None,
                        help=f"the Azure script config (default: {DEFAULT_CONFIG})")
    parser.add_argument("--agent", metavar="AGENT", action="append", dest="agents",
                        choices=AGENTS,
                        help=f"check this agent's hooks ({', '.join(AGENTS)}; repeatable); "
                             "default: every agent installed (its manifest under "
                             "/var/lib/quiesce/installed), else azure")
    parser.add_argument("--prefix", metavar="DIR", default="/",
                        help="check an installation made with 'install --prefix DIR'")
    parser.add_argument("--freeze-mount", metavar="PATH", action="append", dest="freeze_mounts",
                        help="check only this mount point, as `quiesce run --freeze-mount` "
                             "would freeze it (repeatable); default: every freezable local "
                             "filesystem")


def agents_to_check(args: argparse.Namespace) -> list[str]:
    from quiesce.callers.install.base import installed_agents

    agents = list(dict.fromkeys(getattr(args, "agents", None) or []))
    if not agents:
        installed = installed_agents(getattr(args, "prefix", "/") or "/")
        agents = installed if any(a != "azure" for a in installed) else ["azure"]
    if getattr(args, "config", None) and "azure" not in agents:
        agents.insert(0, "azure")
    return agents


def main(args: argparse.Namespace) -> int:
    import sys

    ok = True
    for agent in agents_to_check(args):
        if agent == "azure":
            ok = _check_azure(args) and ok
            continue
        from quiesce.callers.install import adapter, checking

        report = adapter(agent).check(getattr(args, "prefix", "/") or "/")
        sys.stdout.write(checking.render(report))
        ok = report.ok and ok
    return 0 if ok else 2


def _check_azure(args: argparse.Namespace) -> bool:
    import sys

    from quiesce.callers.check_hold import check_hold, merge_into
    from quiesce.callers.runner import check, format_check
    from quiesce.scope import check_note

    config = args.config
    if config is None:
        from quiesce.callers.install.base import is_root_prefix, join

        prefix = getattr(args, "prefix", "/") or "/"
        config = DEFAULT_CONFIG if is_root_prefix(prefix) else join(prefix, DEFAULT_CONFIG)
    result = check(config, args.freeze_mounts)
    merge_into(result, check_hold(result.config, config))
    # A fact about this machine, not a problem nor a note on the config: a line of its own.
    result.checked.append(("helpers' cgroup", check_note()))
    sys.stdout.write(format_check(result))
    return bool(result.ok)
