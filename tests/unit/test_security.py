"""The permission rules of quiesce.security on stat results (no files needed)."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from quiesce.errors import AzureCode
from quiesce.security import directory_problems, file_mode_problems


def fake_stat(mode: int, uid: int = 0, kind: int = stat.S_IFREG) -> os.stat_result:
    return os.stat_result((kind | mode, 1, 1, 1, uid, 0, 10, 0, 0, 0))


@pytest.mark.parametrize(
    ("kind", "mode", "ok"),
    [
        ("config", 0o600, True),
        ("config", 0o400, True),
        ("config", 0o700, False),  # a config must not be executable
        ("config", 0o640, False),
        ("config", 0o604, False),
        ("config", 0o610, False),
        ("script", 0o700, True),
        ("script", 0o500, True),
        ("script", 0o600, False),  # a script must be executable by its owner
        ("script", 0o750, False),
        ("script", 0o701, False),
        ("script", 0o755, False),
        ("secret", 0o600, True),
        ("secret", 0o400, True),
        ("secret", 0o640, False),
        ("secret", 0o644, False),
    ],
)
def test_file_mode_rules(kind: str, mode: int, ok: bool) -> None:
    problems = file_mode_problems("/etc/x", fake_stat(mode), kind)
    assert (problems == []) is ok, problems
    for p in problems:
        assert "chmod" in p.hint


@pytest.mark.parametrize("kind", ["config", "script", "secret"])
def test_file_not_owned_by_root_is_refused_with_chown_fix(kind: str) -> None:
    mode = 0o700 if kind == "script" else 0o600
    problems = file_mode_problems("/etc/x", fake_stat(mode, uid=65534), kind)
    assert len(problems) == 1
    assert "not root" in problems[0].message
    assert problems[0].hint == "chown root:root /etc/x"


def test_every_file_problem_is_reported_at_once() -> None:
    problems = file_mode_problems("/etc/x", fake_stat(0o777, uid=1000), "config")
    messages = " | ".join(p.message for p in problems)
    assert len(problems) == 3, messages
    assert "not root" in messages and "group/other" in messages and "executable" in messages


@pytest.mark.parametrize(
    ("kind_bits", "word"),
    [(stat.S_IFDIR, "directory"), (stat.S_IFIFO, "FIFO"), (stat.S_IFSOCK, "socket"),
     (stat.S_IFCHR, "character device")],
)
def test_non_regular_files_are_refused(kind_bits: int, word: str) -> None:
    problems = file_mode_problems("/etc/x", fake_stat(0o600, kind=kind_bits), "config")
    assert len(problems) == 1 and word in problems[0].message


def test_code_is_attached_to_problems() -> None:
    code = AzureCode.INSUFFICIENT_PERMISSION_PRE
    problems = file_mode_problems("/x", fake_stat(0o777), "script", code)
    assert problems and all(p.code is code for p in problems)


def test_unknown_kind_is_a_programming_error() -> None:
    with pytest.raises(ValueError, match="kind"):
        file_mode_problems("/x", fake_stat(0o600), "binary")


@pytest.mark.parametrize(
    ("mode", "uid", "count"),
    [
        (0o755, 0, 0),
        (0o700, 0, 0),
        (0o555, 0, 0),
        (0o775, 0, 1),  # group-writable
        (0o757, 0, 1),  # world-writable
        (0o1777, 0, 1),  # sticky /tmp is still world-writable
        (0o755, 1000, 1),  # owned by someone else
        (0o777, 1000, 2),
    ],
)
def test_directory_rules(mode: int, uid: int, count: int) -> None:
    problems = directory_problems("/d", fake_stat(mode, uid=uid, kind=stat.S_IFDIR))
    assert len(problems) == count, problems
    if mode & 0o1000:
        assert "sticky" in problems[0].message


def test_executable_problems_accepts_the_system_shell_and_refuses_tmp(tmp_path: Path) -> None:
    from quiesce.security import executable_problems

    assert executable_problems("/bin/sh") == []  # a symlink on merged-/usr systems: followed
    program = tmp_path / "python3"
    program.write_bytes(b"")
    os.chmod(program, 0o755)
    problems = executable_problems(str(program))
    assert any("writable by group/other" in p.message for p in problems)  # /tmp is 1777
    assert executable_problems(str(tmp_path / "missing"))[0].message.startswith("cannot be")
