"""The strict loader of VMSnapshotScriptPluginConfig.json."""

from __future__ import annotations

import json
from typing import Any

import pytest

from quiesce.callers.azure_config import parse_azure_config
from quiesce.errors import AzureCode, ConfigError

SAMPLE: dict[str, Any] = {
    "pluginName": "ScriptRunner",
    "preScriptLocation": "/etc/azure/pre.sh",
    "postScriptLocation": "/etc/azure/post.sh",
    "preScriptParams": ["", ""],
    "postScriptParams": ["", ""],
    "preScriptNoOfRetries": 0,
    "postScriptNoOfRetries": 0,
    "timeoutInSeconds": 30,
    "continueBackupOnFailure": True,
    "fsFreezeEnabled": True,
}


def parse(doc: dict[str, Any] | str) -> Any:
    text = doc if isinstance(doc, str) else json.dumps(doc)
    return parse_azure_config(text.encode(), "cfg.json")


def problems_of(doc: dict[str, Any] | str) -> list[Any]:
    with pytest.raises(ConfigError) as info:
        parse(doc)
    assert info.value.code is AzureCode.INCORRECT_JSON_CONFIG_FILE
    assert all(p.code is AzureCode.INCORRECT_JSON_CONFIG_FILE for p in info.value.problems)
    return info.value.problems


def with_(**changes: Any) -> dict[str, Any]:
    doc = dict(SAMPLE)
    for key, value in changes.items():
        if value is ...:
            doc.pop(key)
        else:
            doc[key] = value
    return doc


def test_published_sample_loads() -> None:
    cfg = parse(SAMPLE)
    assert cfg.plugin_name == "ScriptRunner"
    assert cfg.pre_params == ("", "")  # empty strings are kept: they are arguments
    assert cfg.timeout_seconds == 30 and cfg.continue_on_failure and cfg.fs_freeze
    spec = cfg.script("post")
    assert (spec.phase, spec.path, spec.params, spec.retries, spec.timeout) == (
        "post", "/etc/azure/post.sh", ("", ""), 0, 30)


def test_fields_seen_in_the_wild_are_accepted() -> None:
    cfg = parse(with_(appName="mysql", ScriptsExecutionPollTimeSeconds=2))
    assert cfg.app_name == "mysql" and cfg.poll_seconds == 2


def test_optional_fields_have_documented_defaults() -> None:
    cfg = parse(with_(preScriptParams=..., postScriptParams=..., preScriptNoOfRetries=...,
                      postScriptNoOfRetries=..., continueBackupOnFailure=...,
                      fsFreezeEnabled=...))
    assert cfg.pre_params == () and cfg.pre_retries == 0 and cfg.post_retries == 0
    assert cfg.continue_on_failure is True and cfg.fs_freeze is True


def test_utf8_bom_is_accepted() -> None:
    assert parse_azure_config(b"\xef\xbb\xbf" + json.dumps(SAMPLE).encode()).timeout_seconds == 30


@pytest.mark.parametrize(
    ("key", "value", "fix"),
    [
        ("timeoutInSeconds", "30", "write 30 without quotes"),
        ("preScriptNoOfRetries", "2", "write 2 without quotes"),
        ("fsFreezeEnabled", "true", "write true without quotes"),
        ("continueBackupOnFailure", "False", "write false without quotes"),
    ],
)
def test_quoted_numbers_and_booleans_are_errors_with_the_fix(key: str, value: str,
                                                             fix: str) -> None:
    (problem,) = problems_of(with_(**{key: value}))
    assert problem.where == key and problem.hint == fix


@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("timeoutInSeconds", 30.5),
        ("timeoutInSeconds", True),
        ("fsFreezeEnabled", 1),
        ("preScriptParams", "--fast"),
        ("preScriptLocation", 5),
        ("pluginName", None),
        ("appName", 3),
    ],
)
def test_wrong_types(key: str, value: Any) -> None:
    (problem,) = problems_of(with_(**{key: value}))
    assert problem.where == key and "expected" in problem.message


def test_non_string_param_names_its_index() -> None:
    (problem,) = problems_of(with_(postScriptParams=["a", 3]))
    assert problem.where == "postScriptParams[2]"  # one-based, as in the docs


@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("timeoutInSeconds", 0),
        ("timeoutInSeconds", 1801),  # refused, never silently capped to 1800
        ("timeoutInSeconds", -5),
        ("preScriptNoOfRetries", -1),
        ("postScriptNoOfRetries", -1),
        ("ScriptsExecutionPollTimeSeconds", 0),
        ("ScriptsExecutionPollTimeSeconds", 6),
    ],
)
def test_out_of_range(key: str, value: int) -> None:
    (problem,) = problems_of(with_(**{key: value}))
    assert problem.where == key and ("minimum" in problem.message or "maximum" in problem.message)


def test_range_edges_are_accepted() -> None:
    assert parse(with_(timeoutInSeconds=1)).timeout_seconds == 1
    assert parse(with_(timeoutInSeconds=1800)).timeout_seconds == 1800


def test_plugin_name_must_be_script_runner() -> None:
    (problem,) = problems_of(with_(pluginName="scriptrunner"))
    assert "ScriptRunner" in problem.hint


