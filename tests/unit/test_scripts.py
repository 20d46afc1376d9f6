"""Pieces of quiesce.scripts that need no processes: line splitting and result wording."""

from __future__ import annotations

import os
from collections import deque
from pathlib import Path

import pytest

from quiesce.errors import AzureCode
from quiesce.scripts import MAX_LINE, Attempt, ScriptResult, _LineSplitter


def split(chunks: list[bytes]) -> list[str]:
    got: list[str] = []
    splitter = _LineSplitter("stdout", lambda s, line: got.append(line), deque(maxlen=5))
    for chunk in chunks:
        splitter.feed(chunk)
    splitter.close()
    return got


def test_lines_split_across_chunks_crlf_and_a_last_line_without_newline() -> None:
    assert split([b"a", b"b\nc", b"d\r\n\n", b"tail"]) == ["ab", "cd", "", "tail"]


def test_invalid_utf8_is_replaced_not_fatal() -> None:
    assert split([b"caf\xe9\n"]) == ["caf\ufffd"]


def test_an_endless_line_is_cut_into_bounded_pieces() -> None:
    lines = split([b"x" * (MAX_LINE * 2 + 10)])
    assert [len(line) for line in lines] == [MAX_LINE, MAX_LINE, 10]


def attempt(code: int | None, *, sig: int | None = None, timed_out: bool = False) -> Attempt:
    return Attempt(1, 0.0, 0.1, code, sig, timed_out)


def test_result_codes_and_descriptions() -> None:
    ok = ScriptResult("pre", "/s", [attempt(1), attempt(0)])
    assert ok.ok and ok.code is None and ok.describe() == ""
    failed = ScriptResult("post", "/s", [attempt(2), attempt(2)])
    assert failed.code is AzureCode.POST_SCRIPT_EXECUTION_FAILED
    assert "exited with status 2" in failed.describe() and "2 attempts" in failed.describe()
    slow = ScriptResult("pre", "/s", [attempt(1), attempt(None, sig=15, timed_out=True)])
    assert slow.timed_out and slow.code is AzureCode.PRE_SCRIPT_TIMEOUT
    assert "deadline" in slow.describe()
    never = ScriptResult("pre", "/s", [])
    assert not never.ok and never.code is AzureCode.PRE_SCRIPT_EXECUTION_FAILED
    assert "not run" in never.describe()


@pytest.mark.parametrize(("first_line", "interpreter"), [
    (b"#!/bin/sh\n", "/bin/sh"),
    (b"#! /bin/bash -e\n", "/bin/bash"),
    (b"#!/usr/bin/env python3\n", "python3"),
    (b"#!/usr/bin/env -S python3 -u\n", "python3"),
    (b"\x7fELF\x02\x01", "ELF"),
    (b"echo no shebang\n", None),
    (b"#!\n", None),
])
def test_interpreter_of(tmp_path: Path, first_line: bytes, interpreter: str | None) -> None:
    from quiesce.scripts import interpreter_of

    path = tmp_path / "script"
    path.write_bytes(first_line + b"echo hi\n")
    fd = os.open(path, os.O_RDONLY)
    try:
        assert interpreter_of(fd) == interpreter
    finally:
        os.close(fd)


def test_azure_shell_note_only_for_scripts_sh_would_not_run_as_written(tmp_path: Path) -> None:
    from quiesce.scripts import azure_shell_note

    def note(first_line: bytes) -> str | None:
        path = tmp_path / "s"
        path.write_bytes(first_line + b"\n")
        fd = os.open(path, os.O_RDONLY)
        try:
            return azure_shell_note(str(path), fd)
        finally:
            os.close(fd)

    assert note(b"#!/bin/sh") is None and note(b"#!/usr/bin/env sh") is None
    text = note(b"#!/usr/bin/python3")
    assert text is not None and "python3" in text and "sh <script>" in text
    assert note(b"#!/bin/bash") is not None


@pytest.mark.parametrize(("first_line", "fragment"), [
    (b"echo no shebang", "no interpreter line"),
    (b"#!", "names no interpreter"),
    (b"#!sh", "not an absolute path"),
    (b"#!/usr/bin/pyhton3-quiesce-typo", "does not exist"),
    (b"#!/usr/bin/env no-such-program-quiesce-typo", "needs no-such-program-quiesce-typo on PATH"),
])
def test_interpreter_problem_finds_what_execve_would_refuse(tmp_path: Path, first_line: bytes,
                                                            fragment: str) -> None:
    from quiesce.scripts import interpreter_problem

    path = tmp_path / "script"
    path.write_bytes(first_line + b"\necho hi\n")
    fd = os.open(path, os.O_RDONLY)
    try:
        problem = interpreter_problem(fd, str(path), "/usr/bin:/bin")
    finally:
        os.close(fd)
    assert problem is not None and fragment in problem[0] and problem[1]


@pytest.mark.parametrize("first_line", [b"#!/bin/sh", b"#!/usr/bin/env sh", b"#! /bin/sh -e"])
def test_interpreter_problem_accepts_runnable_scripts(tmp_path: Path, first_line: bytes) -> None:
    from quiesce.scripts import interpreter_problem

    path = tmp_path / "script"
    path.write_bytes(first_line + b"\n")
    fd = os.open(path, os.O_RDONLY)
    try:
        assert interpreter_problem(fd, str(path), "/usr/bin:/bin") is None
    finally:
        os.close(fd)
