"""What every ``quiesce install <agent>`` shares: planning files, deciding what happens to each,
writing them root-owned and atomically, the quiesce.toml skeleton, the safety checks of the
quiesce the hooks run, and the install manifest.

An agent's module (:mod:`quiesce.callers.install.azure`, ``qemu_ga``, ``vmware``, ``gce``,
``aws``) only says which files its agent needs, with which content and mode, and what the DBA
must switch on in the agent; this module does the rest:

- **classification**: a file that does not exist is "create"; one whose content and mode
  already match is "unchanged" (its owner or mode alone differing: "fix-mode"); one that
  differs is a "conflict", and nothing at all is written while any file is one, unless
  ``--force``, which replaces it and keeps the old one as ``<path>.bak-<time>``. An existing
  quiesce.toml is the DBA's configuration: it is kept ("keep"), and only ``--force`` replaces
  it. An agent's own configuration file (qemu-ga.conf, tools.conf, instance_configs.cfg) is
  written only when it is missing and is never replaced, not even with ``--force``: it may hold
  settings quiesce knows nothing about; ``quiesce check`` then says whether its switch is on.
- **the manifest**: every install that writes (or finds) its files records them in
  ``<prefix>/var/lib/quiesce/installed/<agent>.json`` (0600, written atomically) for
  ``quiesce uninstall``: each file's path as seen inside the tree, the sha256 of the content
  quiesce wrote, its mode and what the install did ("create", "replace" or "same"), and the
  backups ``--force`` made.
- **the trees**: with ``--prefix``, Azure's files name the prefixed paths (the tree is checked
  from outside, as it always was); every other agent's files name the paths as seen from
  inside the tree, as if it were ``/`` (a chroot, an image being prepared), and the quiesce the
  hooks run must then exist inside the tree (``--quiesce PATH`` names it when it is not where
  this one is).
"""

from __future__ import annotations

import contextlib
import datetime
import hashlib
import json
import os
import shlex
import stat
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from quiesce.atomic import write_atomic
from quiesce.errors import QuiesceError
from quiesce.settings import DEFAULT_PRE_TIMEOUT

QUIESCE_TOML = "etc/quiesce/quiesce.toml"
MANIFEST_DIR = "var/lib/quiesce/installed"
#: Where --force keeps the previous version of a hook whose directory the agent runs whole.
BACKUP_DIR = "etc/quiesce/install-backups"
MANIFEST_VERSION = 1

CREATE = "create"
UNCHANGED = "unchanged"
REPLACE = "replace"  # differs, --force: backed up, then written
FIX_MODE = "fix-mode"  # same content, wrong mode or owner
KEEP = "keep"  # an existing quiesce.toml (the DBA's) or agent configuration: left alone
CONFLICT = "conflict"

# Directories the installs may create, and their modes when they do (an existing one is never
# chmodded): /etc/quiesce may hold the secret files the TOML names; /var/lib/quiesce is the
# default state dir (run records).
COMMON_DIR_MODES = {"etc": 0o755, "etc/quiesce": 0o700, "var": 0o755, "var/lib": 0o755,
                    "var/lib/quiesce": 0o700, MANIFEST_DIR: 0o700, BACKUP_DIR: 0o700}


class InstallConflict(QuiesceError):
    """Existing files differ from what would be installed and --force was not given."""


@dataclass
class PlannedFile:
    path: str  # where it is written (the prefix joined)
    content: bytes
    mode: int
    action: str = CREATE
    backup: str | None = None
    inner: str = ""  # the path as seen inside the tree ("" : same as path)
    # The DBA's configuration (quiesce.toml): an existing one is kept unless --force.
    keep_existing: bool = False
    # An agent's configuration: an existing one is kept, even with --force.
    never_replace: bool = False
    # Where a --force backup goes when not beside the file (a directory whose every file the
    # agent runs, like VMware's backupScripts.d, must never hold one): a directory of the tree.
    backup_dir: str = ""

    @property
    def display_mode(self) -> str:
        return f"{self.mode:04o}"

    @property
    def tree_path(self) -> str:
        return self.inner or self.path


