"""Pieces of quiesce.callers.scripts that need no processes: line splitting, the bounded output
capture
and result wording."""

from __future__ import annotations

import os
from collections import deque
from pathlib import Path

import pytest

from quiesce.callers.scripts import (
    HEAD_BYTES,
    MAX_LINE,
    TAIL_BYTES,
    Attempt,
    ScriptResult,
    StreamOutput,
    _Capture,
    _LineSplitter,
)
from quiesce.errors import AzureCode


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


def capture(chunks: list[bytes]) -> tuple[_Capture, list[str], deque[str]]:
    got: list[str] = []
    tail: deque[str] = deque(maxlen=20)
    cap = _Capture("stdout", lambda s, line: got.append(line), tail)
    for chunk in chunks:
        cap.feed(chunk)
    return cap, got, tail


def test_short_output_is_kept_whole_and_reaches_the_sink_line_by_line() -> None:
    cap, got, _ = capture([b"one\ntw", b"o\nthree"])
    assert got == ["one", "two"]  # live, as lines complete
    cap.close()
    assert got == ["one", "two", "three"]
    out = cap.result()
    assert out == StreamOutput("stdout", 13, "one\ntwo\nthree", "", 0)


def test_output_between_head_and_head_plus_tail_loses_nothing() -> None:
    data = b"".join(b"%07d\n" % i for i in range((HEAD_BYTES + TAIL_BYTES // 2) // 8))
    cap, got, _ = capture([data[i:i + 5000] for i in range(0, len(data), 5000)])
    cap.close()
    out = cap.result()
    assert out.bytes == len(data) and out.omitted_bytes == 0
    assert (out.head + out.tail).encode() == data
    assert got == data.decode().splitlines()


def test_huge_output_keeps_a_bounded_head_and_tail_and_counts_every_byte() -> None:
    line = b"0123456789012345678901234\n"
    block = line * 40000  # about 1 MB, as one read may return
    chunks = [block] * 30 + [b"the last line\n"]
    total = sum(map(len, chunks))
    cap, got, tail = capture(chunks)
    lines_before_close = len(got)
    assert lines_before_close <= HEAD_BYTES // len(line) + 1  # no per-line work past the head
    assert len(cap.head) == HEAD_BYTES and len(cap.tail) == TAIL_BYTES
    cap.close()
    out = cap.result()
    stream = b"".join(chunks)
    assert out.bytes == total
    assert out.head.encode() == stream[:HEAD_BYTES]
    assert out.tail.encode() == stream[-TAIL_BYTES:]
    assert out.omitted_bytes == total - HEAD_BYTES - TAIL_BYTES
    note = next(line for line in got if line.startswith("[quiesce:"))
    assert f"stdout was {total} bytes" in note and f"{out.omitted_bytes} bytes" in note
    assert got[-1] == "the last line" and tail[-1] == "stdout: the last line"
    assert len(got) <= (HEAD_BYTES + TAIL_BYTES) // len(line) + 4


def test_one_big_chunk_and_many_small_ones_keep_the_same_bytes() -> None:
    stream = bytes(range(256)) * 2000
    one, _, _ = capture([stream])
    many, _, _ = capture([stream[i:i + 777] for i in range(0, len(stream), 777)])
    for cap in (one, many):
        cap.close()
    assert one.head == many.head == stream[:HEAD_BYTES]
    assert one.tail == many.tail == stream[-TAIL_BYTES:]
    assert one.result().omitted_bytes == many.result().omitted_bytes


def test_result_output_json_is_the_last_attempts() -> None:
    first = Attempt(1, 0.0, 0.1, 1, output=(StreamOutput("stdout", 3, "a\n", "", 0),))
    last = Attempt(2, 0.0, 0.1, 0, output=(StreamOutput("stdout", 5, "b", "c", 2),
                                           StreamOutput("stderr", 0, "", "", 0)))
    result = ScriptResult("pre", "/s", [first, last])
    assert result.output_json() == {
        "stdout": {"bytes": 5, "head": "b", "tail": "c", "omitted_bytes": 2},
        "stderr": {"bytes": 0, "head": "", "tail": "", "omitted_bytes": 0}}
    assert first.output_bytes() == {"stdout": 3}
    assert ScriptResult("pre", "/s", []).output_json() == {}


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
    from quiesce.callers.scripts import interpreter_of

    path = tmp_path / "script"
    path.write_bytes(first_line + b"echo hi\n")
    fd = os.open(path, os.O_RDONLY)
    try:
        assert interpreter_of(fd) == interpreter
    finally:
        os.close(fd)


def test_azure_shell_note_only_for_scripts_sh_would_not_run_as_written(tmp_path: Path) -> None:
    from quiesce.callers.scripts import azure_shell_note

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
    from quiesce.callers.scripts import interpreter_problem

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
    from quiesce.callers.scripts import interpreter_problem

    path = tmp_path / "script"
    path.write_bytes(first_line + b"\n")
    fd = os.open(path, os.O_RDONLY)
    try:
        assert interpreter_problem(fd, str(path), "/usr/bin:/bin") is None
    finally:
        os.close(fd)
