"""``quiesce install azure``: make quiesce the pre/post scripts of Azure VM Backup.

Writes, under ``prefix`` (default ``/``):

- ``etc/azure/VMSnapshotScriptPluginConfig.json`` (0600): Azure's script config pointing at
  the two wrappers; ``timeoutInSeconds`` is sized from ``max_hold_seconds`` (see
  :func:`azure_timeout`), no retries (a retried ``pre`` would find its own hold active),
  ``continueBackupOnFailure`` true and ``fsFreezeEnabled`` true;
- ``etc/azure/quiesce-pre.sh`` and ``etc/azure/quiesce-post.sh`` (0700): ``#!/bin/sh`` wrappers
  that ``exec`` the quiesce executable (absolute path) with ``pre``/``post --config``;
- ``etc/quiesce/quiesce.toml`` (0600): a commented skeleton with an example section for each
  selected engine, built from the engine's own schema (see :mod:`.base`).

Unlike the other agents, paths inside Azure's files are the prefixed paths, so the tree under a
prefix is self-consistent from outside (``quiesce check --config
<prefix>/etc/azure/VMSnapshotScriptPluginConfig.json`` validates it), and the wrappers run this
quiesce. Idempotence, --force backups and the manifest are :mod:`.base`'s.
"""

from __future__ import annotations

import json
import os
import shlex
from collections.abc import Sequence
from typing import Any

from quiesce.callers.install import base
from quiesce.callers.install.base import (
    CONFLICT,
    FIX_MODE,
    KEEP,
    UNCHANGED,
    Context,
    Plan,
    PlannedFile,
)
from quiesce.settings import DEFAULT_MAX_HOLD, DEFAULT_PRE_TIMEOUT

NAME = "azure"
TITLE = "Azure VM Backup"
AZURE_CONFIG = "etc/azure/VMSnapshotScriptPluginConfig.json"
PRE_SCRIPT = "etc/azure/quiesce-pre.sh"
POST_SCRIPT = "etc/azure/quiesce-post.sh"
QUIESCE_TOML = base.QUIESCE_TOML
AZURE_TIMEOUT_CAP = 1800
POLL_SECONDS = 1  # ScriptsExecutionPollTimeSeconds written by install

# Directory modes: /etc/azure is read by the extension (0755), /etc/quiesce may also hold the
# secret files the TOML names (0700).
DIR_MODES = {"etc": 0o755, "etc/azure": 0o755, "etc/quiesce": 0o700}


def azure_timeout(max_hold_seconds: float, pre_timeout_seconds: float) -> int:
    """timeoutInSeconds for both script phases.

    ``pre`` returns as soon as the locks are held, bounded by pre_timeout_seconds, and must be
    done a poll margin before timeoutInSeconds (:mod:`quiesce.callers.caller_deadline`: at most
    6 s) for Azure to see it finish; ``quiesce check`` fails when the two do not fit. 30 s above
    pre_timeout_seconds leaves that margin with room to spare. The value also follows
    max_hold_seconds (the hold's own budget) so that raising the hold budget for slow
    snapshots gives Azure's phases room too, and stays within Azure's 1..1800 range (with
    pre_timeout_seconds above 1794 nothing fits, and check says to lower it).
    """
    wanted = max(float(max_hold_seconds), float(pre_timeout_seconds) + 30.0)
    return int(min(AZURE_TIMEOUT_CAP, max(60, round(wanted))))


def wrapper_script(phase: str, toml_path: str, command: Sequence[str], *,
                   azure_config_path: str | None = None,
                   guard: Sequence[str] = ()) -> bytes:
    """The ``#!/bin/sh`` wrapper for ``phase``.

    The pre-script passes ``--azure-config`` so that ``quiesce pre`` reads the Azure config at
    run time and finishes (all held, or nothing) before ``timeoutInSeconds`` (see
    :mod:`quiesce.callers.caller_deadline`). ``guard`` lists the paths the wrapper re-checks
    before the exec (:func:`.base.guard_paths`): at every backup, not only at install, the
    quiesce it runs as root must not be replaceable by another user (a venv under a tmp-cleaned
    /tmp is).
    """
    parts = [*command, phase, "--config", toml_path]
    if azure_config_path is not None:
        parts += ["--azure-config", azure_config_path]
    argv = " ".join(shlex.quote(part) for part in parts)
    lines = [
        "#!/bin/sh",
        f"# Azure VM Backup {phase}-script, installed by 'quiesce install azure'.",
        f"# It hands over to 'quiesce {phase}'; see docs/configuration.md.",
    ]
    if azure_config_path is not None:
        lines.append(f"# --azure-config: 'quiesce {phase}' reads timeoutInSeconds at every "
                     "backup.")
    text = "\n".join(lines) + "\n"
    text += base.guard_block(guard, f"quiesce-{phase}.sh", NAME)
    return (text + f'exec {argv} "$@"\n').encode()