@dataclass
class Plan:
    """What ``install <agent>`` would do: its files, the directories it may create, and what
    the DBA still has to do in the agent itself (printed, never done behind their back)."""

    agent: str
    prefix: str
    files: list[PlannedFile]
    dir_modes: dict[str, int] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    deadline: float | None = None
    manifest: str = ""

    def file(self, inner_suffix: str) -> PlannedFile:
        return next(f for f in self.files if f.tree_path.endswith(inner_suffix))


# --- the quiesce the hooks run ---------------------------------------------------------------


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


def _run_targets(command: Sequence[str]) -> list[str]:
    """What running ``command`` trusts: the executable, the interpreter of a ``#!`` script,
    and the quiesce package directory."""
    import quiesce

    targets = [command[0]]
    interpreter = _interpreter(command[0])
    if interpreter:
        targets.append(interpreter)
    targets.append(os.path.dirname(os.path.abspath(quiesce.__file__)))
    return targets


def command_problems(command: Sequence[str]) -> list[str]:
    """Why the wrappers' command is not safe to run as root at every backup (empty: safe).

    The backup agents run their hooks as root; a hook that execs a program (or an
    interpreter, or the quiesce package) that another user can replace would hand that user
    root. Checked: the executable, the interpreter of a ``#!`` script, the quiesce package
    directory, and every directory above them, by the rule of
    :func:`quiesce.security.replaceable_components` (sticky ``/tmp`` is refused too).
    """
    from quiesce.security import replaceable_components

    problems: list[str] = []
    for target in _run_targets(command):
        for problem in replaceable_components(target):
            if problem not in problems:
                problems.append(problem)
    return problems


def guard_paths(command: Sequence[str]) -> list[str]:
    """The files and directories a wrapper re-checks before it execs ``command``: every
    existing component (as named and resolved) of the executable, the interpreter of a
    ``#!`` script and the quiesce package directory, from ``/`` down."""
    paths: list[str] = []
    for target in _run_targets(command):
        for candidate in (os.path.abspath(target), os.path.realpath(target)):
            parts = candidate.split("/")
            for end in range(1, len(parts) + 1):
                component = "/".join(parts[:end]) or "/"
                if component not in paths and os.path.lexists(component):
                    paths.append(component)
    return paths


def is_root_prefix(prefix: str) -> bool:
    return os.path.realpath(prefix) == "/"


def join(prefix: str, inner: str) -> str:
    """``inner`` (absolute, as seen inside the tree) under ``prefix``."""
    return os.path.join(os.path.abspath(prefix), inner.lstrip("/"))


_MAX_LINKS = 40


def _tree_components(prefix: str, inner: str, out: list[str], problems: list[str],
                     depth: int = 0) -> None:
    """Every component of ``inner`` inside the tree, symlinks followed the way the kernel
    would follow them once the tree is ``/`` (an absolute target stays inside the tree)."""
    if depth > _MAX_LINKS:
        problems.append(f"{inner}: too many levels of symbolic links")
        return
    parts = [p for p in os.path.normpath(inner).split("/") if p]
    current = "/"
    if current not in out:
        out.append(current)
    for index, part in enumerate(parts):
        current = os.path.join(current, part)
        host = join(prefix, current)
        try:
            st = os.lstat(host)
        except OSError as exc:
            problems.append(f"{current} (inside {prefix}): cannot be examined ({exc.strerror})")
            return
        if current not in out:
            out.append(current)
        if stat.S_ISLNK(st.st_mode):
            target = os.readlink(host)
            if not os.path.isabs(target):
                target = os.path.join(os.path.dirname(current), target)
            rest = "/".join(parts[index + 1:])
            _tree_components(prefix, os.path.join(target, rest) if rest else target, out,
                             problems, depth + 1)
            return


