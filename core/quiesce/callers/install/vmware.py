"""``quiesce install vmware``: quiesce as a VMware Tools (open-vm-tools) quiescing script.

For a quiesced snapshot, the vmbackup plugin of VMware Tools runs every file in
``/etc/vmware-tools/backupScripts.d/`` (sorted by name; the legacy
``/usr/sbin/pre-freeze-script`` first) with ``freeze`` before it freezes the filesystems, then
the same files in reverse order with ``thaw`` after the snapshot, or with ``freezeFail`` when
the freeze (or a later freeze script) failed. A ``scriptArg`` from tools.conf comes as a second
argument. A non-zero ``freeze`` fails the quiesced snapshot. Scripts run only when
``execScripts`` in tools.conf's ``[vmbackup]`` group is not false (the key the plugin reads;
default true), and the plugin aborts the whole quiesce operation after ``timeout`` seconds
(``[vmbackup]``, default 900; 0: none) and then runs the ``freezeFail`` scripts.

The hook maps ``freeze`` to ``quiesce pre --deadline D``, ``thaw`` to ``quiesce post`` and
``freezeFail`` to ``quiesce post --caller-failed``: the locks are released and the run is
recorded "not consistent" whatever quiesce held. Every file in backupScripts.d is run, so a
``--force`` backup of the hook is kept in ``/etc/quiesce/install-backups`` instead.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

from quiesce.callers.install import base
from quiesce.callers.install.base import Context, Plan, PlannedFile

if TYPE_CHECKING:
    from quiesce.callers.install.checking import AgentCheck

NAME = "vmware"
TITLE = "VMware Tools"
HOOK = "/etc/vmware-tools/backupScripts.d/quiesce"
TOOLS_CONF = "/etc/vmware-tools/tools.conf"
LEGACY = ("/usr/sbin/pre-freeze-script", "/usr/sbin/post-thaw-script")
DEFAULT_TIMEOUT = 900  # the plugin's GUEST_QUIESCE_DEFAULT_TIMEOUT_IN_SEC
#: Seconds left between pre's deadline and the plugin's timeout: the filesystem freeze and
#: the snapshot itself happen inside the same timeout.
MARGIN = 30.0
DEFAULT_DEADLINE = 60.0
FREEZE_FAIL_REASON = ("VMware Tools reported freezeFail: the quiesced snapshot failed after "
                      "'quiesce pre'")


def vmbackup_settings(path: str) -> dict[str, str] | None:
    """The ``[vmbackup]`` keys of a tools.conf ({} when the group is absent), None when the
    file is missing or unreadable."""
    return base.ini_group(path, "vmbackup")


def is_false(value: str | None) -> bool:
    return value is not None and value.strip().lower() in ("false", "0", "no", "off")


def plugin_timeout(settings: dict[str, str] | None) -> int | None:
    """The vmbackup timeout in seconds (None: no timeout), from tools.conf's settings."""
    raw = (settings or {}).get("timeout")
    try:
        value = int(raw) if raw is not None else DEFAULT_TIMEOUT
    except ValueError:
        value = DEFAULT_TIMEOUT
    return None if value == 0 else value


def hook_script(command: list[str], guard: list[str], toml: str, deadline: float) -> bytes:
    name = "quiesce-vmware"
    pre = base.quoted([*command, "pre", "--config", toml, "--deadline", f"{deadline:g}"])
    post = base.quoted([*command, "post", "--config", toml])
    failed = base.quoted([*command, "post", "--config", toml, "--caller-failed",
                          FREEZE_FAIL_REASON])
    body = (
        'case "${1:-}" in\n'
        + "freeze)\n"
        + f"    {pre}\n"
        + base.fail_loudly(name, "quiesce pre", "VMware Tools fails this quiesced snapshot")
        + '    exit "$status"\n'
        + "    ;;\n"
        + "thaw)\n"
        + f"    {post}\n"
        + base.fail_loudly(name, "quiesce post", "the snapshot may NOT be "
                           "application-consistent (see the lines above and the run record)")
        + '    exit "$status"\n'
        + "    ;;\n"
        + "freezeFail)\n"
        + f"    {failed}\n"
        + "    exit 0  # the snapshot already failed; the locks are released and recorded\n"
        + "    ;;\n"
        + "*)\n"
        + f'    echo "{name}: unknown argument \'${{1:-}}\' (VMware Tools passes freeze, '
        + "thaw or freezeFail)\" >&2\n"
        + "    exit 2\n"
        + "    ;;\n"
        + "esac\n")
    about = ["VMware Tools runs it with 'freeze', then 'thaw' or 'freezeFail'.",
             f"'quiesce pre' must hold everything within {deadline:g} s or nothing."]
    return base.hook_text(agent=NAME, name=name, title="VMware Tools quiescing script",
                          about=about, guard=guard, body=body)


