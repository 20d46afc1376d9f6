"""quiesce.toml: the database instances ``quiesce pre`` quiesces, validated all at once.

The file (``/etc/quiesce/quiesce.toml`` by default) must be root-owned and not readable by
group/other: it names the secret files that hold passwords. Run by a non-root user, quiesce
also trusts that user's own files (the config and the secret files it names), never another
user's (:func:`quiesce.security.trusted_uids`). Top-level keys:

- ``plugins``: optional list of engine names to quiesce (default: every engine with a section);
- ``max_hold_seconds``: the dead-man deadline of a hold (default 300);
- ``pre_timeout_seconds``: the deadline for connecting, flushing and locking every instance
  (default 60);
- ``state_dir``: where run records are kept (default /var/lib/quiesce as root; as another user
  ``$XDG_STATE_HOME/quiesce`` or ``~/.local/state/quiesce``, see
  :func:`quiesce.hold.records.default_state_dir`);
- one array of tables per engine, named by the engine (``[[postgresql]]``, ``[[mysql]]``,
  ``[[mongodb]]``, or a third-party engine), validated against the engine plugin's schema plus
  the core's ``name`` key.

Only the plugins of selected engines are imported. Every problem is collected with its key path
and reported in one :class:`ConfigError`.
"""

from __future__ import annotations

import os
import re
import tomllib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from quiesce.errors import ConfigError, PermissionProblem, PluginError, Problem
from quiesce.schema import (
    Field,
    Table,
    TableList,
    closest_hint,
    document_problems,
    huge_integer_problem,
    too_deep_problem,
    unique,
)

if TYPE_CHECKING:
    # Imported where they are used: 'pre' reads the core keys (load_core_settings) before
    # the holder starts, without pluggy, importlib.metadata or the engine API.
    from quiesce.engine import EngineType, InstanceSettings
    from quiesce.plugins import Plugins

DEFAULT_PATH = "/etc/quiesce/quiesce.toml"
DEFAULT_STATE_DIR = "/var/lib/quiesce"
DEFAULT_MAX_HOLD = 300
MAX_HOLD_LIMIT = 3600  # an hour of blocked writes is an outage, not a backup
DEFAULT_PRE_TIMEOUT = 60
PRE_TIMEOUT_LIMIT = 1800  # Azure's own ceiling for a script phase

_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")


def _absolute(value: Any) -> str | None:
    if isinstance(value, str) and not os.path.isabs(value):
        return f"{value!r} is not an absolute path"
    return None


def _record_command(value: Any) -> str | None:
    if isinstance(value, list) and not value:
        return "names no command"
    if isinstance(value, list) and isinstance(value[0], str) and not os.path.isabs(value[0]):
        return (f"{value[0]!r} is not an absolute path: the command runs as the user 'post' "
                "runs as, so name it by its absolute path")
    return None


def _instance_name(value: Any) -> str | None:
    if isinstance(value, str) and not _NAME_RE.match(value):
        return (f"{value!r} is not a valid instance name: use 1-64 letters, digits, '.', '_' "
                "or '-', starting with a letter or digit")
    return None