def _tree_package_dir(prefix: str, command: Sequence[str]) -> str | None:
    """The quiesce package directory a venv's ``bin/quiesce`` inside the tree imports."""
    import glob

    venv = os.path.dirname(os.path.dirname(command[0]))
    found = sorted(glob.glob(join(prefix, os.path.join(venv, "lib", "python3*",
                                                      "site-packages", "quiesce"))))
    if not found:
        return None
    return "/" + os.path.relpath(found[-1], os.path.abspath(prefix))


def tree_command_paths(prefix: str, command: Sequence[str]) -> tuple[list[str], list[str]]:
    """(paths the hook re-checks, problems) for a quiesce inside the tree at ``prefix``:
    the executable, its ``#!`` interpreter and its package directory, every component as named
    and as resolved inside the tree. A component another user could replace is a problem."""
    from quiesce.security import owner_name, trusted_uids

    targets = [command[0]]
    interpreter = _interpreter(join(prefix, command[0]))
    if interpreter:
        targets.append(interpreter)
    package = _tree_package_dir(prefix, command)
    if package:
        targets.append(package)
    paths: list[str] = []
    problems: list[str] = []
    for target in targets:
        _tree_components(prefix, target, paths, problems)
    trusted = trusted_uids(None)
    for inner in paths:
        try:
            st = os.lstat(join(prefix, inner))
        except OSError:
            continue
        if stat.S_ISLNK(st.st_mode):
            continue
        mode = stat.S_IMODE(st.st_mode)
        if st.st_uid not in trusted:
            problems.append(f"{inner} (inside {prefix}) is owned by {owner_name(st.st_uid)}")
        if mode & 0o022:
            problems.append(f"{inner} (inside {prefix}) is writable by group/other "
                            f"(mode {mode:04o})")
    return paths, problems


def resolve_command(prefix: str, explicit: str | None) -> tuple[list[str], list[str], list[str]]:
    """(argv the hooks run, the paths they re-check, problems) for a tree seen from inside.

    With the prefix ``/`` it is this quiesce (or ``explicit``); under another prefix it must
    exist inside the tree: ``explicit`` (an absolute path inside the tree) or, when this
    quiesce's own path also exists there, that one."""
    if explicit is not None and not os.path.isabs(explicit):
        raise QuiesceError(f"--quiesce {explicit!r} is not an absolute path",
                           hint="name the quiesce executable as seen inside the tree, e.g. "
                                "--quiesce /opt/quiesce/bin/quiesce")
    if is_root_prefix(prefix):
        command = [explicit] if explicit else quiesce_command()
        if explicit and not (os.path.isfile(explicit) and os.access(explicit, os.X_OK)):
            raise QuiesceError(f"--quiesce {explicit} is not an executable file",
                               hint="name the quiesce executable the hooks should run")
        return command, guard_paths(command), command_problems(command)
    command = [explicit] if explicit else quiesce_command()
    host = join(prefix, command[0])
    if not (os.path.isfile(host) and os.access(host, os.X_OK)):
        where = "--quiesce names" if explicit else "this quiesce is"
        raise QuiesceError(
            f"{where} {command[0]}, which does not exist inside {prefix} ({host} is not an "
            "executable file): the hooks would run nothing there",
            hint="install quiesce inside the tree first, then give its path as seen inside "
                 "the tree with --quiesce PATH (e.g. --quiesce /opt/quiesce/bin/quiesce)")
    paths, problems = tree_command_paths(prefix, command)
    return command, paths, problems


# --- the hook's shell --------------------------------------------------------------------------

# The hook's own re-check, in POSIX sh: ``replaceable PATH`` succeeds when PATH (not a
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
             "quiesce where only root can write and rerun 'quiesce install {agent} --force'" >&2
        exit 126
    fi
