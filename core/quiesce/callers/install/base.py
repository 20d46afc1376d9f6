"""``quiesce install azure``: make quiesce the pre/post scripts of Azure VM Backup.

Writes, under ``prefix`` (default ``/``):

- ``etc/azure/VMSnapshotScriptPluginConfig.json`` (0600): Azure's script config pointing at
  the two wrappers; ``timeoutInSeconds`` is sized from ``max_hold_seconds`` (see
  :func:`azure_timeout`), no retries (a retried ``pre`` would find its own hold active),
  ``continueBackupOnFailure`` true and ``fsFreezeEnabled`` true;
- ``etc/azure/quiesce-pre.sh`` and ``etc/azure/quiesce-post.sh`` (0700): ``#!/bin/sh`` wrappers
  that ``exec`` the quiesce executable (absolute path) with ``pre``/``post --config``;
- ``etc/quiesce/quiesce.toml`` (0600): a commented skeleton with an example section for each
  selected engine, built from the engine's own schema; each key's comment is the key's
  ``Field.doc`` (see :func:`key_doc`), never the fix text of a validation error. The skeleton
  selects the engines but has no instance section yet: ``quiesce check`` says so until one is
  filled in.

Idempotent: a file whose content and mode already match is "unchanged". A different existing
file is never overwritten without ``force``; with it, the old file is kept as a timestamped
backup. An existing quiesce.toml that differs is the DBA's configuration: it is kept (not a
conflict) unless ``force``. Nothing is written when any other file conflicts. Paths inside the
files are the prefixed paths, so the tree under a prefix is self-consistent (``quiesce check
--config <prefix>/etc/azure/VMSnapshotScriptPluginConfig.json`` validates it).
"""

from __future__ import annotations

import json
import os
import shlex
import stat
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from quiesce.atomic import write_atomic
from quiesce.errors import QuiesceError
from quiesce.settings import DEFAULT_MAX_HOLD, DEFAULT_PRE_TIMEOUT

AZURE_CONFIG = "etc/azure/VMSnapshotScriptPluginConfig.json"
PRE_SCRIPT = "etc/azure/quiesce-pre.sh"
POST_SCRIPT = "etc/azure/quiesce-post.sh"
QUIESCE_TOML = "etc/quiesce/quiesce.toml"
AZURE_TIMEOUT_CAP = 1800

# Directory modes: /etc/azure is read by the extension (0755), /etc/quiesce may also hold the
# secret files the TOML names (0700).
DIR_MODES = {"etc": 0o755, "etc/azure": 0o755, "etc/quiesce": 0o700}

CREATE = "create"
UNCHANGED = "unchanged"
REPLACE = "replace"  # differs, --force: backed up, then written
FIX_MODE = "fix-mode"  # same content, wrong mode or owner
KEEP = "keep"  # an existing quiesce.toml: the DBA's configuration
CONFLICT = "conflict"


class InstallConflict(QuiesceError):
    """Existing files differ from what would be installed and --force was not given."""


@dataclass
class PlannedFile:
    path: str
    content: bytes
    mode: int
    action: str = CREATE
    backup: str | None = None

    @property
    def display_mode(self) -> str:
        return f"{self.mode:04o}"


def azure_timeout(max_hold_seconds: float, pre_timeout_seconds: float) -> int:
    """timeoutInSeconds for both script phases.

    ``pre`` returns as soon as the locks are held, bounded by pre_timeout_seconds, and must be
    done a poll margin before timeoutInSeconds (:mod:`quiesce.callers.caller_deadline`: at most 6 s)
    for Azure to see it finish; ``quiesce check`` fails when the two do not fit. 30 s above
    pre_timeout_seconds leaves that margin with room to spare. The value also follows
    max_hold_seconds (the hold's own budget) so that raising the hold budget for slow
    snapshots gives Azure's phases room too, and stays within Azure's 1..1800 range (with
    pre_timeout_seconds above 1794 nothing fits, and check says to lower it).
    """
    wanted = max(float(max_hold_seconds), float(pre_timeout_seconds) + 30.0)
    return int(min(AZURE_TIMEOUT_CAP, max(60, round(wanted))))


def quiesce_command() -> list[str]:
    """Absolute argv that runs this installation of quiesce."""
    script = os.path.join(os.path.dirname(sys.executable), "quiesce")
    if os.path.isfile(script) and os.access(script, os.X_OK):
        return [os.path.abspath(script)]
    return [os.path.abspath(sys.executable), "-m", "quiesce"]


