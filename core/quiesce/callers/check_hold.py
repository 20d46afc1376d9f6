"""The part of ``quiesce check`` behind the Azure scripts: the quiesce.toml ``pre`` will use.

``quiesce check`` validates the Azure config and its two scripts. When those scripts are
quiesce wrappers (what ``quiesce install azure`` writes: a ``sh`` script that re-checks the
paths of the quiesce it runs, then ``exec <quiesce> pre --config <toml> --azure-config <json>
"$@"``, or ``post --config <toml> "$@"``), the first backup also depends on the
quiesce.toml the wrapper names: a skeleton without an instance section, an unknown key or a
group-readable file all make ``quiesce pre`` fail at snapshot time. This module finds each
wrapper's ``quiesce`` call, parses its arguments with the real command's own parser (the Azure
params appended where the wrapper says ``"$@"``), and validates the quiesce.toml ``pre`` would
load with :func:`quiesce.settings.load_settings`: permissions, schema, engines, secret files.

Problems with quiesce.toml are reported with the code :data:`QUIESCE_CONFIG_CODE`
(``IncorrectQuiesceConfigFile``, no Azure number). Azure's own 304 (IncorrectPluginhostFile)
names the extension's plugin-host file, and 305 the Azure JSON config; neither is the file to
fix here. Under Azure, the failure these problems predict shows up as
Pre-ScriptExecutionFailed (300), because ``quiesce pre`` exits non-zero. A wrapper whose
arguments would make ``quiesce pre``/``post`` fail before reading anything (an unknown option,
a relative ``--config``, the pre-script calling ``quiesce post``, a quiesce executable that is
gone or named without a path) is reported with the phase's ExecutionFailed code, like any
script that cannot work; an executable that users other than root could replace (the rule of
:func:`quiesce.callers.azure_install.command_problems`) with the phase's InsufficientPermission
code.

The pre-script must pass ``--azure-config`` naming the very config being checked, so that
``quiesce pre`` takes its deadline from ``timeoutInSeconds`` at run time: wrappers of an older
install, without it, get a warning; another file is an error. And ``timeoutInSeconds`` must
fit ``pre_timeout_seconds`` plus Azure's poll margin (:func:`timeout_problem`), else the check
fails (IncorrectJSONConfigFile, 305) saying which value to change, to what.

Nothing connects to a database: an engine's ``prepare`` flushes (PostgreSQL CHECKPOINT,
MySQL FLUSH TABLES), which is not something a check may do to a production server.
"""

from __future__ import annotations

import argparse
import importlib
import json
import math
import os
import re
import shlex
import stat
import tomllib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from quiesce.callers.report import RunError
from quiesce.errors import AzureCode, Problem, QuiesceError

if TYPE_CHECKING:
    from quiesce.settings import Settings

QUIESCE_CONFIG_CODE = "IncorrectQuiesceConfigFile"
PHASES = ("pre", "post")
#: A wrapper is a few lines; anything bigger is not one of ours and is not parsed.
MAX_WRAPPER_BYTES = 64 * 1024

_PYTHON_RE = re.compile(r"^python[0-9.]*$")


class WrapperArgumentError(QuiesceError):
    """The wrapper passes arguments the quiesce command would refuse."""


@dataclass(frozen=True)
class WrapperCall:
    """The ``quiesce pre``/``post`` call found in an Azure script."""

    script: str  # the Azure script's path
    line: int  # 1-based line of the call in the script
    command: str  # the quiesce subcommand the script runs: "pre" or "post"
    argv: tuple[str, ...]  # its arguments, with "$@" replaced by the Azure params
    expanded: bool = False  # the script's own arguments use shell expansion ($VAR, `...`)
    program: tuple[str, ...] = ()  # what runs quiesce: ("/x/quiesce",) or (python, "-m", ...)


@dataclass
class HoldCheck:
    """What :func:`check_hold` found, to be merged into the runner's check result."""

    checked: list[tuple[str, str]] = field(default_factory=list)
    errors: list[RunError] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    # quiesce.toml path -> the validated instances ("engine/name"), for the ones that passed.
    instances: dict[str, list[str]] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return not self.errors