done
"""

#: The wrapper's exit status when its re-check refuses (the shell's "cannot execute").
GUARD_EXIT = 126


def guard_block(guard: Sequence[str], name: str, agent: str) -> str:
    """The shell lines that refuse to run quiesce when anything in ``guard`` could be
    replaced by a user other than root (empty when there is nothing to check)."""
    if not guard:
        return ""
    uids = "|".join(dict.fromkeys(["0", str(os.geteuid())]))
    return ("# Refuse to run quiesce as root if anyone but root could have replaced it.\n"
            + _GUARD.format(uids=uids, paths=" ".join(shlex.quote(p) for p in guard),
                            name=name, agent=agent))


def ini_group(path: str, group: str) -> dict[str, str] | None:
    """The keys of ``[group]`` in an agent's INI file ({} without the group), None when the
    file is missing or unreadable (VMware's tools.conf, GCE's instance_configs.cfg)."""
    import configparser

    parser = configparser.ConfigParser(interpolation=None, strict=False)
    try:
        with open(path, encoding="utf-8") as handle:
            parser.read_file(handle)
    except (OSError, UnicodeDecodeError, configparser.Error):
        return None
    return dict(parser.items(group)) if parser.has_section(group) else {}


def quoted(argv: Sequence[str]) -> str:
    return " ".join(shlex.quote(part) for part in argv)


# --- the quiesce.toml skeleton -----------------------------------------------------------------


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
    for key, spec in engine.schema.fields.items():
        if key == "name" or not hasattr(spec, "type"):
            continue
        if spec.default is not _MISSING:
            value, tag = _toml_value(spec.default), "default"
        else:
            value = _type_example(spec)
            tag = "required" if spec.required else "optional"
        lines.append(f"# {key} = {value}    # {tag}")
        doc = key_doc(spec)
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


def load_engines(plugins: Sequence[str] | None) -> list[Any]:
    """The engines the skeleton shows: ``plugins``, or every installed one."""
    from quiesce.plugins import Plugins
    from quiesce.settings import installed_engine_names

    manager = Plugins()
    names = list(plugins) if plugins else installed_engine_names()
    manager.load_entry_points(only=names)
    return [manager.engines.get(n) for n in names if n in manager.engines]


def existing_pre_timeout(path: str) -> float:
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


# --- classifying and writing -------------------------------------------------------------------


def stamp() -> str:
    return time.strftime("%Y%m%dT%H%M%S")


def classify(planned: PlannedFile, force: bool, when: str) -> None:
    """Decide what happens to ``planned`` (see the module docstring)."""
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
    if planned.never_replace or (planned.keep_existing and not force):
        planned.action = KEEP
    elif force:
        planned.action = REPLACE
        planned.backup = f"{planned.path}.bak-{when}"
        if planned.backup_dir:
            planned.backup = os.path.join(planned.backup_dir,
                                          f"{os.path.basename(planned.path)}.bak-{when}")
    else:
        planned.action = CONFLICT


def classify_all(files: Sequence[PlannedFile], force: bool) -> None:
    when = stamp()
    for planned in files:
        classify(planned, force, when)


def ensure_dirs(prefix: str, dir_modes: dict[str, int], files: Sequence[PlannedFile]) -> None:
    """Create the tree's directories the files need: those named in ``dir_modes`` with their
    mode, any other with 0755; root-owned when we are root. An existing one is left as it
    is (a mistyped prefix must never chmod /etc)."""
    base = os.path.abspath(prefix)
    if not os.path.isdir(base):
        os.makedirs(base, 0o755)
    wanted: dict[str, int] = {}
    for planned in files:
        directory = os.path.dirname(os.path.relpath(planned.path, base))
        parts = directory.split("/") if directory else []
        for end in range(1, len(parts) + 1):
            relative = "/".join(parts[:end])
            wanted.setdefault(relative, dir_modes.get(relative, 0o755))
    for relative in sorted(wanted, key=lambda r: r.count("/")):
        path = os.path.join(base, relative)
        try:
            os.mkdir(path, wanted[relative])
        except FileExistsError:
            if not os.path.isdir(path):
                raise QuiesceError(f"{path} exists and is not a directory") from None
            continue
        os.chmod(path, wanted[relative])
        if os.geteuid() == 0:
            os.chown(path, 0, 0)


def refuse_conflicts(files: Sequence[PlannedFile], agent: str) -> None:
    conflicts = [f for f in files if f.action == CONFLICT]
    if conflicts:
        listed = ", ".join(f.path for f in conflicts)
        raise InstallConflict(
            f"{len(conflicts)} existing file(s) differ from what would be installed: {listed}; "
            "nothing was written",
            hint=f"compare them with 'quiesce install {agent} --dry-run', then rerun with "
                 "--force (the old files are kept as .bak-<time> backups)")


def write_files(files: Sequence[PlannedFile]) -> None:
    for planned in files:
        if planned.action in (CREATE, REPLACE):
            write_atomic(planned.path, planned.content, planned.mode, root_owned=True,
                         backup=planned.backup or None)
        elif planned.action == FIX_MODE:
            if os.geteuid() == 0:
                os.chown(planned.path, 0, 0, follow_symlinks=False)
            os.chmod(planned.path, planned.mode)


def apply(plan: Plan) -> str:
    """Write the plan and its manifest; returns the manifest's path. Refuses (writing nothing)
    when any file is a conflict."""
    refuse_conflicts(plan.files, plan.agent)
    backups = [PlannedFile(f.backup, b"", 0o600) for f in plan.files if f.backup]
    ensure_dirs(plan.prefix, {**COMMON_DIR_MODES, **plan.dir_modes}, [*plan.files, *backups])
    write_files(plan.files)
    return write_manifest(plan)


# --- the manifest ------------------------------------------------------------------------------


def manifest_path(prefix: str, agent: str) -> str:
    return join(prefix, f"/{MANIFEST_DIR}/{agent}.json")


def read_manifest(prefix: str, agent: str) -> dict[str, Any] | None:
    """The manifest of ``agent`` under ``prefix``, or None (missing or unreadable)."""
    try:
        with open(manifest_path(prefix, agent), "rb") as handle:
            document = json.loads(handle.read(1024 * 1024))
    except (OSError, ValueError):
        return None
    return document if isinstance(document, dict) else None


def installed_agents(prefix: str) -> list[str]:
    """The agents with a manifest under ``prefix``, in a stable order."""
    from quiesce.callers.install import AGENTS

    directory = join(prefix, f"/{MANIFEST_DIR}")
    try:
        names = os.listdir(directory)
    except OSError:
        return []
    return [agent for agent in AGENTS if f"{agent}.json" in names]


def _manifest_action(planned: PlannedFile, previous: dict[str, dict[str, Any]],
                     digest: str) -> str:
    if planned.action == CREATE:
        return "create"
    if planned.action == REPLACE:
        return "replace"
    # Already there with this content: an earlier install of ours made it when the earlier
    # manifest says so, and uninstall should still know that.
    earlier = previous.get(planned.tree_path)
    if earlier and earlier.get("sha256") == digest and earlier.get("action") in ("create",
                                                                                 "replace"):
        return str(earlier["action"])
    return "same"


def manifest_document(plan: Plan) -> dict[str, Any]:
    previous_doc = read_manifest(plan.prefix, plan.agent) or {}
    previous = {str(f.get("path")): f for f in previous_doc.get("files", [])
                if isinstance(f, dict)}
    files = []
    backups = []
    for planned in plan.files:
        if planned.action == KEEP:
            continue  # not what quiesce wrote: the DBA's or the agent's own file
        digest = hashlib.sha256(planned.content).hexdigest()
        files.append({"path": planned.tree_path, "sha256": digest,
                      "mode": planned.display_mode,
                      "action": _manifest_action(planned, previous, digest)})
        if planned.backup:
            backups.append(_tree_path(plan.prefix, planned.backup))
    for earlier in previous_doc.get("backups", []):
        if isinstance(earlier, str) and earlier not in backups and os.path.lexists(
                join(plan.prefix, earlier)):
            backups.insert(0, earlier)
    return {"version": MANIFEST_VERSION, "agent": plan.agent,
            "prefix": os.path.abspath(plan.prefix),
            "installed_at": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
            "files": files, "backups": backups}


def _tree_path(prefix: str, host_path: str) -> str:
    """A host path under ``prefix`` as seen inside the tree."""
    return "/" + os.path.relpath(host_path, os.path.abspath(prefix))


def write_manifest(plan: Plan) -> str:
    path = manifest_path(plan.prefix, plan.agent)
    directory = os.path.dirname(path)
    if not os.path.isdir(directory):
        ensure_dirs(plan.prefix, COMMON_DIR_MODES,
                    [PlannedFile(path, b"", 0o600)])
    document = manifest_document(plan)
    previous = read_manifest(plan.prefix, plan.agent)
    st = os.stat(path) if previous is not None else None
    if previous is not None and st is not None and stat.S_IMODE(st.st_mode) == 0o600 \
            and st.st_uid == os.geteuid() \
            and {**previous, "installed_at": None} == {**document, "installed_at": None}:
        plan.manifest = path  # nothing changed: installed_at stays when the files were written
        return path
    data = (json.dumps(document, indent=2) + "\n").encode()
    write_atomic(path, data, 0o600, root_owned=True)
    plan.manifest = path
    return path


def sha256_of(path: str) -> str | None:
    with contextlib.suppress(OSError), open(path, "rb") as handle:
        return hashlib.sha256(handle.read()).hexdigest()
    return None


# --- what an agent's module gets ---------------------------------------------------------------


@dataclass
class Context:
    """What ``install <agent>`` was asked for, resolved once for the agent's module."""

    agent: str
    prefix: str = "/"
    plugins: Sequence[str] | None = None
    max_hold: float = 300
    force: bool = False
    deadline: float | None = None  # --deadline: the agent's limit is not visible in the guest
    quiesce: str | None = None  # --quiesce: the executable as seen inside the tree
    options: dict[str, Any] = field(default_factory=dict)
    # Resolved by :func:`resolve`: the argv the hooks run, what they re-check, and why that
    # quiesce is unsafe to run as root (empty: safe).
    command: list[str] = field(default_factory=list)
    guard: list[str] = field(default_factory=list)
    unsafe: list[str] = field(default_factory=list)


