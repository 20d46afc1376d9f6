"""quiesce.toml validation: defaults, selection, names, every problem at once with key paths.

File-permission and secret-file rules need root-owned files: they are tested in
tests/integration/test_holder.py. Here the files live in tmp_path and
``check_permissions=False`` keeps the tests about the document itself.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from quiesce.errors import ConfigError
from quiesce.settings import load_settings, parse_plugin_list

EXAMPLE = Path(__file__).resolve().parent.parent / "example_plugin"


@pytest.fixture(autouse=True)
def example_plugin(monkeypatch: pytest.MonkeyPatch) -> None:
    """Make the example plugin's entry point visible, as an installed distribution would."""
    monkeypatch.syspath_prepend(str(EXAMPLE))


def load(tmp_path: Path, text: str, **kwargs: object):
    path = tmp_path / "quiesce.toml"
    path.write_text(text)
    return load_settings(str(path), check_permissions=False, **kwargs)


def problems_of(tmp_path: Path, text: str, **kwargs: object) -> list[str]:
    with pytest.raises(ConfigError) as caught:
        load(tmp_path, text, **kwargs)
    return [str(p) for p in caught.value.problems]


def test_defaults_and_single_instance_named_after_engine(tmp_path: Path) -> None:
    settings = load(tmp_path, '[[flock]]\npath = "/run/x.lock"\n')
    assert settings.max_hold_seconds == 300
    assert settings.pre_timeout_seconds == 60
    assert settings.state_dir == "/var/lib/quiesce"
    [instance] = settings.instances
    assert (instance.engine, instance.name) == ("flock", "flock")
    assert instance.options["path"] == "/run/x.lock"
    assert instance.options["sticky"] is False  # the engine schema's default
    assert instance.max_hold_seconds == 300
    assert settings.engine_of(instance).name == "flock"


def test_top_level_values_reach_every_instance(tmp_path: Path) -> None:
    settings = load(tmp_path, 'max_hold_seconds = 42.5\nstate_dir = "/srv/q"\n'
                    '[[flock]]\nname = "a"\npath = "/a"\n[[flock]]\nname = "b"\npath = "/b"\n')
    assert [i.name for i in settings.instances] == ["a", "b"]
    assert {i.max_hold_seconds for i in settings.instances} == {42.5}
    assert {i.state_dir for i in settings.instances} == {"/srv/q"}


def test_several_instances_need_unique_names(tmp_path: Path) -> None:
    found = problems_of(tmp_path, '[[flock]]\npath = "/a"\n[[flock]]\nname = "x"\npath = "/b"\n'
                        '[[flock]]\nname = "x"\npath = "/c"\n')
    text = "\n".join(found)
    assert "flock[1].name: required when there are several" in text
    assert "flock[3].name: 'x' is already used by flock[2]" in text


def test_every_problem_is_reported_at_once_with_its_key_path(tmp_path: Path) -> None:
    found = problems_of(tmp_path, 'max_hold_seconds = "30"\nstate_dir = "relative"\n'
                        'max_hold = 5\n[[flock]]\npath = 7\nstiky = true\nname = "bad name"\n'
                        '[[postgersql]]\nconninfo = "x"\n')
    text = "\n".join(found)
    assert "max_hold_seconds: expected an integer or a number, found the string '30' " \
           "(write 30 without quotes)" in text
    assert "state_dir: 'relative' is not an absolute path" in text
    assert "max_hold: unknown key (did you mean 'max_hold_seconds'?)" in text
    assert "flock[1].path: expected a string, found the number 7" in text
    assert "flock[1].stiky: unknown key (did you mean 'sticky'?)" in text
    assert "flock[1].name: 'bad name' is not a valid instance name" in text
    assert "postgersql: no engine plugin named 'postgersql' is installed" in text
    assert "did you mean 'postgresql'?" in text
    assert len(found) == 7


def test_ranges(tmp_path: Path) -> None:
    found = problems_of(tmp_path, 'max_hold_seconds = 0\npre_timeout_seconds = 99999\n'
                        '[[flock]]\npath = "/a"\n')
    text = "\n".join(found)
    assert "max_hold_seconds: 0 is below the minimum 1" in text
    assert "pre_timeout_seconds: 99999 is above the maximum 1800" in text
    found = problems_of(tmp_path, 'max_hold_seconds = 10\npre_timeout_seconds = 20\n'
                        '[[flock]]\npath = "/a"\n')
    assert any("must be shorter than max_hold_seconds" in p for p in found)


def test_unknown_engine_section_and_selection(tmp_path: Path) -> None:
    found = problems_of(tmp_path, 'plugins = ["nosuch"]\n[[flock]]\npath = "/a"\n')
    assert any(p.startswith("plugins: no engine plugin named 'nosuch' is installed")
               for p in found)
    found = problems_of(tmp_path, '[[flock]]\npath = "/a"\n', plugins=["flock", "nosuch"])
    assert any(p.startswith("--plugins: no engine plugin named 'nosuch'") for p in found)


def test_selected_engine_without_section(tmp_path: Path) -> None:
    found = problems_of(tmp_path, 'plugins = ["flock", "postgresql"]\n[[flock]]\npath = "/a"\n')
    assert any("selects 'postgresql' but the file has no [[postgresql]] section" in p
               for p in found)


def test_empty_selection_is_an_error(tmp_path: Path) -> None:
    found = problems_of(tmp_path, "max_hold_seconds = 30\n")
    assert any("selects no database instance" in p for p in found)


