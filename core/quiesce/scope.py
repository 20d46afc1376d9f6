"""Whether quiesce's long-lived helpers get a systemd scope of their own, and the argv for it.

The processes that undo a quiesce (the holder and its guardian, which release the database
locks, and the freeze watchdog, which thaws) must outlive whatever started them. A backup agent
may kill its whole control group when it gives up: the Azure Linux agent runs each extension
in its own systemd slice and stops that slice (``systemctl stop`` kills every process in it,
whatever its session or process group). A helper still in that cgroup dies with it, and a
MongoDB ``fsyncLock`` or a frozen filesystem then outlives everything that could undo it.

Where systemd is PID 1, each helper is therefore started through ``systemd-run --scope``:

    systemd-run --scope --unit=NAME.scope --collect --quiet -- ARGV...

**Why a scope, not a transient service.** ``systemd-run --scope`` asks systemd to create the
scope unit around its own process, then ``exec``\\ s ARGV in place: the helper is still our
child, in its own new cgroup (``system.slice/NAME.scope``, outside the caller's slice), and
keeps everything it inherited: the descriptors passed with ``pass_fds`` (the watchdog's
mount-point directory descriptors, the holder's ready pipe), stdin/stdout pipes, the
environment and the session set up by ``start_new_session``. A transient *service* would be
forked by PID 1 itself: no inherited descriptors (the watchdog could not thaw what we froze),
no pipes back to us, a different environment, and start-up through the unit machinery. The
scope keeps the existing start-up protocols unchanged; only the cgroup moves.
``--collect`` lets systemd forget the unit even if the helper exits non-zero (no failed units
left behind, and the name can be reused); ``--quiet`` keeps "Running scope as unit" off the
helper's stderr, which the watchdog protocol reads as a start-up error.

Where systemd is not PID 1 (containers, other init systems, these test machines), or
``systemd-run`` is missing, or quiesce runs as a non-root user (the system manager would ask
polkit; the user manager's scope is stopped with the user's session), the argv is returned
unchanged with the reason, and the helpers stay in the caller's cgroup: a caller that kills
its cgroup then kills them too. ``quiesce check`` prints that reason.

:func:`scope_decision` is the pure decision (facts in, argv and reason out);
:func:`in_own_scope` gathers the facts on this machine and calls it.
"""

from __future__ import annotations

import os
import re
import shutil
from collections.abc import Sequence
from dataclasses import dataclass

SYSTEMD_RUN_DIR = "/run/systemd/system"  # exists only when systemd is the running init
PID1_COMM = "/proc/1/comm"
#: Where systemd-run is looked for: the standard system directories only, never the caller's
#: PATH (which a backup agent sets, and which may name user-writable directories).
SYSTEM_PATH = "/usr/bin:/bin:/usr/sbin:/sbin"

_UNIT_CHARS = re.compile(r"[^A-Za-z0-9:_.-]")


@dataclass(frozen=True)
class ScopeDecision:
    """The argv to start, whether it runs in a scope of its own, and why (or why not)."""

    argv: tuple[str, ...]
    wrapped: bool
    reason: str
    unit: str | None = None  # the scope unit's name when wrapped


def scope_unit_name(kind: str, ident: str) -> str:
    """A valid, unique-enough unit name: ``quiesce-<kind>-<ident>.scope``.

    Characters systemd does not accept in a unit name become ``_``; give an ``ident`` that
    differs between concurrent helpers (a run id plus a pid), since systemd refuses to create
    a unit whose name is still in use.
    """
    name = f"quiesce-{kind}-{ident}"
    name = _UNIT_CHARS.sub("_", name)[:240]
    return f"{name}.scope"


def scope_decision(argv: Sequence[str], unit: str, *, systemd_booted: bool,
                   pid1_name: str | None, systemd_run: str | None,
                   euid: int) -> ScopeDecision:
    """Pure: ``argv`` wrapped in ``systemd-run --scope`` when every fact allows it.

    ``systemd_booted``: :data:`SYSTEMD_RUN_DIR` exists; ``pid1_name``: the content of
    :data:`PID1_COMM` (None if unreadable); ``systemd_run``: the absolute path of systemd-run
    (None if not found); ``euid``: the uid quiesce acts as. ``unit`` must end in ``.scope``
    (see :func:`scope_unit_name`).
    """
    if not unit.endswith(".scope") or _UNIT_CHARS.search(unit):
        raise ValueError(f"{unit!r} is not a valid scope unit name (see scope_unit_name)")
    command = tuple(argv)
    if not command:
        raise ValueError("argv is empty")
    name = (pid1_name or "").strip()
    if not systemd_booted or name != "systemd":
        what = f"PID 1 is {name!r}" if name else "PID 1 could not be identified"
        if name == "systemd":
            what = f"{SYSTEMD_RUN_DIR} does not exist"
        return ScopeDecision(command, False, f"systemd is not PID 1 here ({what})")
    if systemd_run is None:
        return ScopeDecision(command, False, "systemd is PID 1 but systemd-run was not found "
                             f"in {SYSTEM_PATH}")
    if euid != 0:
        return ScopeDecision(command, False, f"quiesce runs as uid {euid}, not root: the "
                             "system manager would not create a scope without polkit")
    wrapped = (systemd_run, "--scope", f"--unit={unit}", "--collect", "--quiet", "--",
               *command)
    return ScopeDecision(wrapped, True, f"systemd is PID 1: started in its own scope {unit}, "
                         "outside the caller's cgroup", unit)


def _read_pid1_name(path: str) -> str | None:
    try:
        with open(path, encoding="utf-8", errors="replace") as handle:
            return handle.read(64).strip()
    except OSError:
        return None


def in_own_scope(argv: Sequence[str], unit: str, *, run_dir: str = SYSTEMD_RUN_DIR,
                 pid1_comm: str = PID1_COMM, search_path: str = SYSTEM_PATH,
                 euid: int | None = None) -> ScopeDecision:
    """:func:`scope_decision` with the facts of this machine (the keyword arguments exist for
    tests). Reads two small files and searches ``search_path``; starts nothing."""
    return scope_decision(
        argv, unit,
        systemd_booted=os.path.isdir(run_dir),
        pid1_name=_read_pid1_name(pid1_comm),
        systemd_run=shutil.which("systemd-run", path=search_path),
        euid=os.geteuid() if euid is None else euid)


def check_note() -> str:
    """What ``quiesce check`` says about the helpers' cgroup on this machine."""
    decision = in_own_scope(["true"], scope_unit_name("check", "0"))
    if decision.wrapped:
        return ("systemd is PID 1: holder, guardian and freeze watchdog each start in a "
                "transient scope of their own (systemd-run --scope), so a backup agent that "
                "kills its own cgroup cannot take them down with it")
    return (f"{decision.reason}: holder, guardian and freeze watchdog stay in the caller's "
            "cgroup, so a backup agent that kills its whole cgroup kills them too. "
            "PostgreSQL and MySQL locks end with their connections, but a MongoDB fsyncLock "
            "stays until someone runs db.fsyncUnlock(), and a filesystem frozen by 'quiesce "
            "run' stays frozen until 'fsfreeze -u'")


__all__ = ["ScopeDecision", "check_note", "in_own_scope", "scope_decision", "scope_unit_name"]
