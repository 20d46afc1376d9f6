"""``quiesce install qemu-ga``: quiesce as the QEMU guest agent's fsfreeze hook (KVM, Proxmox,
OpenStack, libvirt).

The agent runs its hook with ``freeze`` before FIFREEZE and ``thaw`` after FITHAW, only when
the hook is enabled (``-F`` on its command line, or ``fsfreeze-hook`` in the ``[general]``
group of ``/etc/qemu/qemu-ga.conf``; Debian's unit runs ``qemu-ga`` with neither). It has no
hook timeout: a hung hook blocks the agent, so the hook bounds ``quiesce pre`` with
``--deadline`` (``install --deadline``, default :data:`DEFAULT_DEADLINE`).

Two ways to hook in (``--hook``):

- ``hook.d`` (default): ``/etc/qemu/fsfreeze-hook.d/quiesce``, run by the distro's default
  hook ``/etc/qemu/fsfreeze-hook`` beside any other script there. That hook logs each script's
  output to ``/var/log/qga-fsfreeze-hook.log`` and **always exits 0**: when ``quiesce pre``
  fails the agent freezes anyway and the snapshot is crash-consistent only. The failure is then
  in the run record (``state_dir/runs``), in ``quiesce status`` until the thaw, in ``quiesce
  post``'s output at the thaw, and in that log, where the hook writes a FAILED line.
- ``direct``: ``/etc/qemu/quiesce-fsfreeze-hook`` given to the agent as its hook. A failing
  ``pre`` makes the agent answer an error and freeze nothing: no snapshot of the moment rather
  than a crash-consistent one. Other hook.d scripts then no longer run. The hook appends its
  output to the same log itself.

Writes ``/etc/qemu/qemu-ga.conf`` with ``fsfreeze-hook`` only when no such file exists (the
agent's own configuration is never replaced: ``quiesce check`` says whether the hook is on).
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

from quiesce.callers.install import base
from quiesce.callers.install.base import Context, Plan, PlannedFile

if TYPE_CHECKING:
    from quiesce.callers.install.checking import AgentCheck

NAME = "qemu-ga"
TITLE = "QEMU guest agent"
HOOK_D = "/etc/qemu/fsfreeze-hook.d/quiesce"
DIRECT_HOOK = "/etc/qemu/quiesce-fsfreeze-hook"
DEFAULT_HOOK = "/etc/qemu/fsfreeze-hook"
AGENT_CONF = "/etc/qemu/qemu-ga.conf"
AGENT_LOG = "/var/log/qga-fsfreeze-hook.log"
HOOK_MODES = ("hook.d", "direct")
#: pre's deadline when --deadline is not given: the agent itself never gives up.
DEFAULT_DEADLINE = 30.0


def hook_path(mode: str) -> str:
    return HOOK_D if mode == "hook.d" else DIRECT_HOOK


def agent_hook(mode: str) -> str:
    """The hook the agent itself runs (what -F / fsfreeze-hook must name)."""
    return DEFAULT_HOOK if mode == "hook.d" else DIRECT_HOOK


def hook_script(mode: str, command: list[str], guard: list[str], toml: str,
                deadline: float) -> bytes:
    name = "quiesce-qemu-ga"
    if mode == "hook.d":
        frozen_anyway = ("qemu-ga's default hook ignores this status and freezes anyway, so "
                         "this snapshot is NOT application-consistent; 'quiesce status' and "
                         "the run record say why")
        prologue = ""
    else:
        frozen_anyway = ("qemu-ga refuses the freeze, so no snapshot is taken with the "
                         "guest's help now; 'quiesce status' and the run record say why")
        # The agent does not keep a direct hook's output: keep it where the default hook does.
        prologue = f"exec >>{AGENT_LOG} 2>&1\necho \"$(date): quiesce hook $*\"\n"
    pre = base.quoted([*command, "pre", "--config", toml, "--deadline", f"{deadline:g}"])
    post = base.quoted([*command, "post", "--config", toml])
    body = (
        prologue
        + 'case "${1:-}" in\n'
        + "freeze)\n"
        + f"    {pre}\n"
        + base.fail_loudly(name, "quiesce pre", frozen_anyway)
        + '    exit "$status"\n'
        + "    ;;\n"
        + "thaw)\n"
        + f"    {post}\n"
        + base.fail_loudly(name, "quiesce post", "the snapshot taken while frozen may NOT be "
                           "application-consistent (see the lines above and the run record)")
        + '    exit "$status"\n'
        + "    ;;\n"
        + "*)\n"
        + f'    echo "{name}: unknown argument \'${{1:-}}\' (qemu-ga passes freeze or thaw)" >&2\n'
        + "    exit 2\n"
        + "    ;;\n"
        + "esac\n")
    about = ["qemu-ga runs it with 'freeze' before FIFREEZE and 'thaw' after FITHAW"
             + (" through its default hook (fsfreeze-hook.d)." if mode == "hook.d" else
                " as its own hook (-F / fsfreeze-hook)."),
             f"'quiesce pre' must hold everything within {deadline:g} s or nothing: qemu-ga "
             "has no hook timeout."]
    return base.hook_text(agent=NAME, name=name, title="QEMU guest agent fsfreeze hook",
                          about=about, guard=guard, body=body)


def agent_conf(mode: str) -> bytes:
    return ("# qemu-ga configuration, written by 'quiesce install qemu-ga' (none existed).\n"
            "# fsfreeze-hook: the hook run around guest-fsfreeze-freeze and -thaw.\n"
            "[general]\n"
            f"fsfreeze-hook={agent_hook(mode)}\n").encode()


def make_plan(ctx: Context) -> Plan:
    mode = str(ctx.options.get("hook") or "hook.d")
    if mode not in HOOK_MODES:
        from quiesce.errors import QuiesceError

        raise QuiesceError(f"--hook {mode!r} is not a qemu-ga hook mode",
                           hint="use --hook hook.d (default) or --hook direct")
    deadline = ctx.deadline if ctx.deadline is not None else DEFAULT_DEADLINE
    toml = base.skeleton_file(ctx)
    hook = PlannedFile(base.join(ctx.prefix, hook_path(mode)),
                       hook_script(mode, ctx.command, ctx.guard, toml.tree_path, deadline),
                       0o700, inner=hook_path(mode),
                       backup_dir=base.join(ctx.prefix, "/" + base.BACKUP_DIR))
    conf = PlannedFile(base.join(ctx.prefix, AGENT_CONF), agent_conf(mode), 0o644,
                       inner=AGENT_CONF, never_replace=True)
    files = [hook, conf, toml]
    base.classify_all(files, ctx.force)
    notes = []
    if mode == "hook.d" and not os.path.isfile(base.join(ctx.prefix, DEFAULT_HOOK)):
        notes.append(f"{DEFAULT_HOOK} is missing: it is the distro's default hook that runs "
                     "fsfreeze-hook.d; install the qemu-guest-agent package (or use --hook "
                     "direct)")
    if conf.action == base.KEEP:
        found = hook_setting(base.join(ctx.prefix, AGENT_CONF))
        if found != agent_hook(mode):
            notes.append(f"{AGENT_CONF} exists and was left alone: set 'fsfreeze-hook="
                         f"{agent_hook(mode)}' in its [general] group (or run qemu-ga with "
                         f"-F{agent_hook(mode)})")
    notes.append("restart qemu-guest-agent so that it reads the hook setting")
    notes.append(f"pre's deadline is {deadline:g} s (qemu-ga has no hook timeout; 'install "
                 "--deadline' sets it); failures are logged to "
                 f"{AGENT_LOG}" + (", and the freeze goes ahead without the database lock"
                                   if mode == "hook.d" else ", and the freeze is refused"))
    notes.append(f"describe your databases in {toml.tree_path}, then run 'quiesce check "
                 "--agent qemu-ga'")
    return Plan(NAME, ctx.prefix, files, dir_modes={"etc/qemu": 0o755,
                                                      "etc/qemu/fsfreeze-hook.d": 0o755},
                notes=notes, deadline=deadline)


def hook_setting(path: str) -> str | None:
    """``fsfreeze-hook`` of a qemu-ga.conf ([general] group), None when unset or unreadable.
    An empty value means the default hook, as for a bare ``-F``."""
    general = base.ini_group(path, "general")
    if general is None or "fsfreeze-hook" not in general:
        return None
    return general["fsfreeze-hook"].strip() or DEFAULT_HOOK


def check(prefix: str = "/") -> AgentCheck:
    """``quiesce check --agent qemu-ga``: the hook (hook.d or direct, whichever is installed),
    that the agent runs hooks at all, and the deadline (qemu-ga has no limit of its own)."""
    from quiesce.callers.install import checking

    report = checking.AgentCheck(NAME, prefix)
    modes = [m for m in HOOK_MODES if os.path.lexists(base.join(prefix, hook_path(m)))]
    mode = modes[0] if modes else "hook.d"
    if len(modes) > 1:
        report.notes.append(f"both {HOOK_D} and {DIRECT_HOOK} exist: with the hook setting "
                            "below only one of them runs")
    checking.standard(report, hook_path(mode))
    if mode == "hook.d":
        default = base.join(prefix, DEFAULT_HOOK)
        if not (os.path.isfile(default) and os.access(default, os.X_OK)):
            report.problem(checking.SWITCH_CODE, f"{DEFAULT_HOOK} (the distro's default hook, "
                           "which runs fsfreeze-hook.d) is missing or not executable",
                           "install the qemu-guest-agent package, or 'quiesce install "
                           "qemu-ga --hook direct'")
    conf = base.join(prefix, AGENT_CONF)
    setting = hook_setting(conf)
    wanted = agent_hook(mode)
    if setting == wanted:
        report.checked.append(("agent switch", f"fsfreeze-hook={wanted} in {AGENT_CONF}"))
    elif setting is not None:
        report.problem(checking.SWITCH_CODE, f"{AGENT_CONF} sets fsfreeze-hook={setting}, "
                       f"so qemu-ga does not run {hook_path(mode)}",
                       f"set fsfreeze-hook={wanted} in its [general] group and restart "
                       "qemu-guest-agent")
    else:
        report.checked.append(("agent switch", "not in qemu-ga.conf (see the warning below)"))
        report.notes.append(f"WARNING: {AGENT_CONF} does not enable the hook; qemu-ga runs it "
                            f"only if started with -F{'' if mode == 'hook.d' else wanted} "
                            f"(Debian's unit does not): set fsfreeze-hook={wanted} in its "
                            "[general] group")
    if report.deadline is not None:
        report.checked.append(("deadline", f"pre's deadline {report.deadline:g} s (set by "
                               "'install --deadline'; qemu-ga has no hook timeout of its own)"))
    report.checked.append(("on failure", "the freeze goes ahead without the database lock; "
                           f"logged to {AGENT_LOG}" if mode == "hook.d" else
                           "qemu-ga refuses the freeze"))
    return report