# --- finding the wrapper's call ------------------------------------------------------------


def _split_quiesce(tokens: list[str]) -> tuple[list[str], list[str]] | None:
    """(program argv, arguments after ``quiesce``) when ``tokens`` runs quiesce, else None.

    Accepted forms: ``[exec] /path/quiesce ARGS`` and ``[exec] /path/python [-FLAGS] -m
    quiesce ARGS`` (what :func:`quiesce.callers.azure_install.quiesce_command` produces).
    """
    if tokens and tokens[0] == "exec":
        tokens = tokens[1:]
    if not tokens:
        return None
    program = os.path.basename(tokens[0])
    if program == "quiesce":
        return tokens[:1], tokens[1:]
    if _PYTHON_RE.match(program):
        i = 1
        while i < len(tokens) and tokens[i].startswith("-") and tokens[i] != "-m":
            i += 1
        if tokens[i:i + 2] == ["-m", "quiesce"]:
            return tokens[:i + 2], tokens[i + 2:]
    return None


def _logical_lines(text: str) -> list[tuple[int, str]]:
    """(1-based number of its first physical line, text) of each line, with backslash-newline
    continuations joined as the shell joins them."""
    out: list[tuple[int, str]] = []
    pending = ""
    start = 0
    for number, line in enumerate(text.split("\n"), start=1):
        if not pending:
            start = number
        if line.endswith("\\"):
            pending += line[:-1]
            continue
        out.append((start, pending + line))
        pending = ""
    if pending:
        out.append((start, pending))
    return out


def quiesce_calls(text: str) -> Iterator[tuple[int, list[str], list[str]]]:
    """(line, program, arguments after it) of every line of a shell script that runs quiesce;
    comments, blank lines and lines the shell lexer cannot read (unbalanced quotes) are
    passed over."""
    for number, line in _logical_lines(text):
        stripped = line.strip()
        if not stripped or stripped.startswith("#"):
            continue
        try:
            tokens = shlex.split(stripped, comments=True)
        except ValueError:
            continue
        split = _split_quiesce(tokens)
        if split is not None:
            yield number, split[0], split[1]


def find_wrapper_call(text: str, script: str, params: Sequence[str]) -> WrapperCall | None:
    """The first line of a shell script that runs ``quiesce pre`` or ``quiesce post``.

    ``params`` (the Azure config's params for this script) replace a ``"$@"`` argument, as the
    shell would. Returns None when the script runs no quiesce pre/post: it is not a wrapper.
    """
    for number, program, rest in quiesce_calls(text):
        if not rest or rest[0] not in PHASES:
            continue
        argv: list[str] = []
        expanded = False
        for token in rest[1:]:
            if token in ("$@", "$*"):
                argv.extend(params)
                continue
            if "$" in token or "`" in token:
                expanded = True
            argv.append(token)
        return WrapperCall(script, number, rest[0], tuple(argv), expanded, tuple(program))
    return None


class _RaisingParser(argparse.ArgumentParser):
    def error(self, message: str) -> Any:  # argparse would print usage and exit
        raise WrapperArgumentError(message)


def parse_call(call: WrapperCall) -> argparse.Namespace:
    """The call's arguments parsed by the quiesce command's own ``configure``.

    Raises WrapperArgumentError for arguments the command would refuse.
    """
    module = importlib.import_module(f"quiesce.commands.{call.command}")
    parser = _RaisingParser(prog=f"quiesce {call.command}", add_help=False)
    module.configure(parser)
    return parser.parse_args(list(call.argv))


# --- reading the Azure side leniently --------------------------------------------------------


def _scripts(config: Any, config_path: str) -> list[tuple[str, str, tuple[str, ...]]]:
    """(phase, script path, params) from a valid config, or read leniently from an invalid
    one so its wrappers are still checked. A config that cannot be trusted gives nothing."""
    if config is not None:
        return [(p, config.script(p).path, tuple(config.script(p).params)) for p in PHASES]
    from quiesce.callers.azure_config import MAX_CONFIG_BYTES
    from quiesce.security import open_trusted

    try:
        with open_trusted(config_path, "config") as trusted:
            document = json.loads(trusted.read_bytes(MAX_CONFIG_BYTES))
    except (QuiesceError, ValueError, OSError, RecursionError):
        return []
    if not isinstance(document, dict):
        return []
    out = []
    for phase in PHASES:
        path = document.get(f"{phase}ScriptLocation")
        params = document.get(f"{phase}ScriptParams", [])
        if not isinstance(params, list) or not all(isinstance(p, str) for p in params):
            params = []
        if isinstance(path, str) and path.startswith("/"):
            out.append((phase, path, tuple(params)))
    return out