CORE_FIELDS: dict[str, Field] = {
    "plugins": Field(list, items=str, hint='e.g. plugins = ["postgresql", "mysql"]',
                     doc="the engines to quiesce; left out, every engine that has a section"),
    "max_hold_seconds": Field((int, float), default=DEFAULT_MAX_HOLD, minimum=1,
                              maximum=MAX_HOLD_LIMIT,
                              hint="seconds the locks may stay held if 'post' never comes",
                              doc="the dead-man switch: seconds after which the locks are "
                                  "released by themselves if 'post' never comes"),
    "pre_timeout_seconds": Field((int, float), default=DEFAULT_PRE_TIMEOUT, minimum=1,
                                 maximum=PRE_TIMEOUT_LIMIT,
                                 hint="seconds 'pre' may spend connecting, flushing and locking",
                                 doc="seconds 'pre' may spend connecting, flushing and locking "
                                     "every instance"),
    # No schema default: it depends on who runs quiesce (default_state_dir, at load time).
    "state_dir": Field(str, check=_absolute,
                       hint="an absolute directory such as /var/lib/quiesce",
                       doc="the directory of the run records (default /var/lib/quiesce as "
                           "root)"),
    "keep_days": Field(int, minimum=1, maximum=100_000,
                       hint="at least as many days as your snapshots are kept, e.g. 400",
                       doc="days 'quiesce prune' keeps run records; at least as long as the "
                           "snapshots are kept, since a record is the only copy of its "
                           "snapshot's backup_label (left out, 'prune' needs --keep-days)"),
    "record_command": Field(list, items=str, check=_record_command,
                            hint='e.g. record_command = ["/usr/local/bin/ship", "{record}"]',
                            doc="a command 'post' runs after the release with the run record "
                                "(argv list, no shell; {record} is the record's path, {run_id} "
                                "its run id), e.g. to keep it next to the snapshot"),
    "record_command_timeout_seconds": Field((int, float), default=60, minimum=1,
                                            maximum=3600,
                                            hint="seconds record_command may run",
                                            doc="seconds record_command may run before it is "
                                                "killed"),
}

NAME_FIELD = Field(str, check=_instance_name,
                   doc="the instance's name, unique among the sections of its engine; "
                       "required when an engine has several sections")


@dataclass(frozen=True)
class Settings:
    """A validated quiesce.toml: the selected engines and their instances, in file order."""

    path: str
    engines: Mapping[str, EngineType]
    instances: tuple[InstanceSettings, ...]
    max_hold_seconds: float = DEFAULT_MAX_HOLD
    pre_timeout_seconds: float = DEFAULT_PRE_TIMEOUT
    state_dir: str = DEFAULT_STATE_DIR
    selected: tuple[str, ...] = ()
    warnings: tuple[str, ...] = field(default=())

    def engine_of(self, instance: InstanceSettings) -> EngineType:
        return self.engines[instance.engine]


def installed_engine_names() -> list[str]:
    """Names in the ``quiesce`` entry-point group, read without importing any plugin."""
    import importlib.metadata

    from quiesce import hookspecs

    return sorted({ep.name for ep in
                   importlib.metadata.entry_points(group=hookspecs.ENTRY_POINT_GROUP)})


def parse_plugin_list(text: str | Sequence[str] | None) -> list[str] | None:
    """``--plugins a,b`` (or a list) -> ["a", "b"]; None stays None."""
    if text is None:
        return None
    items = text.split(",") if isinstance(text, str) else list(text)
    return [item.strip() for item in items if item.strip()]


def _read(path: str, problems: list[Problem], check_permissions: bool) -> bytes | None:
    """The file's bytes through the checked descriptor; permission problems are collected.

    When the file is unsafe it is still read (without trusting it) so that its content
    problems are reported in the same message: the file is never *used* in that case.
    """
    from quiesce.security import TrustedFileNotFound, open_trusted

    if check_permissions:
        try:
            with open_trusted(path, "secret") as trusted:
                return trusted.read_bytes()
        except TrustedFileNotFound:
            problems.append(Problem(path, "no such file",
                                    "create it (see docs/configuration.md) or pass --config"))
            return None
        except PermissionProblem as exc:
            problems.extend(exc.problems)
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK)
    except FileNotFoundError:
        if not problems:
            problems.append(Problem(path, "no such file", "create it or pass --config"))
        return None
    except OSError as exc:
        if not check_permissions:
            problems.append(Problem(path, f"cannot be read: {exc.strerror}"))
        return None
    try:
        with os.fdopen(fd, "rb") as handle:
            return handle.read(16 * 1024 * 1024)
    except OSError as exc:  # e.g. a directory
        problems.append(Problem(path, f"cannot be read: {exc.strerror}"))
        return None


