"""The Azure VM Backup script config, /etc/azure/VMSnapshotScriptPluginConfig.json, read strictly.

Field names are Azure's, exactly. Unlike the extension's loader, this one never guesses: a
quoted number, a value out of range, an unknown or duplicated key, or malformed JSON is an error
that says what to change, and every problem in the file is reported at once. All of them map
to IncorrectJSONConfigFile (305). The file is read through :func:`quiesce.security.open_trusted`
so its ownership, mode and directories are checked on the descriptor that is read.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from typing import Any

from quiesce.errors import AzureCode, ConfigError, Problem
from quiesce.schema import Field, Table, huge_integer_problem, too_deep_problem, validate

DEFAULT_PATH = "/etc/azure/VMSnapshotScriptPluginConfig.json"
CODE = AzureCode.INCORRECT_JSON_CONFIG_FILE
MAX_TIMEOUT = 1800  # the extension's cap; larger values are refused here, not clamped
MAX_CONFIG_BYTES = 1024 * 1024


def _absolute(value: str) -> str | None:
    if not value:
        return "is empty: give the absolute path of the script"
    if not value.startswith("/"):
        return f"{value!r} is not an absolute path"
    if "\0" in value:
        return "contains a NUL character"
    return None


#: Linux refuses to exec with any one argument longer than this (MAX_ARG_STRLEN, 32 pages,
#: counting the terminating NUL): caught here, not as an exec failure in the middle of a run.
MAX_ARG_BYTES = 32 * 4096 - 1


def _argv_safe(values: list[Any]) -> str | None:
    for i, item in enumerate(values):
        if not isinstance(item, str):
            continue
        if "\0" in item:
            return f"element {i} contains a NUL character, which cannot be passed as an argument"
        size = len(item.encode("utf-8", "surrogatepass"))
        if size > MAX_ARG_BYTES:
            return (f"element {i} is {size} bytes long; Linux cannot pass an argument longer "
                    f"than {MAX_ARG_BYTES} bytes to a program")
    return None


_PATH_HINT = "an absolute path such as /etc/azure/pre-script.sh"
_PARAMS_HINT = 'a list of strings, one per argument, e.g. ["--fast", ""]'

SCHEMA = Table(
    {
        "pluginName": Field(str, required=True, choices=("ScriptRunner",),
                            hint='write "pluginName": "ScriptRunner" (Azure requires it)'),
        "preScriptLocation": Field(str, required=True, check=_absolute, hint=_PATH_HINT),
        "postScriptLocation": Field(str, required=True, check=_absolute, hint=_PATH_HINT),
        "preScriptParams": Field(list, default=[], items=str, check=_argv_safe,
                                 hint=_PARAMS_HINT),
        "postScriptParams": Field(list, default=[], items=str, check=_argv_safe,
                                 hint=_PARAMS_HINT),
        "preScriptNoOfRetries": Field(int, default=0, minimum=0,
                                      hint="0 means one attempt, no retry"),
        "postScriptNoOfRetries": Field(int, default=0, minimum=0,
                                       hint="0 means one attempt, no retry"),
        "timeoutInSeconds": Field(int, required=True, minimum=1, maximum=MAX_TIMEOUT,
                                  hint=f"a whole number of seconds from 1 to {MAX_TIMEOUT}"),
        "continueBackupOnFailure": Field(bool, default=True),
        "fsFreezeEnabled": Field(bool, default=True),
        # Present in real configs; accepted and kept, not used for anything that matters.
        "appName": Field(str),
        "ScriptsExecutionPollTimeSeconds": Field(int, minimum=1, maximum=5,
                                                 hint="a whole number from 1 to 5"),
    }
)


@dataclass(frozen=True)
class ScriptSpec:
    """One phase's script as configured."""

    phase: str
    path: str
    params: tuple[str, ...]
    retries: int
    timeout: int


