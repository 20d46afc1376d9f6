"""The command line: dispatch, help, and errors (JSON when --json was asked for)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from quiesce.cli import COMMANDS, main


def test_every_command_has_help(capsys: pytest.CaptureFixture[str]) -> None:
    for name in COMMANDS:
        with pytest.raises(SystemExit) as exit_info:
            main([name, "--help"])
        assert exit_info.value.code == 0
        assert name in capsys.readouterr().out


def test_no_command_prints_help_and_fails(capsys: pytest.CaptureFixture[str]) -> None:
    assert main([]) == 2
    assert "COMMAND" in capsys.readouterr().out


def test_config_errors_are_json_with_json(tmp_path: Path,
                                          capsys: pytest.CaptureFixture[str]) -> None:
    missing = tmp_path / "nope.toml"
    assert main(["pre", "--config", str(missing), "--runtime-dir", str(tmp_path / "rt"),
                 "--json"]) == 2
    captured = capsys.readouterr()
    document = json.loads(captured.out)
    assert document["command"] == "pre"
    assert document["error"]["type"]
    assert str(missing) in document["error"]["message"]
    assert "nope.toml" in captured.err


def test_config_errors_are_text_without_json(tmp_path: Path,
                                             capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["pre", "--config", str(tmp_path / "nope.toml"),
                 "--runtime-dir", str(tmp_path / "rt")]) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    assert "nope.toml" in captured.err


def test_every_problem_is_in_the_json_error(tmp_path: Path,
                                            capsys: pytest.CaptureFixture[str]) -> None:
    config = tmp_path / "quiesce.toml"
    config.write_text("max_hold = 5\n")
    config.chmod(0o644)
    assert main(["pre", "--config", str(config), "--runtime-dir", str(tmp_path / "rt"),
                 "--json"]) == 2
    error = json.loads(capsys.readouterr().out)["error"]
    assert error["problems"], error
    assert all({"where", "message", "hint"} <= set(p) for p in error["problems"])