def _read_script(path: str) -> str | None:
    """The script's text through a checked descriptor; None when it cannot be trusted (the
    runner's check reports why) or is too big to be a wrapper."""
    from quiesce.security import open_trusted

    try:
        with open_trusted(path, "script") as trusted:
            data = trusted.read_bytes(MAX_WRAPPER_BYTES)
    except (QuiesceError, OSError):
        return None
    return data.decode("utf-8", "replace")


# --- validating quiesce.toml -----------------------------------------------------------------


_EXAMPLE_SECTION_RE = re.compile(r"^#\s*\[\[([A-Za-z0-9_.-]+)\]\]\s*$", re.MULTILINE)


def _read_document(path: str) -> tuple[str, dict[str, Any]] | None:
    """The TOML text and document, read without trusting them (only to word a problem);
    None if the file cannot be read or parsed (load_settings reports why)."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK)
    except OSError:
        return None
    try:
        with os.fdopen(fd, "rb") as handle:
            if not stat.S_ISREG(os.fstat(handle.fileno()).st_mode):
                return None
            text = handle.read(16 * 1024 * 1024).decode("utf-8")
        return text, tomllib.loads(text)
    except (OSError, ValueError, RecursionError):  # TOMLDecodeError is a ValueError
        return None


SKELETON_MESSAGE = ("has no database instance section, so 'quiesce pre' would fail at the "
                    "first backup")


def _has_instance_section(document: dict[str, Any]) -> bool:
    from quiesce.settings import CORE_FIELDS

    return any(key not in CORE_FIELDS and (
        isinstance(value, dict) or (isinstance(value, list) and bool(value)
                                    and all(isinstance(v, dict) for v in value)))
        for key, value in document.items())


def _is_missing_section(problem: Problem, path: str) -> bool:
    """load_settings' complaints that the selection has no section to go with it."""
    return ("has no [[" in problem.message
            or (problem.where == path and problem.message == "selects no database instance"))


def toml_problems(path: str, plugins: Sequence[str] | None = None, *,
                  check_permissions: bool = True) -> tuple[list[Problem], Settings | None]:
    """(problems, settings) of the quiesce.toml at ``path`` as ``quiesce pre`` would load it.

    ``settings`` is the validated file when there is no problem. A file with no instance
    section at all (the skeleton ``install azure`` writes) is one problem saying to add one,
    instead of one complaint per selected engine. ``check_permissions`` is passed to
    load_settings (False only in tests).
    """
    from quiesce.errors import ValidationError
    from quiesce.settings import installed_engine_names, load_settings

    try:
        return [], load_settings(path, plugins=plugins, check_permissions=check_permissions)
    except ValidationError as exc:
        problems = list(exc.problems)
    except QuiesceError as exc:
        return [Problem(path, str(exc), exc.hint)], None

    read = _read_document(path)
    if read is not None and not _has_instance_section(read[1]):
        text, document = read
        kept = [p for p in problems if not _is_missing_section(p, path)]
        commented = list(dict.fromkeys(_EXAMPLE_SECTION_RE.findall(text)))
        selected = document.get("plugins")
        if plugins:
            engines = list(plugins)
        elif isinstance(selected, list) and selected and all(isinstance(n, str)
                                                             for n in selected):
            engines = list(selected)
        else:
            engines = commented or installed_engine_names()
        examples = ", ".join(f"[[{name}]]" for name in engines) or "[[postgresql]]"
        if commented:
            fix = (f"uncomment and fill in the example section ({examples}) of each database "
                   "to quiesce")
        else:
            fix = f"add a section ({examples}) for each database to quiesce"
        kept.insert(0, Problem(
            path, SKELETON_MESSAGE,
            f"{fix}; see docs/configuration.md, then run 'quiesce check' again"))
        problems = kept
    return problems, None