def _document(path: str, problems: list[Problem], check_permissions: bool) -> dict[str, Any]:
    """Read and parse quiesce.toml; raise ConfigError when there is no usable document."""
    raw = _read(path, problems, check_permissions)
    document: dict[str, Any] = {}
    if raw is not None:
        try:
            document = tomllib.loads(raw.decode("utf-8"))
        except UnicodeDecodeError as exc:
            problems.append(Problem(path, f"is not UTF-8 text: {exc}"))
        except tomllib.TOMLDecodeError as exc:
            problems.append(Problem(path, f"is not valid TOML: {exc}",
                                    "fix the syntax at the line and column shown"))
        except RecursionError:  # tomllib recurses once per nested array or inline table
            problems.append(too_deep_problem(path))
        except ValueError as exc:  # e.g. an integer of more than 4300 digits
            problems.append(huge_integer_problem(path, exc) or
                            Problem(path, f"is not valid TOML: {exc}"))
    if raw is None or (problems and not document):
        raise ConfigError(path, problems)
    shape = document_problems(document)
    problems.extend(shape)
    if any(p.message.startswith("is nested more than") for p in shape):
        raise ConfigError(path, problems)

    return document


@dataclass(frozen=True)
class CoreSettings:
    """The engine-neutral keys of quiesce.toml: what 'pre' needs before it starts the holder."""

    path: str
    max_hold_seconds: float
    pre_timeout_seconds: float
    state_dir: str
    keep_days: int | None = None
    record_command: tuple[str, ...] = ()
    record_command_timeout_seconds: float = 60.0


def load_core_settings(path: str = DEFAULT_PATH, *,
                       check_permissions: bool = True) -> CoreSettings:
    """Read and check quiesce.toml and validate only its engine-neutral keys: no plugin, no
    driver is imported. 'pre' uses it so that the full validation (load_settings, which
    imports the selected engines and e.g. psycopg) happens once, in the holder, before it
    quiesces anything. With a problem among those keys, the full validation runs here and
    raises with every problem of the file at once."""
    problems: list[Problem] = []
    document = _document(path, problems, check_permissions)
    core = Table(CORE_FIELDS).validate(
        {k: v for k, v in document.items() if k in CORE_FIELDS}, "", problems)
    state_dir = core.get("state_dir") or _default_state_dir(problems)
    if problems:
        load_settings(path, check_permissions=check_permissions)  # raises with everything
        raise ConfigError(path, unique(problems))
    max_hold = float(core.get("max_hold_seconds", DEFAULT_MAX_HOLD))
    pre_timeout = float(core.get("pre_timeout_seconds", DEFAULT_PRE_TIMEOUT))
    return CoreSettings(path=os.path.abspath(path), max_hold_seconds=max_hold,
                        pre_timeout_seconds=min(pre_timeout, max_hold), state_dir=state_dir,
                        keep_days=core.get("keep_days"),
                        record_command=tuple(core.get("record_command") or ()),
                        record_command_timeout_seconds=float(
                            core.get("record_command_timeout_seconds", 60)))