def resolve(ctx: Context) -> Context:
    """Fill in the quiesce the hooks run, as seen inside the tree."""
    ctx.command, ctx.guard, ctx.unsafe = resolve_command(ctx.prefix, ctx.quiesce)
    return ctx


def skeleton_file(ctx: Context) -> PlannedFile:
    """The quiesce.toml skeleton, kept when one exists (the DBA's configuration)."""
    return PlannedFile(join(ctx.prefix, "/" + QUIESCE_TOML),
                       toml_skeleton(load_engines(ctx.plugins), ctx.max_hold), 0o600,
                       inner="/" + QUIESCE_TOML, keep_existing=True)


def pre_budget(ctx: Context) -> float:
    """pre_timeout_seconds of the quiesce.toml the hooks will use (an existing one's, else the
    default): 'pre' never takes longer than that, whatever its --deadline."""
    return existing_pre_timeout(join(ctx.prefix, "/" + QUIESCE_TOML))


def hook_text(*, agent: str, name: str, title: str, about: Sequence[str], guard: Sequence[str],
              body: str) -> bytes:
    """A ``#!/bin/sh`` hook: a comment saying what it is, the re-check of the quiesce it runs,
    then ``body``."""
    lines = ["#!/bin/sh", f"# {title}, installed by 'quiesce install {agent}'.",
             *(f"# {line}" for line in about),
             "# See docs/platforms.md. Rerun 'quiesce install' rather than editing it.", ""]
    return ("\n".join(lines) + guard_block(guard, name, agent) + body).encode()


def fail_loudly(name: str, what: str, consequence: str, indent: str = "    ") -> str:
    """Shell lines after a quiesce call: a failure is said on stderr, where every agent logs
    it, with what it means for the snapshot; the status is kept in ``$status``."""
    message = shlex.quote(f"{name}: FAILED: {what} exited ")
    rest = shlex.quote(f": {consequence}")
    return (f"{indent}status=$?\n"
            f'{indent}[ "$status" -eq 0 ] || echo {message}"$status"{rest} >&2\n')
