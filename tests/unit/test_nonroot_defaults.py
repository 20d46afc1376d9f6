"""Where quiesce keeps things when it runs without root: runtime dir, state dir, drill dir."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from quiesce.errors import HolderError
from quiesce.harness.drill.workspace import default_base
from quiesce.hold import protocol as proto
from quiesce.hold.records import CatalogError, default_state_dir

EXAMPLE = Path(__file__).resolve().parent.parent / "example_plugin"


@pytest.fixture
def example_plugin(monkeypatch: pytest.MonkeyPatch) -> None:
    """The example plugin's entry point, visible as an installed distribution's would be."""
    monkeypatch.syspath_prepend(str(EXAMPLE))


def test_runtime_dir_default_as_root_is_unchanged() -> None:
    assert proto.default_runtime_dir(0, {}) == "/run/quiesce"
    assert proto.default_runtime_dir(0, {"XDG_RUNTIME_DIR": "/run/user/0"}) == "/run/quiesce"


def test_runtime_dir_default_without_root_is_the_users_xdg_runtime_dir() -> None:
    env = {"XDG_RUNTIME_DIR": "/run/user/1000"}
    assert proto.default_runtime_dir(1000, env) == "/run/user/1000/quiesce"


@pytest.mark.parametrize("env", [{}, {"XDG_RUNTIME_DIR": ""}])
def test_no_xdg_runtime_dir_without_root_names_the_settings_to_use(env: dict[str, str]) -> None:
    with pytest.raises(HolderError) as caught:
        proto.default_runtime_dir(1000, env)
    assert "XDG_RUNTIME_DIR is not set" in str(caught.value)
    assert "--runtime-dir" in caught.value.hint and "QUIESCE_RUNTIME_DIR" in caught.value.hint


def test_relative_xdg_runtime_dir_is_refused() -> None:
    with pytest.raises(HolderError, match="not an absolute path"):
        proto.default_runtime_dir(1000, {"XDG_RUNTIME_DIR": "run/user/1000"})


def test_explicit_runtime_dir_wins_without_root(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(proto.os, "geteuid", lambda: 1000)
    monkeypatch.delenv("XDG_RUNTIME_DIR", raising=False)
    monkeypatch.setenv(proto.RUNTIME_DIR_ENV, "/srv/rt")
    assert proto.runtime_dir(None) == "/srv/rt"
    assert proto.runtime_dir("/srv/explicit") == "/srv/explicit"
    monkeypatch.delenv(proto.RUNTIME_DIR_ENV)
    with pytest.raises(HolderError):
        proto.runtime_dir(None)


def test_state_dir_defaults() -> None:
    assert default_state_dir(0, {"XDG_STATE_HOME": "/x", "HOME": "/root"}) == "/var/lib/quiesce"
    assert default_state_dir(1000, {"XDG_STATE_HOME": "/x/state", "HOME": "/home/u"}) == \
        "/x/state/quiesce"
    assert default_state_dir(1000, {"HOME": "/home/u"}) == "/home/u/.local/state/quiesce"
    # A relative XDG_STATE_HOME is invalid per the XDG spec and ignored.
    assert default_state_dir(1000, {"XDG_STATE_HOME": "state", "HOME": "/home/u"}) == \
        "/home/u/.local/state/quiesce"


def test_state_dir_without_home_comes_from_the_password_database() -> None:
    import pwd

    entry = next((e for e in pwd.getpwall() if e.pw_uid != 0), None)
    if entry is None:
        pytest.skip("no non-root user in the password database")
    assert default_state_dir(entry.pw_uid, {}) == \
        os.path.join(entry.pw_dir, ".local", "state", "quiesce")


def test_state_dir_for_a_uid_with_no_home_is_a_clear_error() -> None:
    import pwd

    unknown = 2_000_000_000
    with pytest.raises(KeyError):
        pwd.getpwuid(unknown)
    with pytest.raises(CatalogError, match="no home directory") as caught:
        default_state_dir(unknown, {})
    assert "state_dir" in caught.value.hint


@pytest.mark.usefixtures("example_plugin")
def test_settings_use_the_non_root_state_dir(tmp_path: Path,
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    from quiesce.settings import load_settings

    path = tmp_path / "quiesce.toml"
    path.write_text('[[flock]]\npath = "/run/x.lock"\n')
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path / "state"))
    monkeypatch.setattr(os, "geteuid", lambda: 1000)
    settings = load_settings(str(path), check_permissions=False)
    assert settings.state_dir == str(tmp_path / "state" / "quiesce")
    assert settings.instances[0].state_dir == settings.state_dir
    path.write_text('state_dir = "/srv/q"\n[[flock]]\npath = "/run/x.lock"\n')
    assert load_settings(str(path), check_permissions=False).state_dir == "/srv/q"


@pytest.mark.usefixtures("example_plugin")
def test_settings_as_root_keep_var_lib(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from quiesce.settings import load_settings

    path = tmp_path / "quiesce.toml"
    path.write_text('[[flock]]\npath = "/run/x.lock"\n')
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path / "state"))
    monkeypatch.setattr(os, "geteuid", lambda: 0)
    assert load_settings(str(path), check_permissions=False).state_dir == "/var/lib/quiesce"


def test_drill_dir_defaults() -> None:
    assert default_base(0, {"HOME": "/root"}) == Path("/var/lib/quiesce-drill")
    assert default_base(1000, {"HOME": "/home/u"}) == Path("/home/u/.cache/quiesce-drill")
    assert default_base(1000, {"HOME": "/home/u", "XDG_CACHE_HOME": "/c"}) == \
        Path("/c/quiesce-drill")
    assert default_base(1000, {"QUIESCE_DRILL_DIR": "/d", "HOME": "/home/u"}) == Path("/d")
    assert default_base(0, {"QUIESCE_DRILL_DIR": "/d"}) == Path("/d")