def _interpreter(path: str) -> str | None:
    """The absolute interpreter of a ``#!`` script, or None."""
    try:
        with open(path, "rb") as handle:
            first = handle.readline(4096)
    except OSError:
        return None
    if not first.startswith(b"#!"):
        return None
    parts = first[2:].decode("utf-8", "replace").split()
    return parts[0] if parts and os.path.isabs(parts[0]) else None


def command_problems(command: Sequence[str]) -> list[str]:
    """Why the wrappers' command is not safe to run as root at every backup (empty: safe).

    The Azure extension insists that the scripts are root-owned and not writable by others;
    a wrapper that execs a program (or an interpreter, or the quiesce package) that another
    user can replace would hand that user root. Checked: the executable, the interpreter of a
    ``#!`` script, the quiesce package directory, and every directory above them, by the rule
    of :func:`quiesce.security.replaceable_components` (sticky ``/tmp`` is refused too).
    """
    import quiesce
    from quiesce.security import replaceable_components

    targets = [command[0]]
    interpreter = _interpreter(command[0])
    if interpreter:
        targets.append(interpreter)
    targets.append(os.path.dirname(os.path.abspath(quiesce.__file__)))
    problems: list[str] = []
    for target in targets:
        for problem in replaceable_components(target):
            if problem not in problems:
                problems.append(problem)
    return problems


def guard_paths(command: Sequence[str]) -> list[str]:
    """The files and directories a wrapper re-checks before it execs ``command``: every
    existing component (as named and resolved) of the executable, the interpreter of a
    ``#!`` script and the quiesce package directory, from ``/`` down."""
    import quiesce

    targets = [command[0]]
    interpreter = _interpreter(command[0])
    if interpreter:
        targets.append(interpreter)
    targets.append(os.path.dirname(os.path.abspath(quiesce.__file__)))
    paths: list[str] = []
    for target in targets:
        for candidate in (os.path.abspath(target), os.path.realpath(target)):
            parts = candidate.split("/")
            for end in range(1, len(parts) + 1):
                component = "/".join(parts[:end]) or "/"
                if component not in paths and os.path.lexists(component):
                    paths.append(component)
    return paths


# The wrapper's own re-check, in POSIX sh: ``replaceable PATH`` succeeds when PATH (not a
# symlink: only its directory, also listed, can replace one) is missing, writable by group or
# other (sticky or not), or owned by a uid other than the trusted ones. ``ls -ldn`` is POSIX;
# a missing /bin/ls reads as "replaceable", so the wrapper fails closed.
_GUARD = """\
replaceable() {{
    [ -L "$1" ] && return 1
    [ -e "$1" ] || return 0
    read -r mode _ uid _ <<LS
$(LC_ALL=C /bin/ls -ldn -- "$1" 2>/dev/null)
LS
    case "$mode" in ?????w*|????????w*) return 0 ;; esac
    case "$uid" in {uids}) return 1 ;; esac
    return 0
}}
for path in {paths}; do
    if replaceable "$path"; then
        echo "{name}: refusing to run quiesce: $path could be replaced by a user other than" \\
             "root (it must exist, be root-owned and not group/other-writable); reinstall" \\
             "quiesce where only root can write and rerun 'quiesce install azure --force'" >&2
        exit 126
    fi
done
"""

#: The wrapper's exit status when its re-check refuses (the shell's "cannot execute").
GUARD_EXIT = 126


