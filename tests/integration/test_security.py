"""open_trusted on real files: ownership, modes, parent directories, symlinks, FIFOs."""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from pathlib import Path

import pytest

from quiesce.errors import AzureCode, PermissionProblem
from quiesce.security import TrustedFileNotFound, check_trusted, open_trusted

NOBODY = 65534

pytestmark = pytest.mark.timeout(60)


def write(path: Path, text: str, mode: int, uid: int = 0) -> Path:
    path.write_text(text)
    os.chown(path, uid, 0)
    os.chmod(path, mode)
    return path


def test_good_config_is_opened_and_read_from_the_checked_descriptor(root_dir: Path) -> None:
    cfg = write(root_dir / "c.json", '{"a": 1}', 0o600)
    with open_trusted(cfg, "config") as trusted:
        assert os.fstat(trusted.fd).st_ino == cfg.stat().st_ino
        assert trusted.read_bytes() == b'{"a": 1}'
        fd = trusted.fd
    with pytest.raises(OSError):
        os.fstat(fd)  # closed by the context manager


def test_descriptor_is_nonblocking_cleared_and_cloexec(root_dir: Path) -> None:
    cfg = write(root_dir / "c.json", "{}", 0o600)
    import fcntl

    with open_trusted(cfg, "config") as trusted:
        assert not fcntl.fcntl(trusted.fd, fcntl.F_GETFL) & os.O_NONBLOCK
        assert not os.get_inheritable(trusted.fd)


def test_script_runs_through_its_descriptor(root_dir: Path) -> None:
    script = write(root_dir / "s.sh", '#!/bin/sh\necho "ran $#"\n', 0o700)
    with open_trusted(script, "script") as trusted:
        # Replace the file after the check: the descriptor still runs what was checked.
        os.unlink(script)
        write(script, "#!/bin/sh\necho replaced\n", 0o700)
        out = subprocess.run([trusted.fd_path, "x"], pass_fds=[trusted.fd],
                             capture_output=True, text=True, timeout=30, check=True)
    assert out.stdout == "ran 1\n"


@pytest.mark.parametrize(
    ("kind", "mode", "uid", "fragment"),
    [
        ("config", 0o600, NOBODY, "not root"),
        ("config", 0o640, 0, "group/other"),
        ("config", 0o604, 0, "group/other"),
        ("config", 0o700, 0, "must not be executable"),
        ("script", 0o600, 0, "executable by its owner"),
        ("script", 0o750, 0, "group/other"),
        ("script", 0o701, 0, "group/other"),
        ("script", 0o700, NOBODY, "not root"),
        ("secret", 0o644, 0, "group/other"),
        ("secret", 0o600, NOBODY, "not root"),
    ],
)
def test_file_rules(root_dir: Path, kind: str, mode: int, uid: int, fragment: str) -> None:
    path = write(root_dir / "f", "#!/bin/sh\n", mode, uid)
    with pytest.raises(PermissionProblem) as info:
        open_trusted(path, kind)  # type: ignore[arg-type]
    assert any(fragment in p.message for p in info.value.problems), info.value.problems
    assert all(p.hint for p in info.value.problems)
    assert check_trusted(path, kind) == info.value.problems  # type: ignore[arg-type]


def test_every_problem_at_once_with_code(root_dir: Path) -> None:
    sub = root_dir / "sub"
    sub.mkdir()
    os.chmod(sub, 0o775)
    path = write(sub / "s.sh", "#!/bin/sh\n", 0o666, NOBODY)
    code = AzureCode.INSUFFICIENT_PERMISSION_POST
    with pytest.raises(PermissionProblem) as info:
        open_trusted(path, "script", code=code)
    wheres = [p.where for p in info.value.problems]
    assert str(sub) in wheres and str(path) in wheres
    assert len(info.value.problems) == 4  # dir writable, owner, group/other bits, not exec
    assert info.value.code is code and all(p.code is code for p in info.value.problems)


def test_group_writable_parent_directory_is_refused(root_dir: Path) -> None:
    sub = root_dir / "sub"
    sub.mkdir()
    os.chmod(sub, 0o770)
    path = write(sub / "c.json", "{}", 0o600)
    problems = check_trusted(path, "config")
    assert [p.where for p in problems] == [str(sub)]
    assert "chmod go-w" in problems[0].hint