def _resolve_config(value: str) -> str:
    return os.path.normpath(value)


def _run_error(problem: Problem, toml_path: str) -> RunError:
    where = problem.where
    if where and where != toml_path and not where.startswith("/"):
        where = f"{toml_path}: {where}"  # a key path: say which file it is in
    return RunError(QUIESCE_CONFIG_CODE, None, "check",
                    f"{where}: {problem.message}" if where else problem.message, problem.hint)


def check_hold(config: Any, config_path: str) -> HoldCheck:
    """Check the quiesce wrappers among the Azure scripts and the quiesce.toml they use.

    ``config`` is the validated :class:`quiesce.callers.azure_config.AzureConfig`, or None when it
    failed validation (its script locations are then read leniently). Scripts that are not
    quiesce wrappers are left alone: the result is empty for them.
    """
    result = HoldCheck()
    calls: dict[str, tuple[WrapperCall, argparse.Namespace]] = {}
    # Phases whose script does not run quiesce at all (read, and no quiesce call found). A
    # script that could not be trusted was never read; one whose quiesce call has a problem
    # is reported with that problem: neither is "not a wrapper".
    not_wrappers: set[str] = set()
    for phase, path, params in _scripts(config, config_path):
        text = _read_script(path)
        if text is None:
            continue
        call = find_wrapper_call(text, path, params)
        if call is None:
            not_wrappers.add(phase)
            continue
        args = _usable_call(result, call, phase, path, params=params,
                            config_path=config_path)
        if args is not None:
            calls[phase] = (call, args)
    if "pre" in calls:
        _check_pre_config(result, calls, config, config_path)
    elif "post" in calls and "pre" in not_wrappers:
        result.notes.append(
            f"{calls['post'][0].script} runs 'quiesce post' but the pre-script does not run "
            "'quiesce pre' in a way check recognises: if nothing is held, 'quiesce post' exits "
            "2 and the post-script fails at every backup")
    return result


def _usable_call(result: HoldCheck, call: WrapperCall, phase: str, path: str, *,
                 params: tuple[str, ...], config_path: str) -> argparse.Namespace | None:
    """The parsed arguments of a wrapper's quiesce call, or None after reporting why it
    cannot be used (wrong phase, unsafe program, shell expansion, bad arguments)."""
    failed = AzureCode.for_phase(phase, "failed")
    if call.command != phase:
        result.errors.append(RunError.azure(
            failed, "check",
            f"{path}:{call.line}: the {phase}-script runs 'quiesce {call.command}'",
            f"the {phase}-script must run 'quiesce {phase}': swap preScriptLocation and "
            "postScriptLocation, or rerun 'quiesce install azure --force'"))
        return None
    unusable = _program_problem(call, phase)
    if unusable is not None:
        result.errors.append(unusable)
        return None
    if call.expanded:
        result.notes.append(
            f"{path}:{call.line}: the quiesce {phase} call uses shell expansion; its "
            "quiesce.toml was not checked (run 'quiesce check' on a wrapper with literal "
            "arguments, or validate the file with 'quiesce pre' by hand)")
        return None
    try:
        args = parse_call(call)
    except WrapperArgumentError as exc:
        message = f"{path}:{call.line}: 'quiesce {phase}' would refuse its arguments: {exc}"
        hint = (f"fix the arguments in {path} or {phase}ScriptParams (see 'quiesce {phase} "
                "--help'), or rerun 'quiesce install azure --force'")
        if "" in params:
            message += (f" ({phase}ScriptParams holds empty strings, as in Azure's sample "
                        "config; the wrapper passes them on as arguments)")
            hint = f'set "{phase}ScriptParams": [] in {config_path}'
        result.errors.append(RunError.azure(failed, "check", message, hint))
        return None
    if not os.path.isabs(args.config):
        result.errors.append(RunError.azure(
            failed, "check", f"{path}:{call.line}: --config {args.config!r} is a "
            "relative path; it would be looked up in whatever directory the backup agent "
            "runs the script from",
            "give the absolute path of quiesce.toml, e.g. --config "
            "/etc/quiesce/quiesce.toml"))
        return None
    return args