@dataclass(frozen=True)
class AzureConfig:
    source: str
    plugin_name: str
    pre_script: str
    post_script: str
    pre_params: tuple[str, ...]
    post_params: tuple[str, ...]
    pre_retries: int
    post_retries: int
    timeout_seconds: int
    continue_on_failure: bool
    fs_freeze: bool
    app_name: str | None = None
    poll_seconds: int | None = None

    def script(self, phase: str) -> ScriptSpec:
        if phase == "pre":
            return ScriptSpec("pre", self.pre_script, self.pre_params, self.pre_retries,
                              self.timeout_seconds)
        if phase == "post":
            return ScriptSpec("post", self.post_script, self.post_params, self.post_retries,
                              self.timeout_seconds)
        raise ValueError(f"phase must be 'pre' or 'post', not {phase!r}")


class _DuplicateKeys:
    """object_pairs_hook that records duplicated keys instead of silently keeping the last."""

    def __init__(self) -> None:
        self.duplicates: list[str] = []

    def __call__(self, pairs: list[tuple[str, Any]]) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for key, value in pairs:
            if key in out:
                self.duplicates.append(key)
            out[key] = value
        return out


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not valid JSON")


def _with_code(problems: list[Problem]) -> list[Problem]:
    return [p.with_code(CODE) for p in problems]


def parse_azure_config(data: bytes, source: str = DEFAULT_PATH) -> AzureConfig:
    """Parse and validate the JSON bytes; raise ConfigError listing every problem."""
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise ConfigError(source, _with_code([Problem(
            source, f"is not UTF-8 text (byte {exc.start})", "save the file as UTF-8")]),
            code=CODE) from exc
    hook = _DuplicateKeys()
    try:
        document = json.loads(text, object_pairs_hook=hook, parse_constant=_reject_constant)
    except json.JSONDecodeError as exc:
        raise ConfigError(source, _with_code([Problem(
            f"{source}:{exc.lineno}:{exc.colno}", f"malformed JSON: {exc.msg}",
            "fix the JSON syntax (quotes around keys and strings, commas between items, "
            "no trailing comma)")]), code=CODE) from exc
    except RecursionError as exc:  # the parser gives up on nesting about 1000 levels deep
        raise ConfigError(source, _with_code([too_deep_problem(source)]), code=CODE) from exc
    except ValueError as exc:  # NaN/Infinity (parse_constant), an integer of 4300+ digits
        problem = huge_integer_problem(source, exc) or Problem(source, str(exc),
                                                               "use a number or a string")
        raise ConfigError(source, _with_code([problem]), code=CODE) from exc
    problems = [Problem(key, "key appears more than once", "keep exactly one of them")
                for key in dict.fromkeys(hook.duplicates)]
    result = validate(SCHEMA, document)
    problems.extend(result.problems)
    if problems:
        raise ConfigError(source, _with_code(problems), code=CODE)
    d = result.data
    return AzureConfig(
        source=source,
        plugin_name=d["pluginName"],
        pre_script=d["preScriptLocation"],
        post_script=d["postScriptLocation"],
        pre_params=tuple(d["preScriptParams"]),
        post_params=tuple(d["postScriptParams"]),
        pre_retries=d["preScriptNoOfRetries"],
        post_retries=d["postScriptNoOfRetries"],
        timeout_seconds=d["timeoutInSeconds"],
        continue_on_failure=d["continueBackupOnFailure"],
        fs_freeze=d["fsFreezeEnabled"],
        app_name=d.get("appName"),
        poll_seconds=d.get("ScriptsExecutionPollTimeSeconds"),
    )


def load_azure_config(path: str | os.PathLike[str] = DEFAULT_PATH) -> AzureConfig:
    """Read the config through a checked descriptor and parse it.

    Raises TrustedFileNotFound (missing), PermissionProblem (unsafe file or directory) or
    ConfigError (invalid content); all carry IncorrectJSONConfigFile.
    """
    from quiesce.security import open_trusted

    source = os.fspath(path)
    with open_trusted(source, "config", code=CODE) as trusted:
        data = trusted.read_bytes(MAX_CONFIG_BYTES)
    return parse_azure_config(data, source)