def test_unknown_key_names_the_closest_valid_key() -> None:
    (problem,) = problems_of(with_(timeoutInSecond=30))
    assert problem.where == "timeoutInSecond" and "unknown key" in problem.message
    assert "'timeoutInSeconds'" in problem.hint


def test_missing_required_keys() -> None:
    problems = problems_of(with_(preScriptLocation=..., timeoutInSeconds=...))
    assert sorted(p.where for p in problems) == ["preScriptLocation", "timeoutInSeconds"]


@pytest.mark.parametrize("value", ["pre.sh", "", "./pre.sh"])
def test_script_location_must_be_absolute(value: str) -> None:
    (problem,) = problems_of(with_(preScriptLocation=value))
    assert problem.where == "preScriptLocation"


def test_every_problem_is_reported_at_once() -> None:
    problems = problems_of(with_(timeoutInSeconds="30", fsFreezeEnabled="yes",
                                 preScriptNoOfRetries=-1, pluginNam="x"))
    assert {p.where for p in problems} == {"timeoutInSeconds", "fsFreezeEnabled",
                                           "preScriptNoOfRetries", "pluginNam"}


def test_duplicate_keys_are_an_error() -> None:
    text = json.dumps(SAMPLE)[:-1] + ', "timeoutInSeconds": 60}'
    (problem,) = problems_of(text)
    assert problem.where == "timeoutInSeconds" and "more than once" in problem.message


@pytest.mark.parametrize(
    "text",
    ['{"pluginName": "ScriptRunner",}', "{", "", "not json", "{'a': 1}"],
)
def test_malformed_json_names_line_and_column(text: str) -> None:
    (problem,) = problems_of(text)
    assert problem.where.startswith("cfg.json:") and "malformed JSON" in problem.message


def test_top_level_must_be_an_object() -> None:
    problems = problems_of("[1, 2]")
    assert "expected a table/object" in problems[0].message


def test_nan_is_refused() -> None:
    # NaN is what Python's json accepts and JSON does not; on a known key, so that the refusal
    # cannot come from some other problem in the document.
    (problem,) = problems_of(json.dumps(with_(timeoutInSeconds=float("nan"))))
    assert "NaN is not valid JSON" in problem.message


def test_not_utf8() -> None:
    with pytest.raises(ConfigError, match="UTF-8"):
        parse_azure_config(b'{"pluginName": "\xff"}', "cfg.json")


def test_nul_in_params_is_refused() -> None:
    (problem,) = problems_of(with_(preScriptParams=["a\u0000b"]))
    assert "NUL" in problem.message


def test_an_argument_too_long_for_exec_is_refused_when_loading() -> None:
    # Linux's per-argument limit: a longer param would only fail at exec, mid-run.
    from quiesce.callers.azure_config import MAX_ARG_BYTES

    parse(with_(postScriptParams=["x" * MAX_ARG_BYTES]))  # the longest that execs: accepted
    (problem,) = problems_of(with_(postScriptParams=["ok", "é" * MAX_ARG_BYTES]))
    assert problem.where == "postScriptParams"
    assert "element 1" in problem.message and f"{2 * MAX_ARG_BYTES} bytes" in problem.message


def test_the_longest_accepted_argument_really_execs() -> None:
    import subprocess
    import sys

    from quiesce.callers.azure_config import MAX_ARG_BYTES

    code = "import sys; print(len(sys.argv[1]))"
    done = subprocess.run([sys.executable, "-c", code, "x" * MAX_ARG_BYTES],
                          capture_output=True, text=True, check=True)
    assert done.stdout.strip() == str(MAX_ARG_BYTES)
    with pytest.raises(OSError, match="too long"):
        subprocess.run([sys.executable, "-c", code, "x" * (MAX_ARG_BYTES + 1)], check=False)


@pytest.mark.parametrize("raw", ["1e400", "-1e400", "Infinity", "-Infinity"])
def test_infinities_are_refused_with_the_key(raw: str) -> None:
    text = json.dumps(with_(timeoutInSeconds=12345)).replace("12345", raw)
    problems = problems_of(text)
    assert len(problems) == 1
    assert problems[0].where in ("timeoutInSeconds", "cfg.json")
    assert "finite" in problems[0].message or "not valid JSON" in problems[0].message


def test_an_integer_of_thousands_of_digits_is_a_named_problem() -> None:
    text = json.dumps(with_(timeoutInSeconds=12345)).replace("12345", "9" * 5000)
    (problem,) = problems_of(text)
    assert "thousands of digits" in problem.message
    huge = json.dumps(with_(timeoutInSeconds=12345)).replace("12345", "9" * 60)
    (problem,) = problems_of(huge)
    assert problem.where == "timeoutInSeconds" and "a 60-digit number" in problem.message


@pytest.mark.parametrize("depth", [40, 2_000, 200_000])
def test_deep_nesting_is_incorrect_json_config_file_not_recursion_error(depth: int) -> None:
    text = json.dumps(with_(appName="X")).replace('"X"', "[" * depth + "]" * depth)
    (problem,) = problems_of(text)
    assert "nested" in problem.message