def _check_pre_config(result: HoldCheck,
                      calls: dict[str, tuple[WrapperCall, argparse.Namespace]],
                      config: Any, config_path: str) -> None:
    """The quiesce.toml the pre-wrapper uses, its deadline against Azure's timeout, and
    whether the post-wrapper names the same file."""
    call, args = calls["pre"]
    toml_path = _resolve_config(args.config)
    from quiesce.settings import parse_plugin_list

    plugins = parse_plugin_list(getattr(args, "plugins", None))
    problems, settings = toml_problems(toml_path, plugins)
    what = f"quiesce.toml {toml_path} (used by the pre-script)"
    if settings is None and [p.message for p in problems] == [SKELETON_MESSAGE]:
        # The untouched skeleton of 'install azure': a valid installation that is not
        # configured yet (issue 3: the install result passes check). Said loudly, as a
        # warning, since the first backup's 'quiesce pre' will fail until it is filled in.
        [skeleton] = problems
        result.notes.append(f"WARNING: {toml_path} {skeleton.message}: {skeleton.hint}")
        result.checked.append((what, "not configured yet (see the warning below)"))
    elif settings is None:
        result.errors.extend(_run_error(p, toml_path) for p in problems)
        result.checked.append((what, "problems"))
    else:
        instances = [f"{i.engine}/{i.name}" for i in settings.instances]
        result.instances[toml_path] = instances
        result.checked.append((what, f"ok ({', '.join(instances)})"))
        if config is not None:
            timeout_error = timeout_problem(settings.pre_timeout_seconds, config,
                                            toml_path, config_path)
            if timeout_error is not None:
                result.errors.append(timeout_error)
    _deadline_check(result, call, args, config_path)
    if "post" in calls:
        post_config = _resolve_config(calls["post"][1].config)
        if post_config != toml_path:
            result.notes.append(
                f"the post-script names --config {post_config} but the pre-script "
                f"{toml_path}; 'quiesce post' releases what 'pre' holds and reads no "
                "configuration, so only the pre-script's file is checked")


def _program_problem(call: WrapperCall, phase: str) -> RunError | None:
    """Why the program the wrapper execs cannot run ``quiesce`` safely as root, or None."""
    if not call.program:
        return None
    program = call.program[0]
    where = f"{call.script}:{call.line}"
    reinstall = ("rerun 'quiesce install azure --force' with the quiesce the wrappers should "
                 "run")
    if "$" in program or "`" in program:
        return None  # shell expansion: nothing to look at (noted with the arguments)
    if not os.path.isabs(program):
        return RunError.azure(
            AzureCode.for_phase(phase, "failed"), "check",
            f"{where}: runs {program!r} by name; the backup agent's PATH decides what that is",
            f"name the program by its absolute path, or {reinstall}")
    if not (os.path.isfile(program) and os.access(program, os.X_OK)):
        return RunError.azure(
            AzureCode.for_phase(phase, "failed"), "check",
            f"{where}: {program} does not exist or is not executable, so 'quiesce {phase}' "
            "cannot start (was quiesce moved or uninstalled?)", reinstall)
    from quiesce.callers.azure_install import command_problems

    unsafe = command_problems(list(call.program))
    if unsafe:
        return RunError.azure(
            AzureCode.for_phase(phase, "permission"), "check",
            f"{where}: the wrapper runs {program} as root, but users other than root can "
            f"replace it: {'; '.join(unsafe)}",
            "make those files and directories root-owned and not group/other-writable, sticky "
            "or not (e.g. install quiesce in a root-owned venv under /opt, never under /tmp), "
            f"then {reinstall[0].lower()}"
            f"{reinstall[1:]}")
    return None


