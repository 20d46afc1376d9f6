"""The quiesce.harness.testing pytest plugin as a user's project sees it: installed through the
pytest11
entry point, with no conftest and no import of quiesce in the user's tests."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

FIXTURES = ("loop_disk_factory", "dir_disk_factory", "postgresql_server_factory",
            "postgresql_server", "mysql_server_factory", "mysql_server", "mongodb_server")


def _pytest(project: Path, *args: str) -> subprocess.CompletedProcess[str]:
    (project / "pytest.ini").write_text("[pytest]\n")  # not this repository's configuration
    return subprocess.run([sys.executable, "-m", "pytest", "-p", "no:cacheprovider", *args],
                          cwd=project, capture_output=True, text=True, timeout=120, check=False)


@pytest.mark.timeout(150)
def test_a_users_project_gets_the_fixtures_from_the_entry_point(tmp_path: Path) -> None:
    project = tmp_path / "userproject"
    project.mkdir()
    (project / "test_user.py").write_text(textwrap.dedent("""\
        def test_uses_a_dir_disk(dir_disk_factory):
            disk = dir_disk_factory("data")
            assert disk.mount_point.is_dir()
            (disk.mount_point / "f").write_text("x")
        """))
    listed = _pytest(project, "--fixtures")
    assert listed.returncode == 0, listed.stdout + listed.stderr
    for name in FIXTURES:
        assert name in listed.stdout, f"{name} is not offered to a user's project"
    ran = _pytest(project, "-q")
    assert ran.returncode == 0 and "1 passed" in ran.stdout, ran.stdout + ran.stderr
