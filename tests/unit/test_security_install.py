"""Where quiesce itself may be installed (issue 7, item 5): never under a directory that users
other than root can write, sticky or not. A venv under /tmp is refused: once a tmp cleaner
removes it, anyone can re-create the path, and root then runs their code at the next backup."""

from __future__ import annotations

import os
import shutil
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from quiesce import security
from quiesce.security import (
    UnsafeInstallation,
    replaceable_components,
    require_safe_installation,
    running_installation_paths,
)


@pytest.fixture
def safe_base() -> Iterator[Path]:
    """A root-owned mode-755 directory under /run (root-owned, mode 755 itself)."""
    if os.geteuid() != 0:
        pytest.skip("needs root: the trusted directories are root-owned ones under /run")
    base = Path(tempfile.mkdtemp(prefix="qsi-", dir="/run"))
    base.chmod(0o755)
    try:
        yield base
    finally:
        shutil.rmtree(base, ignore_errors=True)


def fake_venv(parent: Path) -> Path:
    script = parent / "venv" / "bin" / "quiesce"
    script.parent.mkdir(parents=True)
    for directory in (parent / "venv", script.parent):
        directory.chmod(0o755)
    script.write_text("#!/usr/bin/python3\n")
    script.chmod(0o755)
    return script


def test_a_venv_under_sticky_tmp_is_refused(tmp_path: Path) -> None:
    script = fake_venv(tmp_path)
    problems = replaceable_components(str(script))
    tmp_mode = os.stat("/tmp").st_mode & 0o7777
    assert tmp_mode & 0o1022 == 0o1022, "this test needs a sticky world-writable /tmp"
    assert (f"/tmp is writable by group/other (mode {tmp_mode:04o}, sticky, but anyone can "
            "create names in it)") in problems, problems


def test_a_root_owned_755_tree_is_accepted(safe_base: Path) -> None:
    assert replaceable_components(str(fake_venv(safe_base))) == []


def test_writable_or_foreign_components_are_named(safe_base: Path) -> None:
    script = fake_venv(safe_base)
    (safe_base / "venv").chmod(0o775)
    script.chmod(0o757)
    os.chown(script.parent, 65534, 0)
    problems = replaceable_components(str(script))
    assert problems == [
        f"{safe_base}/venv is writable by group/other (mode 0775)",
        f"{script.parent} is owned by uid 65534 ({_name(65534)})",
        f"{script} is writable by group/other (mode 0757)",
    ]


def test_a_symlink_is_judged_by_its_target_and_its_own_directory(safe_base: Path,
                                                                 tmp_path: Path) -> None:
    target = fake_venv(tmp_path)
    link = safe_base / "quiesce"
    link.symlink_to(target)
    problems = replaceable_components(str(link))
    assert any(p.startswith("/tmp is writable by group/other") for p in problems), problems
    assert not any(p.startswith(str(link)) for p in problems)  # the link itself is fine


def test_a_missing_component_is_a_problem(safe_base: Path) -> None:
    assert replaceable_components(str(safe_base / "gone" / "quiesce")) == [
        f"{safe_base}/gone: cannot be examined (No such file or directory)"]


def test_as_a_user_that_users_own_directories_are_trusted(tmp_path: Path) -> None:
    """Non-root: the acting user's own files count as trusted (security.trusted_uids)."""
    base = tmp_path / "home"
    base.mkdir(mode=0o755)
    mine = os.stat(base).st_uid
    problems = replaceable_components(str(base), euid=mine)
    assert f"{base} is owned by" not in " ".join(problems)


def test_this_quiesce_is_safe_to_run(safe_base: Path) -> None:
    """The test venv is root-owned under /work: pre/post would start (no raise)."""
    paths = running_installation_paths()
    assert sys.executable in paths
    assert os.path.dirname(os.path.abspath(security.__file__)) in paths
    problems = [p for path in paths for p in replaceable_components(path)]
    if problems:
        pytest.skip(f"this checkout itself is not root-safe: {problems}")
    require_safe_installation()


def test_pre_and_post_refuse_an_installation_under_tmp(tmp_path: Path,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    script = fake_venv(tmp_path)
    monkeypatch.setattr(security, "running_installation_paths", lambda: [str(script)])
    with pytest.raises(UnsafeInstallation) as caught:
        require_safe_installation()
    assert str(caught.value).startswith("refusing to run: this quiesce could have been "
                                        "replaced by users other than ")
    assert "/tmp is writable by group/other" in str(caught.value)
    assert "never under /tmp" in caught.value.hint


def _name(uid: int) -> str:
    import pwd

    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return str(uid)