def timeout_problem(pre_timeout: float, config: Any, toml_path: str,
                    config_path: str) -> RunError | None:
    """The error when Azure's ``timeoutInSeconds`` cannot fit ``pre``'s own budget, or None.

    ``quiesce pre`` may use up to ``pre_timeout_seconds`` to hold every instance, and must be
    done a poll margin before ``timeoutInSeconds`` (capped by the extension at 1800 s) for the
    extension to see it finish in time (:func:`quiesce.callers.caller_deadline.azure_poll_margin`).
    When the two do not fit, every slow backup ends in Pre-ScriptTimeout, or in a ``pre`` that
    gives up early at its run-time deadline: the message says which value to change, to what.
    """
    from quiesce.callers.caller_deadline import AZURE_TIMEOUT_CAP, azure_poll_margin

    margin = azure_poll_margin(config)
    timeout = int(config.timeout_seconds)
    limit = min(timeout, AZURE_TIMEOUT_CAP)
    needed = float(pre_timeout) + margin
    if needed <= limit:
        return None
    poll = getattr(config, "poll_seconds", None)
    why = (f"ScriptsExecutionPollTimeSeconds {poll}" if poll else
           "the longest poll period, 5 s, since ScriptsExecutionPollTimeSeconds is not set")
    capped = (f" (capped by the extension at {AZURE_TIMEOUT_CAP})"
              if timeout > AZURE_TIMEOUT_CAP else "")
    message = (f"{config_path}: timeoutInSeconds {timeout}{capped} cannot fit 'quiesce pre': "
               f"pre_timeout_seconds {pre_timeout:g} (from {toml_path}) + {margin:g} s for "
               f"Azure to see it finish ({why}, + 1 s start-up) = {needed:g} s")
    fixes = []
    wanted = math.ceil(needed)
    if wanted <= AZURE_TIMEOUT_CAP:
        fixes.append(f"raise timeoutInSeconds in {config_path} to at least {wanted}")
    lowest = math.floor(limit - margin)
    if lowest >= 1:
        fixes.append(f"lower pre_timeout_seconds in {toml_path} to at most {lowest}")
    if not fixes:  # neither value alone can fit: both must change
        fixes.append(f"set timeoutInSeconds to {AZURE_TIMEOUT_CAP} and pre_timeout_seconds to "
                     f"at most {math.floor(AZURE_TIMEOUT_CAP - margin)}")
    return RunError.azure(AzureCode.INCORRECT_JSON_CONFIG_FILE, "check", message,
                          " or ".join(fixes))


def _deadline_check(result: HoldCheck, call: WrapperCall, args: argparse.Namespace,
                    config_path: str) -> None:
    """The pre-script must give ``quiesce pre`` this very Azure config as ``--azure-config``,
    so that its deadline follows ``timeoutInSeconds`` at run time."""
    named = getattr(args, "azure_config", None)
    where = f"{call.script}:{call.line}"
    if not named:
        result.notes.append(
            f"WARNING: {where}: the pre-script does not pass --azure-config, so 'quiesce pre' "
            "has no run-time deadline from timeoutInSeconds: when a lock takes longer than "
            "Azure waits, Azure snapshots anyway and 'pre' goes on to hold after the "
            "snapshot (an older 'quiesce install azure' wrote it this way); rerun 'quiesce "
            "install azure --force' to get the current wrappers")
        return
    if os.path.realpath(named) != os.path.realpath(config_path):
        result.errors.append(RunError.azure(
            AzureCode.PRE_SCRIPT_EXECUTION_FAILED, "check",
            f"{where}: the pre-script passes --azure-config {named}, but the Azure config is "
            f"{config_path}: 'quiesce pre' would take its deadline from another file's "
            "timeoutInSeconds",
            f"pass --azure-config {config_path} in {call.script}, or rerun 'quiesce install "
            "azure --force'"))


def merge_into(check_result: Any, hold: HoldCheck) -> None:
    """Add ``hold``'s findings to a :class:`quiesce.callers.runner.CheckResult` in place."""
    check_result.checked.extend(hold.checked)
    check_result.errors.extend(hold.errors)
    check_result.notes.extend(hold.notes)


__all__ = [
    "QUIESCE_CONFIG_CODE", "HoldCheck", "WrapperArgumentError", "WrapperCall", "check_hold",
    "find_wrapper_call", "merge_into", "parse_call", "toml_problems",
]
