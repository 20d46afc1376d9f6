"""``quiesce install gce``: quiesce as Compute Engine's guest-flush snapshot scripts.

For a snapshot taken with ``--guest-flush``, the Google guest agent runs
``/etc/google/snapshots/pre.sh`` before the snapshot and ``post.sh`` after it, each with one
argument (the list of the snapshot's disks), once snapshots are enabled in the agent's
instance configs (``/etc/default/instance_configs.cfg``, group ``[Snapshots]``: ``enabled =
true``). The agent kills a script after ``timeout_in_seconds`` (same group, default 60) and
reports a script that failed or timed out (exit 124) to the snapshot service.

The hooks run ``quiesce pre --deadline D`` (D: that timeout less :data:`MARGIN`, or
``--deadline``) and ``quiesce post``; the disk list is not needed (quiesce.toml says what to
hold). Writes instance_configs.cfg only when it is missing; an existing one is left alone and
``quiesce check`` says whether snapshots are enabled.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from quiesce.callers.install import base
from quiesce.callers.install.base import Context, Plan, PlannedFile

if TYPE_CHECKING:
    from quiesce.callers.install.checking import AgentCheck

NAME = "gce"
TITLE = "Compute Engine guest environment"
PRE = "/etc/google/snapshots/pre.sh"
POST = "/etc/google/snapshots/post.sh"
INSTANCE_CONFIGS = "/etc/default/instance_configs.cfg"
DEFAULT_TIMEOUT = 60
MARGIN = 5.0


def snapshot_settings(path: str) -> dict[str, str] | None:
    """The ``[Snapshots]`` keys of instance_configs.cfg ({} without the group), None when the
    file is missing or unreadable."""
    return base.ini_group(path, "Snapshots")


def agent_timeout(settings: dict[str, str] | None) -> int:
    raw = (settings or {}).get("timeout_in_seconds")
    try:
        return int(raw) if raw is not None else DEFAULT_TIMEOUT
    except ValueError:
        return DEFAULT_TIMEOUT


def enabled(settings: dict[str, str] | None) -> bool:
    value = (settings or {}).get("enabled", "false")
    return value.strip().lower() in ("true", "1", "yes", "on")


def script(phase: str, command: list[str], guard: list[str], toml: str,
           deadline: float) -> bytes:
    name = f"quiesce-gce-{phase}"
    argv = [*command, phase, "--config", toml]
    if phase == "pre":
        argv += ["--deadline", f"{deadline:g}"]
        consequence = ("the guest agent reports the script's failure to Compute Engine; the "
                       "snapshot is NOT application-consistent")
    else:
        consequence = ("the snapshot may NOT be application-consistent (see the lines above "
                       "and the run record)")
    body = (f"# $1 is the snapshot's disk list; quiesce.toml says what to hold.\n"
            f"{base.quoted(argv)}\n" + base.fail_loudly(name, f"quiesce {phase}", consequence, "")
            + 'exit "$status"\n')
    about = [f"The Google guest agent runs it {'before' if phase == 'pre' else 'after'} a "
             "guest-flush snapshot."]
    if phase == "pre":
        about.append(f"'quiesce pre' must hold everything within {deadline:g} s or nothing.")
    return base.hook_text(agent=NAME, name=name,
                          title=f"Compute Engine {phase}-snapshot script", about=about,
                          guard=guard, body=body)


def instance_configs(timeout: int) -> bytes:
    return ("# Google guest agent settings, written by 'quiesce install gce' (none existed).\n"
            "[Snapshots]\n"
            "enabled = true\n"
            f"timeout_in_seconds = {timeout}\n").encode()


def make_plan(ctx: Context) -> Plan:
    settings = snapshot_settings(base.join(ctx.prefix, INSTANCE_CONFIGS))
    timeout = agent_timeout(settings)
    deadline = ctx.deadline if ctx.deadline is not None else max(1.0, timeout - MARGIN)
    toml = base.skeleton_file(ctx)
    files = [
        PlannedFile(base.join(ctx.prefix, path),
                    script(phase, ctx.command, ctx.guard, toml.tree_path, deadline), 0o700,
                    inner=path)
        for phase, path in (("pre", PRE), ("post", POST))]
    conf = PlannedFile(base.join(ctx.prefix, INSTANCE_CONFIGS), instance_configs(timeout),
                       0o644, inner=INSTANCE_CONFIGS, never_replace=True)
    files += [conf, toml]
    base.classify_all(files, ctx.force)
    notes = []
    if conf.action == base.KEEP and not enabled(settings):
        notes.append(f"{INSTANCE_CONFIGS} exists and was left alone: set 'enabled = true' in "
                     "its [Snapshots] group")
    if deadline + MARGIN > timeout:
        notes.append(f"WARNING: pre's deadline {deadline:g} s does not fit the agent's "
                     f"timeout_in_seconds {timeout} less {MARGIN:g} s: raise "
                     "timeout_in_seconds or lower --deadline")
    notes.append("restart google-guest-agent so that it reads [Snapshots], then take "
                 "snapshots with --guest-flush")
    notes.append(f"describe your databases in {toml.tree_path}, then run 'quiesce check "
                 "--agent gce'")
    return Plan(NAME, ctx.prefix, files, dir_modes={"etc/google": 0o755,
                                                      "etc/google/snapshots": 0o700},
                notes=notes, deadline=deadline)


def check(prefix: str = "/") -> AgentCheck:
    """``quiesce check --agent gce``: both scripts, snapshots enabled in the guest agent, and
    the deadline against timeout_in_seconds."""
    from quiesce.callers.install import checking

    report = checking.AgentCheck(NAME, prefix)
    checking.standard(report, PRE)
    checking.check_hook(report, POST, runs="post")
    settings = snapshot_settings(base.join(prefix, INSTANCE_CONFIGS))
    if not enabled(settings):
        report.problem(checking.SWITCH_CODE, f"snapshot scripts are not enabled in "
                       f"{INSTANCE_CONFIGS}: the guest agent never runs pre.sh",
                       "set 'enabled = true' in its [Snapshots] group and restart "
                       "google-guest-agent")
    else:
        report.checked.append(("agent switch", f"[Snapshots] enabled in {INSTANCE_CONFIGS}"))
    timeout = agent_timeout(settings)
    deadline = checking.effective_deadline(report)
    if deadline is not None:
        if deadline + MARGIN > timeout:
            report.problem(checking.DEADLINE_CODE,
                           f"pre's deadline {deadline:g} s does not fit timeout_in_seconds "
                           f"{timeout} less {MARGIN:g} s: the agent would kill pre.sh first",
                           f"raise timeout_in_seconds to {int(deadline + MARGIN) + 1} or "
                           f"'quiesce install gce --force --deadline {timeout - MARGIN:g}'")
        else:
            report.checked.append(("deadline", f"pre's deadline {deadline:g} s; the guest "
                                   f"agent's timeout_in_seconds {timeout}"))
    return report
