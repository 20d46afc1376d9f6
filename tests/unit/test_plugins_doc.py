"""docs/plugins.md cannot drift from what works: its ``# file:`` code blocks are written into a
package with the entry point its pyproject.toml block declares, loaded through the real plugin
manager, configured with its quiesce.toml block, and driven through quiesce.hold.lifecycle.Hold.

The engine holds a real flock(): whether it is held is observed through a second open file
description (flock locks conflict between descriptions, even within one process).
"""

from __future__ import annotations

import fcntl
import json
import os
import re
import subprocess
import sys
import tomllib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from quiesce.engine import EngineType, InstanceSettings
from quiesce.errors import ConfigError, LockWaitTimeout
from quiesce.hold.lifecycle import HELD, LOST, RELEASED, Hold, QuiesceFailed
from quiesce.plugins import Plugins
from quiesce.settings import Settings, load_settings

PAGE = Path(__file__).resolve().parents[2] / "docs" / "plugins.md"
BLOCK = re.compile(r"^```(\w+)\n(# file: (\S+)\n.*?)^```$", re.MULTILINE | re.DOTALL)
PACKAGE = "quiesce_doc_example"
DOC_PATH = "/run/app/backup.lock"  # the path the page's quiesce.toml names


def blocks() -> dict[str, str]:
    """``# file:`` path -> the block's text, in page order; a path given twice is an error."""
    found: dict[str, str] = {}
    for match in BLOCK.finditer(PAGE.read_text(encoding="utf-8")):
        language, text, path = match.groups()
        assert path not in found, f"docs/plugins.md shows {path} twice"
        assert language == {"py": "python", "toml": "toml"}[path.rsplit(".", 1)[-1]], path
        found[path] = text
    return found


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The page's package and an entry_points.txt made from its pyproject.toml block, as pip
    would install them."""
    files = blocks()
    assert {f"{PACKAGE}/__init__.py", f"{PACKAGE}/plugin.py", f"{PACKAGE}/engine.py",
            f"{PACKAGE}/probe.py", "pyproject.toml", "quiesce.toml"} <= set(files)
    root = tmp_path_factory.mktemp("doc_plugin")
    for path, text in files.items():
        if path.startswith(f"{PACKAGE}/"):
            (root / path).parent.mkdir(exist_ok=True)
            (root / path).write_text(text, encoding="utf-8")
    project = tomllib.loads(files["pyproject.toml"])["project"]
    points = project["entry-points"]["quiesce"]
    info = root / f"{project['name'].replace('-', '_')}-{project['version']}.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {project['name']}\n"
                                   f"Version: {project['version']}\n")
    (info / "entry_points.txt").write_text(
        "[quiesce]\n" + "".join(f"{name} = {value}\n" for name, value in points.items()))
    (root / "quiesce.toml").write_text(files["quiesce.toml"], encoding="utf-8")
    return root


@pytest.fixture
def plugins(site: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Plugins]:
    """A plugin manager that loaded the page's plugin through its entry point."""
    monkeypatch.syspath_prepend(str(site))
    manager = Plugins()
    manager.load_entry_points(only=["filelock"])
    yield manager
    for name in [m for m in sys.modules if m == PACKAGE or m.startswith(f"{PACKAGE}.")]:
        del sys.modules[name]


@pytest.fixture
def engine(plugins: Plugins) -> EngineType:
    return plugins.engines.get("filelock")


def settings_for(plugins: Plugins, tmp_path: Path, replace: dict[str, str] | None = None,
                 extra: str = "") -> Settings:
    """The page's quiesce.toml with its path pointed into tmp_path, loaded by the core."""
    text = blocks()["quiesce.toml"].replace(DOC_PATH, str(tmp_path / "app.lock"))
    for old, new in (replace or {}).items():
        assert old in text, old
        text = text.replace(old, new)
    config = tmp_path / "quiesce.toml"
    config.write_text(f'state_dir = "{tmp_path / "state"}"\n{text}{extra}')
    return load_settings(str(config), check_permissions=False, plugin_manager=plugins)