TOOLS_CONF_TEXT = (b"# tools.conf, written by 'quiesce install vmware' (none existed).\n"
                   b"[vmbackup]\n"
                   b"# Run the quiescing scripts of backupScripts.d (the default).\n"
                   b"execScripts = true\n")


def make_plan(ctx: Context) -> Plan:
    settings = vmbackup_settings(base.join(ctx.prefix, TOOLS_CONF))
    timeout = plugin_timeout(settings)
    deadline = ctx.deadline
    if deadline is None:
        deadline = DEFAULT_DEADLINE if timeout is None else min(DEFAULT_DEADLINE,
                                                                max(1.0, timeout - MARGIN))
    toml = base.skeleton_file(ctx)
    hook = PlannedFile(base.join(ctx.prefix, HOOK),
                       hook_script(ctx.command, ctx.guard, toml.tree_path, deadline), 0o700,
                       inner=HOOK, backup_dir=base.join(ctx.prefix, "/" + base.BACKUP_DIR))
    conf = PlannedFile(base.join(ctx.prefix, TOOLS_CONF), TOOLS_CONF_TEXT, 0o644,
                       inner=TOOLS_CONF, never_replace=True)
    files = [hook, conf, toml]
    base.classify_all(files, ctx.force)
    notes = []
    if settings is not None and is_false(settings.get("execscripts")):
        notes.append(f"{TOOLS_CONF} sets execScripts = false in [vmbackup]: VMware Tools runs "
                     "no quiescing script until it is true")
    if timeout is not None and deadline + MARGIN > timeout:
        notes.append(f"WARNING: pre's deadline {deadline:g} s leaves less than {MARGIN:g} s "
                     f"of the vmbackup timeout ({timeout} s) for the freeze and the snapshot")
    for legacy in LEGACY:
        if os.path.lexists(base.join(ctx.prefix, legacy)):
            notes.append(f"{legacy} exists: VMware Tools runs it too (first at freeze, last "
                         "at thaw)")
    notes.append("take quiesced snapshots ('Quiesce guest file system') for the script to run")
    notes.append(f"describe your databases in {toml.tree_path}, then run 'quiesce check "
                 "--agent vmware'")
    return Plan(NAME, ctx.prefix, files,
                dir_modes={"etc/vmware-tools": 0o755,
                           "etc/vmware-tools/backupScripts.d": 0o755},
                notes=notes, deadline=deadline)


def check(prefix: str = "/") -> AgentCheck:
    """``quiesce check --agent vmware``: the hook, execScripts, the deadline against the
    vmbackup timeout, and a freezeFail branch that releases."""
    from quiesce.callers.install import checking

    report = checking.AgentCheck(NAME, prefix)
    calls = checking.standard(report, HOOK)
    if calls and not any(c.command == "post" and c.args is not None
                         and getattr(c.args, "caller_failed", None) for c in calls):
        report.problem(checking.HOOK_CODE, f"{HOOK} does not release with 'quiesce post "
                       "--caller-failed' on freezeFail: a failed snapshot would be recorded "
                       "as consistent", checking.reinstall(NAME))
    settings = vmbackup_settings(base.join(prefix, TOOLS_CONF))
    if settings is not None and is_false(settings.get("execscripts")):
        report.problem(checking.SWITCH_CODE, f"{TOOLS_CONF} sets execScripts = false in "
                       "[vmbackup]: VMware Tools runs no quiescing script",
                       "set execScripts = true (or remove the line) and restart vmtoolsd")
    else:
        report.checked.append(("agent switch", "execScripts is on ([vmbackup] "
                               + ("default)" if settings is None
                                  or "execscripts" not in settings else "in tools.conf)")))
    timeout = plugin_timeout(settings)
    deadline = checking.effective_deadline(report)
    if deadline is not None:
        if timeout is not None and deadline + MARGIN > timeout:
            report.problem(checking.DEADLINE_CODE,
                           f"pre's deadline {deadline:g} s leaves less than {MARGIN:g} s of "
                           f"the vmbackup timeout ({timeout} s) for the freeze and the snapshot",
                           f"lower it ('quiesce install vmware --force --deadline "
                           f"{max(1, timeout - MARGIN):g}') or raise [vmbackup] timeout")
        else:
            report.checked.append(("deadline", f"pre's deadline {deadline:g} s; vmbackup "
                                   + (f"timeout {timeout} s" if timeout else "has no timeout")))
    for legacy in LEGACY:
        if os.path.lexists(base.join(prefix, legacy)):
            report.notes.append(f"{legacy} exists: VMware Tools runs it too")
    return report
