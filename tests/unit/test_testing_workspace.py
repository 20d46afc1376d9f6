"""ServerWorkspace, the skeleton of every quiesce.harness.testing server fixture: directories, the
servers started on them, and the clean-up of both (also of a server that failed to start)."""

from __future__ import annotations

import stat
from pathlib import Path

import pytest

from quiesce.harness.servers.base import ConnectionInfo, Server, ServerLayout
from quiesce.harness.testing.workspace import ServerWorkspace


class Recorded(Server):
    """A server that only records what was done to it (the workspace is under test)."""

    def __init__(self, layout: ServerLayout, events: list[str], *, name: str = "s",
                 fail: bool = False) -> None:
        self.layout = layout
        self.events = events
        self.name = name
        self.fail = fail

    def start(self) -> None:
        self.events.append(f"start {self.name}")
        if self.fail:
            raise RuntimeError("cannot start")

    def stop(self) -> None:
        self.events.append(f"stop {self.name}")

    @property
    def version(self) -> str:
        return "0"

    @property
    def connection(self) -> ConnectionInfo:
        return ConnectionInfo(host="127.0.0.1", port=1, user="")


def test_layouts_are_fresh_reachable_directories_removed_at_close() -> None:
    with ServerWorkspace(None, prefix="quiesce-ws-test-", log_name="wal") as workspace:
        first, second = workspace.layout(), workspace.layout()
        root = Path(first.data_dir).parent
        assert root != Path(second.data_dir).parent
        assert root.name.startswith("quiesce-ws-test-")
        assert (first.log_dir, first.run_dir) == (root / "wal", root / "run")
        assert stat.S_IMODE(root.stat().st_mode) == 0o755
        (root / "data").mkdir()
        (root / "data" / "file").write_text("x")
    assert not root.exists() and not Path(second.data_dir).parent.exists()


def test_directories_go_under_base(tmp_path: Path) -> None:
    with ServerWorkspace(None, prefix="x-", log_name="wal", base=tmp_path) as workspace:
        assert Path(workspace.layout().data_dir).parent.parent == tmp_path
    assert list(tmp_path.iterdir()) == []


def test_mode_none_keeps_mkdtemp_private() -> None:
    with ServerWorkspace(None, prefix="quiesce-ws-test-", log_name="journal",
                         mode=None) as workspace:
        root = Path(workspace.layout().data_dir).parent
        assert stat.S_IMODE(root.stat().st_mode) == 0o700


def test_servers_start_on_their_layout_and_stop_newest_first() -> None:
    events: list[str] = []
    with ServerWorkspace(lambda layout, **kw: Recorded(layout, events, **kw),
                         prefix="quiesce-ws-test-", log_name="redo") as workspace:
        a = workspace.server(name="a")
        mine = workspace.layout()
        b = workspace.server(mine, name="b")
        assert b.layout is mine and a.layout is not mine
        assert events == ["start a", "start b"]
    assert events == ["start a", "start b", "stop b", "stop a"]


def test_a_server_that_fails_to_start_is_stopped_at_close() -> None:
    events: list[str] = []
    workspace = ServerWorkspace(lambda layout, **kw: Recorded(layout, events, **kw),
                                prefix="quiesce-ws-test-", log_name="wal")
    with pytest.raises(RuntimeError):
        workspace.server(name="bad", fail=True)
    workspace.close()
    assert events == ["start bad", "stop bad"]


def test_a_layout_only_workspace_makes_no_server() -> None:
    with (ServerWorkspace(None, prefix="quiesce-ws-test-", log_name="wal") as workspace,
          pytest.raises(TypeError, match="only makes layouts")):
        workspace.server()


def test_mongodb_servers_are_made_unstarted_for_the_workspace_to_start(tmp_path: Path) -> None:
    from quiesce_mongodb.fixtures import make_mongodb
    from quiesce_mongodb.server import LocalMongod

    layout = ServerLayout(tmp_path / "data", tmp_path / "journal", tmp_path / "run")
    server = make_mongodb("local", layout, replset="rs0", binary="/bin/true")
    assert isinstance(server, LocalMongod)
    assert (server.replset, server.binary, server.proc) == ("rs0", "/bin/true", None)
