"""``quiesce check`` for the hooks of ``install qemu-ga | vmware | gce | aws``.

What every agent's check shares (the per-agent parts live in each agent's module, as
``check(prefix)``):

- the hook: present, a regular file (not a symlink), root-owned, executable, not writable by
  group or other (``install`` writes 0700);
- the quiesce calls in it, parsed with the real commands' own parsers: the program exists
  inside the tree and nobody but root can replace it, ``pre`` has a ``--deadline`` (every
  agent either has a limit of its own or, like qemu-ga, none at all), the quiesce.toml ``pre``
  would load passes validation (an untouched skeleton is a warning, as for Azure);
- the deadline against the agent's own limit: each agent's module compares them.

Paths inside a hook are as seen inside the tree (``--prefix``); they are read under it.
Nothing connects to a database.
"""

from __future__ import annotations

import argparse
import os
import stat
from dataclasses import dataclass, field
from typing import Any

from quiesce.callers.check_hold import (
    SKELETON_MESSAGE,
    WrapperArgumentError,
    WrapperCall,
    _run_error,
    parse_call,
    quiesce_calls,
    toml_problems,
)
from quiesce.callers.install import base
from quiesce.callers.report import RunError

HOOK_CODE = "IncorrectHook"
SWITCH_CODE = "AgentSwitchOff"
DEADLINE_CODE = "DeadlineDoesNotFit"
COMMANDS = ("pre", "post", "check")


@dataclass
class HookCall:
    line: int
    command: str  # pre, post or check
    program: tuple[str, ...]
    args: argparse.Namespace | None


@dataclass
class AgentCheck:
    agent: str
    prefix: str
    checked: list[tuple[str, str]] = field(default_factory=list)
    errors: list[RunError] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    deadline: float | None = None
    pre_timeout: float | None = None

    @property
    def ok(self) -> bool:
        return not self.errors

    def problem(self, code: str, message: str, hint: str) -> None:
        self.errors.append(RunError(code, None, "check", message, hint))


def reinstall(agent: str) -> str:
    return f"rerun 'quiesce install {agent} --force'"


def hook_calls(text: str) -> list[tuple[int, str, tuple[str, ...], list[str]]]:
    """(line, command, program, arguments) of every quiesce call in a hook."""
    return [(number, rest[0], tuple(program), rest[1:])
            for number, program, rest in quiesce_calls(text) if rest and rest[0] in COMMANDS]


def check_hook(report: AgentCheck, inner: str, runs: str = "pre") -> list[HookCall]:
    """The hook at ``inner`` (inside the tree): file checks, then its quiesce calls, among
    which a ``quiesce <runs>``."""
    agent, prefix = report.agent, report.prefix
    path = base.join(prefix, inner)
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        report.problem(HOOK_CODE, f"{inner} is missing: the {agent} agent runs nothing of "
                       "quiesce", f"run 'quiesce install {agent}'")
        report.checked.append((f"hook {inner}", "missing"))
        return []
    except OSError as exc:
        report.problem(HOOK_CODE, f"{inner} cannot be examined: {exc.strerror}",
                       reinstall(agent))
        return []
    mode = stat.S_IMODE(st.st_mode)
    problems = []
    if not stat.S_ISREG(st.st_mode):
        problems.append("is not a regular file (a symlink or something else)")
    if st.st_uid != 0 and st.st_uid != os.geteuid():
        problems.append(f"is owned by uid {st.st_uid}, not root")
    if mode & 0o022:
        problems.append(f"is writable by group/other (mode {mode:04o}): anyone who can "
                        "write it runs commands as root at the next snapshot")
    if not mode & 0o100:
        problems.append(f"is not executable (mode {mode:04o}): the agent cannot run it")
    for problem in problems:
        report.problem(HOOK_CODE, f"{inner} {problem}",
                       f"chown root:root {path} && chmod 0700 {path}, or "
                       f"{reinstall(agent)}")
    report.checked.append((f"hook {inner}", "problems" if problems else
                           f"ok (root, {mode:04o})"))
    if problems and not stat.S_ISREG(st.st_mode):
        return []
    try:
        with open(path, "rb") as handle:
            text = handle.read(64 * 1024).decode("utf-8", "replace")
    except OSError as exc:
        report.problem(HOOK_CODE, f"{inner} cannot be read: {exc.strerror}", reinstall(agent))
        return []
    calls = []
    for number, command, program, argv in hook_calls(text):
        where = f"{inner}:{number}"
        call = WrapperCall(inner, number, command, tuple(argv), False, program)
        args = None
        if command in ("pre", "post"):
            try:
                args = parse_call(call)
            except WrapperArgumentError as exc:
                report.problem(HOOK_CODE, f"{where}: 'quiesce {command}' would refuse its "
                               f"arguments: {exc}", reinstall(agent))
        calls.append(HookCall(number, command, program, args))
        _check_program(report, where, program)
    if not any(c.command == runs for c in calls):
        report.problem(HOOK_CODE, f"{inner} runs no 'quiesce {runs}'", reinstall(agent))
    return calls