def test_only_selected_plugins_are_imported(tmp_path: Path) -> None:
    for name in ("quiesce_postgresql.plugin", "quiesce_mysql.plugin", "quiesce_mongodb.plugin"):
        sys.modules.pop(name, None)
    # A postgresql section is present but deselected: it is neither validated nor imported.
    settings = load(tmp_path, '[[flock]]\npath = "/a"\n[[postgresql]]\nbogus = 1\n',
                    plugins=["flock"])
    assert [i.engine for i in settings.instances] == ["flock"]
    assert "quiesce_postgresql.plugin" not in sys.modules
    assert "quiesce_mysql.plugin" not in sys.modules


def test_plugins_key_selects(tmp_path: Path) -> None:
    settings = load(tmp_path, 'plugins = ["flock"]\n[[flock]]\npath = "/a"\n'
                    '[[postgresql]]\nconninfo = "host=x"\n')
    assert settings.selected == ("flock",)


def test_invalid_toml_is_reported_with_position(tmp_path: Path) -> None:
    found = problems_of(tmp_path, '[[flock]\npath = "/a"\n')
    assert len(found) == 1 and "is not valid TOML" in found[0] and "line 1" in found[0]


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as caught:
        load_settings(str(tmp_path / "nope.toml"), check_permissions=False)
    assert "no such file" in str(caught.value)


def test_secret_file_must_exist(tmp_path: Path) -> None:
    found = problems_of(tmp_path, '[[flock]]\npath = "/a"\npassword_file = "/nonexistent/pw"\n')
    assert any(p.startswith("flock[1].password_file: /nonexistent/pw: no such file")
               for p in found)
    found = problems_of(tmp_path, '[[flock]]\npath = "/a"\npassword_file = "pw"\n')
    assert any("is not an absolute path" in p for p in found)


def test_parse_plugin_list() -> None:
    assert parse_plugin_list(None) is None
    assert parse_plugin_list("postgresql, mysql,,") == ["postgresql", "mysql"]
    assert parse_plugin_list(["a"]) == ["a"]


def test_cross_key_rules_of_engines_are_reported_with_the_rest(tmp_path: Path) -> None:
    found = problems_of(
        tmp_path,
        'max_hold_seconds = "60"\n'
        '[[mysql]]\nlock_wait_seconds = 5\nkill_blockers_after = 10\n'
        '[[mongodb]]\nuri = "mongodb://127.0.0.1:27017/"\nuri_file = "/etc/quiesce/m.uri"\n',
    )
    assert any(p.startswith("max_hold_seconds") for p in found)
    assert any("mysql[1].kill_blockers_after" in p and "lock_wait_seconds" in p for p in found)
    assert any(p.startswith("mongodb[1]") and "both uri and uri_file" in p for p in found)


def test_mongodb_needs_a_uri_or_a_uri_file(tmp_path: Path) -> None:
    found = problems_of(tmp_path, "[[mongodb]]\nallow_locked = true\n")
    assert any("neither uri nor uri_file" in p for p in found)


def test_an_empty_plugins_option_says_so(tmp_path: Path) -> None:
    """``--plugins ,`` must not be reported as a file without sections."""
    problems = problems_of(tmp_path, '[[flock]]\npath = "/run/x.lock"\n', plugins=[])
    assert problems == ["--plugins: names no engine (e.g. --plugins postgresql,mysql, or "
                        "leave it out to use every engine the file has a section for)"]


@pytest.mark.parametrize(("line", "where"), [
    ("max_hold_seconds = nan", "max_hold_seconds"),
    ("max_hold_seconds = -inf", "max_hold_seconds"),
    ("pre_timeout_seconds = nan", "pre_timeout_seconds"),
    ("pre_timeout_seconds = inf", "pre_timeout_seconds"),
])
def test_nan_and_infinity_are_refused_with_the_key_path(tmp_path: Path, line: str,
                                                       where: str) -> None:
    found = problems_of(tmp_path, f'{line}\n[[flock]]\npath = "/x"\n')
    assert found == [f"{where}: {line.split(' = ')[1].lstrip('+')} is not a finite number "
                     "(write a finite number: NaN and infinity are not numbers of seconds or "
                     "counts)"]


def test_nan_anywhere_in_the_file_is_refused_even_outside_the_schema(tmp_path: Path) -> None:
    found = problems_of(tmp_path, '[[flock]]\npath = "/x"\n[[unselected]]\nx = [1, nan]\n',
                        plugins=["flock"])
    assert any(p.startswith("unselected[1].x[2]: nan is not a finite number") for p in found)


def test_an_integer_of_thousands_of_digits_is_a_problem_not_a_traceback(tmp_path: Path) -> None:
    found = problems_of(tmp_path, f'max_hold_seconds = {"9" * 5000}\n[[flock]]\npath = "/x"\n')
    assert len(found) == 1 and "thousands of digits" in found[0]


def test_a_huge_number_is_left_out_of_cross_key_checks(tmp_path: Path) -> None:
    # Out of range: reported once, and pre_timeout is not compared with it.
    found = problems_of(tmp_path, f'max_hold_seconds = {10**40}\npre_timeout_seconds = 400\n'
                        '[[flock]]\npath = "/x"\n')
    assert found == ["max_hold_seconds: a 41-digit number is above the maximum 3600 (seconds "
                     "the locks may stay held if 'post' never comes)"]


@pytest.mark.parametrize("value", ["[" * 100_000 + "]" * 100_000,
                                   "{ a = " * 50_000 + "1" + " }" * 50_000,
                                   "[" * 40 + "]" * 40])
def test_deep_nesting_is_a_config_error_not_recursion_error(tmp_path: Path, value: str) -> None:
    found = problems_of(tmp_path, f'x = {value}\n[[flock]]\npath = "/x"\n')
    assert len(found) == 1 and "nested" in found[0]
