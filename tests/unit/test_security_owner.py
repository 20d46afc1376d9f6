"""Who may own what quiesce trusts: root always; the acting process's own uid when that is not
root; never another user. Pure rules on stat results, for an explicit acting uid."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from quiesce.security import (
    directory_problems,
    executable_problems,
    file_mode_problems,
    trusted_uids,
)

USER, OTHER = 1000, 1001


def fake_stat(mode: int, uid: int = 0, kind: int = stat.S_IFREG) -> os.stat_result:
    return os.stat_result((kind | mode, 1, 1, 1, uid, 0, 10, 0, 0, 0))


def test_trusted_owners() -> None:
    assert trusted_uids(0) == {0}
    assert trusted_uids(USER) == {0, USER}
    assert trusted_uids() == {0, os.geteuid()}


@pytest.mark.parametrize(("owner", "acting", "trusted"), [
    (0, 0, True),
    (USER, 0, False),        # as root, a user's file could make root run anything
    (0, USER, True),         # root's file is beyond the user's reach
    (USER, USER, True),      # the user's own file: as trustworthy as the user
    (OTHER, USER, False),    # another user's file: never
])
@pytest.mark.parametrize("kind", ["config", "script", "secret"])
def test_file_owner_rule(kind: str, owner: int, acting: int, trusted: bool) -> None:
    mode = 0o700 if kind == "script" else 0o600
    problems = file_mode_problems("/x/f", fake_stat(mode, uid=owner), kind, euid=acting)
    assert (problems == []) is trusted, problems


@pytest.mark.parametrize(("owner", "acting", "trusted"), [
    (0, 0, True), (USER, 0, False), (0, USER, True), (USER, USER, True), (OTHER, USER, False),
])
def test_directory_owner_rule(owner: int, acting: int, trusted: bool) -> None:
    problems = directory_problems("/x", fake_stat(0o755, owner, stat.S_IFDIR), euid=acting)
    assert (problems == []) is trusted, problems


@pytest.mark.parametrize("acting", [0, USER])
@pytest.mark.parametrize("mode", [0o640, 0o604, 0o620, 0o602, 0o660])
def test_group_other_bits_are_refused_whoever_owns_the_file(acting: int, mode: int) -> None:
    problems = file_mode_problems("/x/f", fake_stat(mode, uid=acting), "config", euid=acting)
    assert [p.hint for p in problems] == ["chmod 600 /x/f"]


@pytest.mark.parametrize("acting", [0, USER])
@pytest.mark.parametrize("mode", [0o775, 0o757, 0o1777, 0o777])
def test_group_other_writable_directory_is_refused_whoever_owns_it(acting: int,
                                                                   mode: int) -> None:
    problems = directory_problems("/x", fake_stat(mode, acting, stat.S_IFDIR), euid=acting)
    assert len(problems) == 1 and "writable by group/other" in problems[0].message


def test_root_messages_are_unchanged() -> None:
    (problem,) = file_mode_problems("/etc/x", fake_stat(0o600, uid=USER), "config", euid=0)
    assert problem.message.endswith(", not root")
    assert problem.hint == "chown root:root /etc/x"
    (problem,) = directory_problems("/etc", fake_stat(0o755, USER, stat.S_IFDIR), euid=0)
    assert "not root: its owner could replace the file" in problem.message
    assert problem.hint.startswith("chown root:root /etc")
    (problem,) = directory_problems("/etc", fake_stat(0o775, 0, stat.S_IFDIR), euid=0)
    assert "someone other than root could replace the file" in problem.message
    assert "root-owned directory such as /etc/azure" in problem.hint


def test_non_root_messages_name_both_trusted_owners_and_a_fix_the_user_can_apply() -> None:
    (problem,) = file_mode_problems("/x/f", fake_stat(0o600, uid=OTHER), "secret", euid=USER)
    assert f"is owned by uid {OTHER}" in problem.message
    assert f"not root or uid {USER}" in problem.message
    assert "chown root" not in problem.hint and "cp /x/f" in problem.hint
    (problem,) = directory_problems("/x", fake_stat(0o755, OTHER, stat.S_IFDIR), euid=USER)
    assert f"not root or uid {USER}" in problem.message
    assert "directory of your own" in problem.hint
    (problem,) = directory_problems("/x", fake_stat(0o777, USER, stat.S_IFDIR), euid=USER)
    assert "someone other than root and" in problem.message
    assert "/etc/azure" not in problem.hint


def test_mode_rules_do_not_depend_on_who_acts() -> None:
    for acting in (0, USER):
        assert file_mode_problems("/x", fake_stat(0o700, acting), "config", euid=acting)
        assert file_mode_problems("/x", fake_stat(0o600, acting), "script", euid=acting)
        assert not file_mode_problems("/x", fake_stat(0o500, acting), "script", euid=acting)


def test_interpreters_follow_the_same_owner_rule(tmp_path: Path) -> None:
    # /bin/sh: root's, in root's directories: fine for anyone.
    assert executable_problems("/bin/sh", euid=0) == []
    assert executable_problems("/bin/sh", euid=USER) == []
    if os.geteuid() != 0:
        pytest.skip("needs root: chowns an interpreter to other users")
    program = tmp_path / "python"
    program.write_bytes(b"#!/bin/sh\n")
    program.chmod(0o755)

    def owner_problems(owner: int, acting: int) -> list[str]:
        os.chown(program, owner, 0)
        return [p.message for p in executable_problems(str(program), euid=acting)
                if p.where == str(program)]  # tmp_path's own directory problems aside

    assert owner_problems(USER, USER) == []      # e.g. the user's own venv
    assert owner_problems(0, USER) == []
    (message,) = owner_problems(OTHER, USER)
    assert f"owned by uid {OTHER}" in message and f"not root or uid {USER}" in message
    (message,) = owner_problems(USER, 0)
    assert "not root: its owner could make root run anything" in message