def test_parent_directory_owned_by_another_user_is_refused(root_dir: Path) -> None:
    sub = root_dir / "sub"
    sub.mkdir(mode=0o755)
    os.chown(sub, NOBODY, 0)
    path = write(sub / "c.json", "{}", 0o600)
    problems = check_trusted(path, "config")
    assert [p.where for p in problems] == [str(sub)]
    assert "not root" in problems[0].message


def test_world_writable_sticky_tmp_is_refused(root_dir: Path) -> None:
    path = Path(tempfile.mkdtemp(dir="/tmp")) / "c.json"
    try:
        write(path, "{}", 0o600)
        problems = check_trusted(path, "config")
        assert "/tmp" in [p.where for p in problems]
    finally:
        shutil.rmtree(path.parent)


def test_symlinked_final_component_is_refused(root_dir: Path) -> None:
    real = write(root_dir / "real.json", "{}", 0o600)
    link = root_dir / "link.json"
    link.symlink_to(real)
    problems = check_trusted(link, "config")
    assert len(problems) == 1 and "symbolic link" in problems[0].message
    assert str(real) in problems[0].hint


def test_symlinked_directory_is_resolved_and_its_target_checked(root_dir: Path) -> None:
    good = root_dir / "good"
    good.mkdir(mode=0o755)
    write(good / "c.json", "{}", 0o600)
    (root_dir / "via").symlink_to(good)
    assert check_trusted(root_dir / "via" / "c.json", "config") == []
    # relative link with '..' components
    (root_dir / "rel").symlink_to("../" + root_dir.name + "/good")
    assert check_trusted(root_dir / "rel" / "c.json", "config") == []

    bad = root_dir / "bad"
    bad.mkdir()
    os.chmod(bad, 0o777)
    write(bad / "c.json", "{}", 0o600)
    (root_dir / "via-bad").symlink_to(bad)
    problems = check_trusted(root_dir / "via-bad" / "c.json", "config")
    assert [p.where for p in problems] == [str(bad)]


def test_symlink_loop_is_an_error_not_a_hang(root_dir: Path) -> None:
    (root_dir / "a").symlink_to(root_dir / "b")
    (root_dir / "b").symlink_to(root_dir / "a")
    problems = check_trusted(root_dir / "a" / "c.json", "config")
    assert problems and "symbolic links" in problems[0].message


def test_fifo_does_not_hang_and_is_refused(root_dir: Path) -> None:
    fifo = root_dir / "fifo"
    os.mkfifo(fifo, 0o600)
    problems = check_trusted(fifo, "config")
    assert len(problems) == 1 and "FIFO" in problems[0].message


def test_directory_instead_of_file_is_refused(root_dir: Path) -> None:
    d = root_dir / "d.json"
    d.mkdir(mode=0o700)
    problems = check_trusted(d, "config")
    assert len(problems) == 1 and "directory" in problems[0].message


def test_missing_file_is_not_found_not_permission(root_dir: Path) -> None:
    code = AzureCode.PRE_SCRIPT_NOT_FOUND
    with pytest.raises(TrustedFileNotFound) as info:
        open_trusted(root_dir / "missing.sh", "script", code=code)
    assert isinstance(info.value, FileNotFoundError)
    assert info.value.code is code
    with pytest.raises(TrustedFileNotFound):
        open_trusted(root_dir / "no-dir" / "missing.sh", "script")
    problems = check_trusted(root_dir / "missing.sh", "script", code=code)
    assert len(problems) == 1 and problems[0].code is code


def test_file_in_place_of_a_directory_is_not_found(root_dir: Path) -> None:
    write(root_dir / "f", "", 0o600)
    with pytest.raises(TrustedFileNotFound, match="not a directory"):
        open_trusted(root_dir / "f" / "x", "config")


def test_no_descriptor_leaks(root_dir: Path) -> None:
    bad = write(root_dir / "bad", "{}", 0o666)
    before = len(os.listdir("/proc/self/fd"))
    for _ in range(20):
        check_trusted(bad, "config")
        check_trusted(root_dir / "missing", "config")
        check_trusted(root_dir / "x" / "y" / "z", "config")
    assert len(os.listdir("/proc/self/fd")) == before