def azure_config(pre_path: str, post_path: str, timeout: int) -> bytes:
    document = {
        "pluginName": "ScriptRunner",
        "preScriptLocation": pre_path,
        "postScriptLocation": post_path,
        "preScriptParams": [],
        "postScriptParams": [],
        "preScriptNoOfRetries": 0,
        "postScriptNoOfRetries": 0,
        "timeoutInSeconds": timeout,
        "continueBackupOnFailure": True,
        "fsFreezeEnabled": True,
        # Azure sleeps a whole poll before each look at a script: 1 s, the shortest it
        # accepts (1..5), keeps the hold between Azure's pre and post short (issue 10).
        "ScriptsExecutionPollTimeSeconds": POLL_SECONDS,
    }
    return (json.dumps(document, indent=4) + "\n").encode()


def _planned(prefix: str, relative: str, content: bytes, mode: int, **kw: Any) -> PlannedFile:
    return PlannedFile(base.join(prefix, "/" + relative), content, mode, inner="/" + relative,
                       **kw)


def make_plan(ctx: Context) -> Plan:
    """What would be written, and what happens to each file (nothing is touched). The
    wrappers run this quiesce (``ctx.command``; its safety is checked by the caller)."""
    prefix = ctx.prefix
    command = ctx.command or base.quiesce_command()
    guard = ctx.guard if ctx.command else base.guard_paths(command)
    toml_path = base.join(prefix, "/" + QUIESCE_TOML)
    pre_path = base.join(prefix, "/" + PRE_SCRIPT)
    post_path = base.join(prefix, "/" + POST_SCRIPT)
    azure_path = base.join(prefix, "/" + AZURE_CONFIG)
    when = base.stamp()
    toml = _planned(prefix, QUIESCE_TOML,
                    base.toml_skeleton(base.load_engines(ctx.plugins), ctx.max_hold), 0o600,
                    keep_existing=True)
    base.classify(toml, ctx.force, when)
    # An existing quiesce.toml that stays is the one 'quiesce pre' will use: the Azure timeout
    # must fit its pre_timeout_seconds, not the default's.
    pre_timeout: float = DEFAULT_PRE_TIMEOUT
    if toml.action in (KEEP, UNCHANGED, FIX_MODE):
        pre_timeout = base.existing_pre_timeout(toml_path)
    files = [
        _planned(prefix, AZURE_CONFIG,
                 azure_config(pre_path, post_path, azure_timeout(ctx.max_hold, pre_timeout)),
                 0o600),
        _planned(prefix, PRE_SCRIPT,
                 wrapper_script("pre", toml_path, command, azure_config_path=azure_path,
                                guard=guard), 0o700),
        _planned(prefix, POST_SCRIPT, wrapper_script("post", toml_path, command, guard=guard),
                 0o700),
    ]
    for planned in files:
        base.classify(planned, ctx.force, when)
    return Plan(NAME, prefix, [*files, toml], dir_modes=dict(DIR_MODES), notes=[
        f"describe your databases in {toml_path}, then check with 'quiesce check --config "
        f"{azure_path}' and try 'quiesce pre' / 'quiesce post' by hand once"])


def resolve(ctx: Context) -> Context:
    """Azure's wrappers run this quiesce, named by its host path even under a prefix."""
    ctx.command = base.quiesce_command()
    ctx.guard = base.guard_paths(ctx.command)
    ctx.unsafe = base.command_problems(ctx.command)
    return ctx


# The interface of the former quiesce.callers.azure_install, kept for its callers.


def plan(prefix: str = "/", plugins: Sequence[str] | None = None, *, force: bool = False,
         max_hold: float = DEFAULT_MAX_HOLD) -> list[PlannedFile]:
    """The files ``install azure`` would write under ``prefix`` (nothing is touched)."""
    ctx = Context(NAME, prefix, plugins, max_hold, force)
    return make_plan(ctx).files


def apply(files: Sequence[PlannedFile]) -> None:
    """Write the files of :func:`plan` (refused, writing nothing, on any conflict)."""
    base.refuse_conflicts(files, NAME)
    prefixes = {os.path.dirname(os.path.dirname(os.path.dirname(f.path))) for f in files}
    for prefix in prefixes:
        base.ensure_dirs(prefix, {**base.COMMON_DIR_MODES, **DIR_MODES},
                         [f for f in files if f.path.startswith(prefix)])
    base.write_files(files)


__all__ = ["AZURE_CONFIG", "CONFLICT", "POST_SCRIPT", "PRE_SCRIPT", "apply", "azure_config",
           "azure_timeout", "make_plan", "plan", "wrapper_script"]
