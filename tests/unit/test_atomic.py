"""Atomic replacement: the old content survives any failure, and no temp file is left."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from quiesce.atomic import write_atomic


def test_replaces_content_with_the_mode_set_before_writing(tmp_path: Path) -> None:
    target = tmp_path / "f"
    target.write_text("old")
    os.chmod(target, 0o644)
    write_atomic(target, b"new", 0o600)
    assert target.read_bytes() == b"new"
    assert os.stat(target).st_mode & 0o777 == 0o600
    assert os.listdir(tmp_path) == ["f"]


def test_failure_while_writing_keeps_the_old_file(tmp_path: Path) -> None:
    target = tmp_path / "f"
    target.write_text("old")
    with pytest.raises(TypeError):
        write_atomic(target, None)  # type: ignore[arg-type]
    assert target.read_text() == "old"
    assert os.listdir(tmp_path) == ["f"]


def test_backup_is_a_link_to_the_replaced_file(tmp_path: Path) -> None:
    target = tmp_path / "f"
    target.write_text("old")
    write_atomic(target, b"new", backup=str(tmp_path / "f.bak"))
    assert (tmp_path / "f.bak").read_text() == "old"
    assert target.read_text() == "new"


def test_things_planted_in_the_directory_are_neither_followed_nor_opened(
        tmp_path: Path) -> None:
    victim = tmp_path / "victim"
    victim.write_text("keep")
    target = tmp_path / "f"
    os.symlink(victim, tmp_path / f".f.{os.getpid()}.tmp")
    os.mkfifo(tmp_path / ".f.fifo.tmp")
    write_atomic(target, b"x")  # a FIFO opened for writing would block here forever
    assert victim.read_text() == "keep"
    assert target.read_bytes() == b"x"
    assert sorted(os.listdir(tmp_path)) == sorted(
        ["victim", "f", f".f.{os.getpid()}.tmp", ".f.fifo.tmp"])
