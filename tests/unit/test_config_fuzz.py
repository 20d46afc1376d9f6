"""Fuzz-style: mutated valid configs (wrong types, NaN, infinities, huge numbers, deep nesting,
unicode, truncation) each end as a ConfigError that names its problems; never another
exception. In process, so hundreds run in a second or two; tests/integration/test_config_cli.py
runs a sample through the real CLI (exit 2, --json written, nothing held).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from helpers.fuzz_configs import azure_base, azure_mutations, toml_base, toml_mutations
from quiesce.callers.azure_config import parse_azure_config
from quiesce.errors import AzureCode, ConfigError
from quiesce.settings import load_settings

AZURE_COUNT = 280
TOML_COUNT = 140


def _as_the_cli_shows_it(exc: ConfigError) -> None:
    """What stderr and --json would carry must be writable: text and JSON."""
    text = str(exc)
    text.encode("utf-8", "backslashreplace")
    json.dumps([{"where": p.where, "message": p.message, "hint": p.hint}
                for p in exc.problems])


def test_the_base_files_are_valid(tmp_path: Path) -> None:
    # Otherwise every mutation would fail for the base's own fault.
    config = parse_azure_config(json.dumps(azure_base("/etc/azure/pre.sh",
                                                      "/etc/azure/post.sh")).encode())
    assert config.timeout_seconds == 30 and not config.fs_freeze
    path = tmp_path / "quiesce.toml"
    path.write_text(toml_base(str(tmp_path / "state")))
    settings = load_settings(str(path), check_permissions=False)
    assert [i.name for i in settings.instances] == ["pg", "my", "mongo"]


def test_mutated_azure_configs_each_end_as_named_problems() -> None:
    kinds: set[str] = set()
    for label, data in azure_mutations("/etc/azure/pre.sh", "/etc/azure/post.sh", AZURE_COUNT):
        try:
            parse_azure_config(data, "/etc/azure/fuzz.json")
        except ConfigError as exc:
            assert exc.problems, label
            assert exc.code is AzureCode.INCORRECT_JSON_CONFIG_FILE, label
            for problem in exc.problems:
                assert problem.message and problem.code is AzureCode.INCORRECT_JSON_CONFIG_FILE
            _as_the_cli_shows_it(exc)
        else:
            pytest.fail(f"accepted an invalid config ({label})")
        kinds.add(label.split()[0].split("=")[0])
    assert len(kinds) >= 8  # the mix really varied


def test_mutated_quiesce_toml_each_end_as_named_problems(tmp_path: Path) -> None:
    path = tmp_path / "quiesce.toml"
    state = str(tmp_path / "state")
    nonfinite = 0
    for label, data in toml_mutations(state, TOML_COUNT):
        path.write_bytes(data)
        try:
            load_settings(str(path), check_permissions=False)
        except ConfigError as exc:
            assert exc.problems, label
            assert all(p.where and p.message for p in exc.problems), label
            _as_the_cli_shows_it(exc)
            assert "Hunter2" not in str(exc), label
            if "=" in label and any(w in label for w in ("nan", "inf", "1e4", "1e9")):
                nonfinite += 1
                assert any("not a finite number" in p.message for p in exc.problems), \
                    (label, str(exc))
        else:
            pytest.fail(f"accepted an invalid quiesce.toml ({label})")
    assert nonfinite >= 5


@pytest.mark.parametrize(("key", "value"), [
    ("max_hold_seconds", "nan"), ("max_hold_seconds", "inf"), ("pre_timeout_seconds", "nan"),
    ("pre_timeout_seconds", "-inf"), ("max_hold_seconds", "1e400"),
])
def test_nonfinite_top_level_numbers_are_refused_with_the_key_path(tmp_path: Path, key: str,
                                                                  value: str) -> None:
    path = tmp_path / "quiesce.toml"
    text = toml_base(str(tmp_path / "state")).replace(f"{key} = ", f"{key} = {value}\n#", 1)
    path.write_text(text)
    with pytest.raises(ConfigError) as info:
        load_settings(str(path), check_permissions=False)
    assert [p.where for p in info.value.problems] == [key]
    assert "not a finite number" in info.value.problems[0].message


@pytest.mark.parametrize(("section", "key"), [
    ("mysql", "lock_wait_seconds"), ("mysql", "kill_blockers_after"),
    ("mongodb", "connect_timeout"), ("postgresql", "connect_timeout"),
])
def test_nonfinite_plugin_numbers_are_refused_with_the_key_path(tmp_path: Path, section: str,
                                                                key: str) -> None:
    path = tmp_path / "quiesce.toml"
    text = toml_base(str(tmp_path / "state"))
    start = text.index(f"[[{section}]]")
    line_start = text.index(f"{key} = ", start)
    line_end = text.index("\n", line_start)
    path.write_text(text[:line_start] + f"{key} = nan" + text[line_end:])
    with pytest.raises(ConfigError) as info:
        load_settings(str(path), check_permissions=False)
    index = {"postgresql": 1, "mysql": 1, "mongodb": 1}[section]  # one-based
    assert [p.where for p in info.value.problems] == [f"{section}[{index}].{key}"]


def test_a_100k_deep_toml_array_is_a_config_problem(tmp_path: Path) -> None:
    path = tmp_path / "quiesce.toml"
    path.write_text(toml_base(str(tmp_path / "state")).replace(
        "max_hold_seconds = 120", "max_hold_seconds = " + "[" * 100_000 + "]" * 100_000))
    with pytest.raises(ConfigError) as info:
        load_settings(str(path), check_permissions=False)
    assert "nested too deeply" in str(info.value)


def test_a_200k_deep_json_array_is_incorrect_json_config_file() -> None:
    doc = json.dumps(azure_base("/a", "/b")).replace('"fuzz"', "[" * 200_000 + "]" * 200_000)
    with pytest.raises(ConfigError) as info:
        parse_azure_config(doc.encode())
    assert info.value.code is AzureCode.INCORRECT_JSON_CONFIG_FILE
    assert "nested too deeply" in str(info.value)