def load_settings(
    path: str = DEFAULT_PATH,
    *,
    plugins: Sequence[str] | None = None,
    check_permissions: bool = True,
    plugin_manager: Plugins | None = None,
) -> Settings:
    """Read, check and validate quiesce.toml; raise ConfigError listing every problem.

    ``plugins`` (from ``--plugins``) overrides the file's ``plugins`` selection.
    ``check_permissions=False`` skips the ownership/mode checks of the file and of the secret
    files it names (unit tests, ``--help`` style tooling); quiesce itself never passes it.
    ``plugin_manager`` is a :class:`quiesce.plugins.Plugins` to use instead of a fresh one
    (tests and embedders that register plugin objects directly).
    """
    from quiesce.plugins import Plugins

    problems: list[Problem] = []
    document = _document(path, problems, check_permissions)
    core_doc = {k: v for k, v in document.items() if k in CORE_FIELDS}
    core = Table(CORE_FIELDS).validate(core_doc, "", problems)
    sections = {k: v for k, v in document.items() if k not in CORE_FIELDS}

    # With a given plugin manager (tests, embedders) its registered engines are used as they
    # are; otherwise a fresh manager imports only the selected entry points.
    manager = plugin_manager if plugin_manager is not None else Plugins()
    if plugin_manager is not None:
        installed = set(plugin_manager.engines.names())
    else:
        installed = set(installed_engine_names())

    selected, where_selected = _selection(plugins, core, sections, installed, problems)
    _unknown_sections(sections, installed, selected, problems)
    engines = _load_engines(selected, where_selected, installed, manager,
                            load=plugin_manager is None, problems=problems)

    # Validate each selected engine's instances.
    max_hold = float(core.get("max_hold_seconds", DEFAULT_MAX_HOLD))
    pre_timeout = float(core.get("pre_timeout_seconds", DEFAULT_PRE_TIMEOUT))
    state_dir = core.get("state_dir") or _default_state_dir(problems)
    instances: list[InstanceSettings] = []
    for name in selected:
        if name not in sections:
            if name in installed:
                problems.append(Problem(
                    where_selected or name,
                    f"selects {name!r} but the file has no [[{name}]] section",
                    f"add a [[{name}]] section or remove {name!r} from the selection"))
            continue
        etype = engines.get(name)
        if etype is None:
            continue
        instances.extend(_instances(etype, sections[name], problems, max_hold=max_hold,
                                    state_dir=state_dir, check_permissions=check_permissions))

    if not problems and not instances:
        problems.append(Problem(path, "selects no database instance",
                                "add a section such as [[postgresql]] (see "
                                "docs/configuration.md)"))
    # Only between two usable values: an invalid one is already reported (and left out).
    given = "pre_timeout_seconds" in core_doc and "pre_timeout_seconds" in core
    if pre_timeout >= max_hold and given and "max_hold_seconds" in core:
        problems.append(Problem("pre_timeout_seconds",
                                f"{pre_timeout:g} must be shorter than max_hold_seconds "
                                f"({max_hold:g})", "lower pre_timeout_seconds"))
    if problems:
        raise ConfigError(path, unique(problems))
    return Settings(
        path=os.path.abspath(path),
        engines=engines,
        instances=tuple(instances),
        max_hold_seconds=max_hold,
        pre_timeout_seconds=min(pre_timeout, max_hold),
        state_dir=state_dir,
        selected=tuple(selected),
    )


def _selection(plugins: Sequence[str] | None, core: Mapping[str, Any],
               sections: Mapping[str, Any], installed: set[str],
               problems: list[Problem]) -> tuple[list[str], str]:
    """Which engines are selected (--plugins, else the file's ``plugins``, else every
    section), and where that selection was made (for key paths in messages)."""
    if plugins is not None:
        selected = list(dict.fromkeys(plugins))
        if not selected:
            problems.append(Problem("--plugins", "names no engine",
                                    "e.g. --plugins postgresql,mysql, or leave it out to use "
                                    "every engine the file has a section for"))
        return selected, "--plugins"
    if "plugins" in core:
        return list(dict.fromkeys(core["plugins"])), "plugins"
    return [k for k in sections if k in installed or _looks_like_section(sections[k])], ""


def _unknown_sections(sections: Mapping[str, Any], installed: set[str], selected: list[str],
                      problems: list[Problem]) -> None:
    """Top-level keys that are neither core keys nor an installed or selected engine."""
    known_keys = sorted(set(CORE_FIELDS) | installed)
    for key, value in sections.items():
        if key in installed or key in selected:
            continue
        if _looks_like_section(value):
            problems.append(Problem(
                key, f"no engine plugin named {key!r} is installed "
                f"(installed: {', '.join(sorted(installed)) or 'none'})",
                _fix_unknown(key, known_keys, "install the distribution that provides it, "
                             "or remove the section")))
        else:
            problems.append(Problem(key, "unknown key", closest_hint(key, known_keys)))