def wrapper_script(phase: str, toml_path: str, command: Sequence[str], *,
                   azure_config_path: str | None = None,
                   guard: Sequence[str] = ()) -> bytes:
    """The ``#!/bin/sh`` wrapper for ``phase``.

    The pre-script passes ``--azure-config`` so that ``quiesce pre`` reads the Azure config at
    run time and finishes (all held, or nothing) before ``timeoutInSeconds`` (see
    :mod:`quiesce.callers.caller_deadline`). ``guard`` lists the paths the wrapper re-checks before
    the exec (:func:`guard_paths`): at every backup, not only at install, the quiesce it runs
    as root must not be replaceable by another user (a venv under a tmp-cleaned /tmp is).
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
    if guard:
        uids = "|".join(dict.fromkeys(["0", str(os.geteuid())]))
        text += ("# Refuse to run quiesce as root if anyone but root could have replaced it.\n"
                 + _GUARD.format(uids=uids, paths=" ".join(shlex.quote(p) for p in guard),
                                 name=f"quiesce-{phase}.sh"))
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
    }
    return (json.dumps(document, indent=4) + "\n").encode()


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    return json.dumps(value)


def _type_example(field: Any) -> str:
    types = field.type if isinstance(field.type, tuple) else (field.type,)
    if field.choices:
        return _toml_value(field.choices[0])
    if str in types:
        return '"..."'
    if bool in types:
        return "false"
    if int in types or float in types:
        return "0"
    if list in types:
        return "[]"
    return '"..."'


def key_doc(field: Any) -> str:
    """The comment shown under a key in the skeleton: the schema's ``Field.doc`` (what the
    key is), never ``Field.hint`` (the fix a validation problem shows); empty when the field
    has no doc."""
    return str(getattr(field, "doc", "") or "").strip()


def example_section(engine: Any) -> str:
    """A commented ``[[engine]]`` section: the plugin's own example, or one from its schema."""
    custom = engine.extra.get("example_section") if engine.extra else None
    if isinstance(custom, str) and custom.strip():
        body = custom.strip("\n").splitlines()
        return "\n".join(line if line.startswith("#") else f"# {line}" for line in body) + "\n"
    import textwrap

    from quiesce.schema import _MISSING

    lines = [f"# [[{engine.name}]]",
             f'# name = "main"    # required when there are several [[{engine.name}]] sections']
    for key, field in engine.schema.fields.items():
        if key == "name" or not hasattr(field, "type"):
            continue
        if field.default is not _MISSING:
            value, tag = _toml_value(field.default), "default"
        else:
            value = _type_example(field)
            tag = "required" if field.required else "optional"
        lines.append(f"# {key} = {value}    # {tag}")
        doc = key_doc(field)
        if doc:
            lines.extend(f"#       {text}" for text in textwrap.wrap(doc, 80))
    return "\n".join(lines) + "\n"


def toml_skeleton(engines: Sequence[Any], max_hold: float) -> bytes:
    names = [e.name for e in engines]
    parts = [
        "# quiesce.toml: the databases 'quiesce pre' quiesces before a snapshot.",
        "# Reference: docs/configuration.md. Keep this file root-owned, mode 600.",
        "# Passwords never go here: name root-owned, mode 600 files instead",
        "# (password_file, uri_file, passfile).",
        "",
        "# Engines to quiesce. Left out, it is every engine that has a section below;",
        "# uncomment it to quiesce fewer. (Selecting an engine without a section is an error,",
        "# so this stays commented until the sections are filled in.)",
        f"# plugins = {json.dumps(names)}",
        "",
        "# The dead-man switch: locks are released by themselves after this many seconds",
        "# if 'quiesce post' never comes (and 'post' then reports the snapshot as not",
        "# application-consistent).",
        f"max_hold_seconds = {_toml_value(max_hold)}",
        f"# pre_timeout_seconds = {DEFAULT_PRE_TIMEOUT}",
        '# state_dir = "/var/lib/quiesce"',
        "",
        "# Uncomment and fill in one section per database instance:",
        "",
    ]
    for engine in engines:
        if engine.description:
            parts.append(f"# {engine.name}: {engine.description}")
        parts.append(example_section(engine))
    return ("\n".join(parts).rstrip("\n") + "\n").encode()


def _join(prefix: str, relative: str) -> str:
    return os.path.join(os.path.abspath(prefix), relative)


def _classify(planned: PlannedFile, force: bool, stamp: str) -> None:
    try:
        st = os.stat(planned.path, follow_symlinks=False)
    except FileNotFoundError:
        planned.action = CREATE
        return
    same = False
    if stat.S_ISREG(st.st_mode):
        with open(planned.path, "rb") as handle:
            same = handle.read() == planned.content
    if same:
        wrong = stat.S_IMODE(st.st_mode) != planned.mode or st.st_uid != os.geteuid()
        planned.action = FIX_MODE if wrong else UNCHANGED
        return
    if force:
        planned.action = REPLACE
        planned.backup = f"{planned.path}.bak-{stamp}"
    elif planned.path.endswith(QUIESCE_TOML):
        planned.action = KEEP
    else:
        planned.action = CONFLICT