def locked_by_someone(path: Path) -> bool:
    fd = os.open(path, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    finally:
        os.close(fd)
    return False


def test_the_page_registers_its_engine_and_command(plugins: Plugins, engine: EngineType
                                                   ) -> None:
    assert plugins.engines.names() == ["filelock"]
    assert plugins.engines.owner("filelock") == "filelock"  # the entry point's name
    assert plugins.commands(reserved=["pre", "post"]).names() == ["filelock-probe"]
    assert engine.recover is not None and engine.section_problems is not None
    assert all(field.doc for field in engine.schema.fields.values())


def test_the_pages_section_validates_with_defaults(plugins: Plugins, tmp_path: Path) -> None:
    settings = settings_for(plugins, tmp_path)
    (instance,) = settings.instances
    assert (instance.engine, instance.name) == ("filelock", "filelock")
    assert dict(instance.options) == {"path": str(tmp_path / "app.lock"),
                                      "lock_wait_seconds": 2, "retry_seconds": 0.05,
                                      "marker": True}


def test_the_problem_the_page_quotes_is_the_one_reported(plugins: Plugins,
                                                        tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as caught:
        settings_for(plugins, tmp_path, extra="retry_seconds = 3\n")
    assert [str(p) for p in caught.value.problems] == [
        "filelock[1].retry_seconds: 3 is not below lock_wait_seconds (2) (lower "
        "retry_seconds, or raise lock_wait_seconds)"]
    page = " ".join(PAGE.read_text(encoding="utf-8").split())
    assert ("`filelock[1].retry_seconds: 3 is not below lock_wait_seconds (2) (lower "
            "retry_seconds, or raise lock_wait_seconds)`") in page


def test_schema_problems_have_key_paths(plugins: Plugins, tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as caught:
        settings_for(plugins, tmp_path, replace={"lock_wait_seconds = 2": "lock_wait_secs = 2"},
                     extra='\n[[filelock]]\nname = "second"\npath = "relative.lock"\n')
    assert [str(p) for p in caught.value.problems] == [
        "filelock[1].lock_wait_secs: unknown key (did you mean 'lock_wait_seconds'?)",
        "filelock[2].path: 'relative.lock' is not an absolute path (write the absolute path "
        "of the file, e.g. /run/app/backup.lock)",
        "filelock[1].name: required when there are several [[filelock]] sections (add name = "
        '"..." to every [[filelock]] section)',
    ]


def test_the_lifecycle_through_hold(plugins: Plugins, engine: EngineType,
                                    tmp_path: Path) -> None:
    (instance,) = settings_for(plugins, tmp_path).instances
    lock, marker = tmp_path / "app.lock", tmp_path / "app.lock.held"
    tokens: list[Any] = []
    hold = Hold([engine.factory(instance)], timeout=10,
                on_held=lambda q: tokens.append(q.recovery_token()))
    results = hold.quiesce_all()
    assert [r.status for r in results] == [HELD]
    assert locked_by_someone(lock)
    assert tokens == [{"marker": str(marker), "token": marker.read_text()}]
    json.dumps(tokens)  # goes to the guardian as JSON
    assert hold.check_alive() == []
    (result,) = hold.release_all()
    assert (result.status, result.error, result.metadata) == (
        RELEASED, None, {"path": str(lock), "marker": True})
    json.dumps(result.to_dict())
    assert not locked_by_someone(lock)
    assert not marker.exists()


def test_a_lock_held_elsewhere_fails_pre_and_releases_the_rest(plugins: Plugins,
                                                               engine: EngineType,
                                                               tmp_path: Path) -> None:
    busy = tmp_path / "busy.lock"
    settings = settings_for(plugins, tmp_path, replace={"lock_wait_seconds = 2":
                                                        "lock_wait_seconds = 0.3"},
                            extra=f'name = "free"\n\n[[filelock]]\nname = "busy"\n'
                                  f'path = "{busy}"\nlock_wait_seconds = 0.3\n')
    busy.write_text("")
    fd = os.open(busy, os.O_RDWR)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        hold = Hold([engine.factory(i) for i in settings.instances], timeout=10)
        with pytest.raises(QuiesceFailed) as caught:
            hold.quiesce_all()
    finally:
        os.close(fd)
    statuses = {r.name: r.status for r in caught.value.results}
    assert statuses == {"free": "aborted", "busy": "failed"}
    (failed,) = [r for r in caught.value.results if r.name == "busy"]
    assert failed.error is not None and "stayed locked by another process" in failed.error
    assert f"fuser -v {busy}" in failed.error
    assert not locked_by_someone(tmp_path / "app.lock")
    assert not (tmp_path / "app.lock.held").exists()  # abort dropped the marker


def test_quiesce_waits_within_its_deadline(plugins: Plugins, engine: EngineType,
                                           tmp_path: Path) -> None:
    """The lock wait ends at the core's deadline even when lock_wait_seconds is longer."""
    from quiesce.deadline import Deadline

    (instance,) = settings_for(plugins, tmp_path).instances
    lock = tmp_path / "app.lock"
    lock.write_text("")
    quiescer = engine.factory(instance)
    fd = os.open(lock, os.O_RDWR)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        quiescer.prepare(Deadline(5))
        deadline = Deadline(0.2)
        with pytest.raises(LockWaitTimeout):
            quiescer.quiesce(deadline)
        assert deadline.expired()
    finally:
        os.close(fd)
        quiescer.abort()
        quiescer.close()


def test_a_replaced_file_is_a_lost_session(plugins: Plugins, engine: EngineType,
                                           tmp_path: Path) -> None:
    (instance,) = settings_for(plugins, tmp_path).instances
    hold = Hold([engine.factory(instance)], timeout=10)
    hold.quiesce_all()
    lock = tmp_path / "app.lock"
    lock.rename(tmp_path / "moved.lock")
    lock.write_text("")
    (lost,) = hold.check_alive()
    assert lost.status == LOST
    assert lost.error == f"session lost while held: {lock} was replaced while locked"
    assert not (tmp_path / "app.lock.held").exists()
    assert hold.release_all()[0].status == LOST


def test_recover_removes_only_its_own_marker(plugins: Plugins, engine: EngineType,
                                             tmp_path: Path) -> None:
    """What the guardian does after the holder died: the lock died with it, the marker did
    not."""
    (instance,) = settings_for(plugins, tmp_path).instances
    quiescer = engine.factory(instance)
    hold = Hold([quiescer], timeout=10)
    hold.quiesce_all()
    token = quiescer.recovery_token()
    assert token is not None
    marker = Path(token["marker"])
    settings = InstanceSettings(engine="filelock", name="filelock",
                                options=json.loads(json.dumps(dict(instance.options))))
    assert engine.recover is not None
    engine.recover(settings, {**token, "token": "someone-else"})
    assert marker.exists()
    engine.recover(settings, token)
    assert not marker.exists()
    engine.recover(settings, token)  # already gone: nothing to do, no error
    hold.release_all()


def run_cli(site: Path, *argv: str) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, PYTHONPATH=str(site))
    return subprocess.run([sys.executable, "-m", "quiesce", *argv], capture_output=True,
                          text=True, timeout=60, check=False, env=env)


def test_the_pages_command_through_the_cli(site: Path, tmp_path: Path) -> None:
    lock = tmp_path / "probe.lock"
    lock.write_text("")
    out = run_cli(site, "filelock-probe", str(lock))
    assert (out.returncode, out.stdout, out.stderr) == (0, f"{lock}: free\n", "")
    fd = os.open(lock, os.O_RDWR)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        out = run_cli(site, "filelock-probe", "--json", str(lock))
    finally:
        os.close(fd)
    assert out.returncode == 1, out.stderr
    assert json.loads(out.stdout) == {"path": str(lock), "locked": True}
    out = run_cli(site, "filelock-probe", str(tmp_path / "missing"))
    assert out.returncode == 2
    assert "fix: give the path of an existing file" in out.stderr


def test_the_skeleton_shows_the_pages_key_docs(engine: EngineType) -> None:
    from quiesce.callers.azure_install import example_section

    section = example_section(engine)
    assert "# path = \"...\"    # required" in section
    assert "#       the file the application checks before it writes; created if missing" \
        in section