def _load_engines(selected: list[str], where_selected: str, installed: set[str],
                  manager: Plugins, *, load: bool,
                  problems: list[Problem]) -> dict[str, EngineType]:
    """The selected engines' types; only their plugins are imported (``load``), and a
    missing or broken plugin is a problem, never a silently skipped engine."""
    loadable: list[str] = []
    for name in selected:
        if name not in installed:
            problems.append(Problem(
                where_selected or name, f"no engine plugin named {name!r} is installed "
                f"(installed: {', '.join(sorted(installed)) or 'none'})",
                _fix_unknown(name, sorted(installed), "install the distribution providing it")))
            continue
        if load:
            try:
                manager.load_entry_points(only=[name])
            except PluginError as exc:
                problems.append(Problem(where_selected or name, str(exc), exc.hint))
                continue
        loadable.append(name)
    if not loadable:
        return {}
    try:
        registry = manager.engines
    except PluginError as exc:
        problems.append(Problem("plugins", str(exc), exc.hint))
        return {}
    engines: dict[str, EngineType] = {}
    for name in loadable:
        if name not in registry:
            problems.append(Problem(
                where_selected or name,
                f"the plugin {name!r} loaded but registered no engine named {name!r} "
                f"(it registered: {', '.join(registry.names()) or 'nothing'})",
                "name the entry point after the engine it registers"))
            continue
        engines[name] = registry.get(name)
    return engines


def _default_state_dir(problems: list[Problem]) -> str:
    from quiesce.errors import QuiesceError
    from quiesce.hold.records import default_state_dir

    try:
        return default_state_dir()
    except QuiesceError as exc:
        problems.append(Problem("state_dir", str(exc), exc.hint))
        return DEFAULT_STATE_DIR


def _looks_like_section(value: Any) -> bool:
    return isinstance(value, dict) or (
        isinstance(value, list) and bool(value) and all(isinstance(v, dict) for v in value))


def _fix_unknown(key: str, known: list[str], fallback: str) -> str:
    hint = closest_hint(key, known)
    return hint if hint.startswith("did you mean") else fallback


def _instances(etype: EngineType, value: Any, problems: list[Problem], *, max_hold: float,
               state_dir: str, check_permissions: bool) -> list[InstanceSettings]:
    from quiesce.engine import InstanceSettings

    name = etype.name
    schema = Table({**etype.schema.fields, "name": NAME_FIELD},
                   allow_unknown=etype.schema.allow_unknown)
    before = len(problems)
    tables = TableList(schema, unique_key="name").validate(value, name, problems)
    several = len(tables) > 1
    out: list[InstanceSettings] = []
    for i, options in enumerate(tables):
        where = f"{name}[{i + 1}]"  # one-based, like the docs and the file's order
        instance_name = options.pop("name", None)
        if instance_name is None:
            if several:
                problems.append(Problem(f"{where}.name", "required when there are several "
                                        f"[[{name}]] sections",
                                        f'add name = "..." to every [[{name}]] section'))
                continue
            instance_name = name
        if etype.section_problems is not None:
            problems.extend(etype.section_problems(options, where))
        for key in etype.secret_file_keys:
            secret = options.get(key)
            if isinstance(secret, str) and secret:
                problems.extend(_secret_problems(f"{where}.{key}", secret, check_permissions))
        out.append(InstanceSettings(engine=name, name=instance_name, options=options,
                                    max_hold_seconds=max_hold, state_dir=state_dir))
    if len(problems) > before:
        return []
    return out


def _secret_problems(where: str, path: str, check_permissions: bool) -> list[Problem]:
    from quiesce.security import check_trusted

    if not os.path.isabs(path):
        return [Problem(where, f"{path!r} is not an absolute path",
                        "name the secret file by its absolute path")]
    if not check_permissions:
        if not os.path.isfile(path):
            return [Problem(where, f"{path}: no such file", "create it or fix the path")]
        return []
    return [Problem(f"{where} ({p.where})" if p.where != path else where,
                    p.message if p.where != path else f"{path}: {p.message}", p.hint)
            for p in check_trusted(path, "secret")]