def plan(prefix: str = "/", plugins: Sequence[str] | None = None, *, force: bool = False,
         max_hold: float = DEFAULT_MAX_HOLD) -> list[PlannedFile]:
    """What would be written, and what happens to each file (nothing is touched)."""
    from quiesce.plugins import Plugins
    from quiesce.settings import installed_engine_names

    manager = Plugins()
    names = list(plugins) if plugins else installed_engine_names()
    manager.load_entry_points(only=names)
    engines = [manager.engines.get(n) for n in names if n in manager.engines]
    toml_path = _join(prefix, QUIESCE_TOML)
    pre_path = _join(prefix, PRE_SCRIPT)
    post_path = _join(prefix, POST_SCRIPT)
    azure_path = _join(prefix, AZURE_CONFIG)
    command = quiesce_command()
    guard = guard_paths(command)
    stamp = time.strftime("%Y%m%dT%H%M%S")
    toml = PlannedFile(toml_path, toml_skeleton(engines, max_hold), 0o600)
    _classify(toml, force, stamp)
    # An existing quiesce.toml that stays is the one 'quiesce pre' will use: the Azure timeout
    # must fit its pre_timeout_seconds, not the default's.
    pre_timeout = DEFAULT_PRE_TIMEOUT
    if toml.action in (KEEP, UNCHANGED, FIX_MODE):
        pre_timeout = _existing_pre_timeout(toml_path)
    files = [
        PlannedFile(azure_path,
                    azure_config(pre_path, post_path,
                                 azure_timeout(max_hold, pre_timeout)), 0o600),
        PlannedFile(pre_path, wrapper_script("pre", toml_path, command,
                                             azure_config_path=azure_path, guard=guard), 0o700),
        PlannedFile(post_path, wrapper_script("post", toml_path, command, guard=guard), 0o700),
    ]
    for planned in files:
        _classify(planned, force, stamp)
    return [*files, toml]


def _existing_pre_timeout(path: str) -> float:
    """pre_timeout_seconds of an existing quiesce.toml, read leniently (validation is
    ``quiesce check``'s job); the default when the file does not give a usable one."""
    import tomllib

    try:
        with open(path, "rb") as handle:
            value = tomllib.load(handle).get("pre_timeout_seconds", DEFAULT_PRE_TIMEOUT)
    except (OSError, ValueError):
        return DEFAULT_PRE_TIMEOUT
    if isinstance(value, bool) or not isinstance(value, int | float) or not 0 < value <= 1800:
        return DEFAULT_PRE_TIMEOUT
    return float(value)


def _ensure_dirs(prefix: str) -> None:
    base = os.path.abspath(prefix)
    if not os.path.isdir(base):
        os.makedirs(base, 0o755)
    for relative, mode in DIR_MODES.items():
        path = os.path.join(base, relative)
        try:
            os.mkdir(path, mode)
        except FileExistsError:
            st = os.stat(path)
            if not stat.S_ISDIR(st.st_mode):
                raise QuiesceError(f"{path} exists and is not a directory") from None
            continue
        os.chmod(path, mode)
        if os.geteuid() == 0:
            os.chown(path, 0, 0)


def _write(planned: PlannedFile) -> None:
    write_atomic(planned.path, planned.content, planned.mode, root_owned=True,
                 backup=planned.backup or None)


def apply(files: Sequence[PlannedFile]) -> None:
    """Write the plan. Refuses (writing nothing) when any file is a conflict."""
    conflicts = [f for f in files if f.action == CONFLICT]
    if conflicts:
        listed = ", ".join(f.path for f in conflicts)
        raise InstallConflict(
            f"{len(conflicts)} existing file(s) differ from what would be installed: {listed}; "
            "nothing was written",
            hint="compare them with 'quiesce install azure --dry-run', then rerun with --force "
                 "(the old files are kept as .bak-<time> backups)")
    prefixes = {os.path.dirname(os.path.dirname(os.path.dirname(f.path))) for f in files}
    for prefix in prefixes:
        _ensure_dirs(prefix)
    for planned in files:
        if planned.action in (CREATE, REPLACE):
            _write(planned)
        elif planned.action == FIX_MODE:
            if os.geteuid() == 0:
                os.chown(planned.path, 0, 0, follow_symlinks=False)
            os.chmod(planned.path, planned.mode)