def _check_program(report: AgentCheck, where: str, program: tuple[str, ...]) -> None:
    if not program or any("$" in p or "`" in p for p in program[:1]):
        return
    executable = program[0]
    if not os.path.isabs(executable):
        report.problem(HOOK_CODE, f"{where}: runs {executable!r} by name; the agent's PATH "
                       "decides what that is", reinstall(report.agent))
        return
    host = base.join(report.prefix, executable)
    if not (os.path.isfile(host) and os.access(host, os.X_OK)):
        report.problem(HOOK_CODE, f"{where}: {executable} does not exist or is not "
                       "executable (was quiesce moved or uninstalled?)",
                       reinstall(report.agent))
        return
    if base.is_root_prefix(report.prefix):
        unsafe = base.command_problems(list(program))
    else:
        _, unsafe = base.tree_command_paths(report.prefix, list(program))
    if unsafe:
        report.problem(HOOK_CODE, f"{where}: the hook runs {executable} as root, but users "
                       f"other than root can replace it: {'; '.join(dict.fromkeys(unsafe))}",
                       "install quiesce in a root-owned venv (e.g. under /opt), then "
                       f"{reinstall(report.agent)}")


def check_pre(report: AgentCheck, calls: list[HookCall]) -> None:
    """The pre call's deadline and the quiesce.toml it would load."""
    pre = next((c for c in calls if c.command == "pre" and c.args is not None), None)
    if pre is None:
        return
    deadline = getattr(pre.args, "deadline", None)
    report.deadline = deadline
    if deadline is None:
        report.problem(DEADLINE_CODE, f"line {pre.line}: 'quiesce pre' has no --deadline: a "
                       "hung database holds the agent until pre_timeout_seconds",
                       reinstall(report.agent))
    config = getattr(pre.args, "config", None) or "/etc/quiesce/quiesce.toml"
    if not os.path.isabs(config):
        report.problem(HOOK_CODE, f"line {pre.line}: --config {config!r} is relative",
                       reinstall(report.agent))
        return
    toml = base.join(report.prefix, config)
    from quiesce.settings import parse_plugin_list

    problems, settings = toml_problems(toml, parse_plugin_list(getattr(pre.args, "plugins",
                                                                       None)))
    what = f"quiesce.toml {config}"
    if settings is None and [p.message for p in problems] == [SKELETON_MESSAGE]:
        report.notes.append(f"WARNING: {config} {SKELETON_MESSAGE}: {problems[0].hint}")
        report.checked.append((what, "not configured yet (see the warning below)"))
        report.pre_timeout = base.existing_pre_timeout(toml)
    elif settings is None:
        report.errors.extend(_run_error(p, toml) for p in problems)
        report.checked.append((what, "problems"))
    else:
        instances = [f"{i.engine}/{i.name}" for i in settings.instances]
        report.checked.append((what, f"ok ({', '.join(instances)})"))
        report.pre_timeout = float(settings.pre_timeout_seconds)
    if deadline is not None and report.pre_timeout is not None \
            and report.pre_timeout < deadline:
        report.notes.append(f"pre_timeout_seconds {report.pre_timeout:g} is below the hook's "
                            f"--deadline {deadline:g}: 'quiesce pre' gives up at "
                            f"{report.pre_timeout:g} s")


def effective_deadline(report: AgentCheck) -> float | None:
    limits = [v for v in (report.deadline, report.pre_timeout) if v is not None]
    return min(limits) if limits else None


def standard(report: AgentCheck, inner: str) -> list[HookCall]:
    calls = check_hook(report, inner)
    check_pre(report, calls)
    return calls


def render(report: AgentCheck) -> str:
    lines = [f"quiesce check {report.agent}"
             + ("" if base.is_root_prefix(report.prefix) else f" (tree {report.prefix})")]
    lines.extend(f"  {what}: {verdict}" for what, verdict in report.checked)
    lines.extend(f"note: {note}" for note in report.notes)
    for error in report.errors:
        lines.append(f"problem {error.code}: {error.message}")
        if error.hint:
            lines.append(f"  fix: {error.hint}")
    lines.append("all good" if report.ok else f"{len(report.errors)} problem(s)")
    return "\n".join(lines) + "\n"


def as_dict(report: AgentCheck) -> dict[str, Any]:
    return {"agent": report.agent, "prefix": report.prefix, "ok": report.ok,
            "checked": report.checked, "notes": report.notes, "deadline": report.deadline,
            "errors": [e.as_dict() for e in report.errors]}
