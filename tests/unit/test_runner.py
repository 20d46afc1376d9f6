"""Runner logic without servers or mounts: consistency levels, exit codes, run ids, the report,
the atomic status file and the snapshot command's validation."""

from __future__ import annotations

import json
import os
import re
import stat
from pathlib import Path
from types import SimpleNamespace
from typing import ClassVar

import pytest

from quiesce.callers.report import PhaseRecord, RunError, RunStatus, human_report, write_atomically
from quiesce.callers.runner import RunLog, Runner
from quiesce.callers.snapshot import CommandSnapshot, NoopSnapshot, make_provider
from quiesce.errors import AzureCode, Problem
from quiesce.hold.records import new_run_id, valid_run_id


def session(fired: bool = False) -> SimpleNamespace:
    return SimpleNamespace(watchdog_fired=fired)


@pytest.mark.parametrize(
    ("pre_ok", "freezing", "frozen_ok", "fired", "expected"),
    [
        (True, True, True, False, "application"),
        (True, False, False, False, "application"),  # freeze off by config
        (False, True, True, False, "filesystem"),
        (False, False, False, False, "crash"),
        (True, True, False, False, "crash"),  # freeze failed: nothing made it consistent
        (False, True, False, False, "crash"),
        (True, True, True, True, "crash"),  # watchdog thawed before the snapshot ended
    ],
)
def test_consistency_levels(pre_ok: bool, freezing: bool, frozen_ok: bool, fired: bool,
                            expected: str) -> None:
    sess = session(fired) if freezing else None
    assert Runner._consistency(pre_ok, freezing, frozen_ok, sess) == expected


def status(**kw: object) -> RunStatus:
    s = RunStatus("id", "/c.json", 0.0)
    for k, v in kw.items():
        setattr(s, k, v)
    return s


def test_exit_codes() -> None:
    err = RunError.azure(AzureCode.POST_SCRIPT_EXECUTION_FAILED, "post", "boom")
    assert status(snapshot_taken=True, consistency="application").exit_code == 0
    assert status(snapshot_taken=True, consistency="application", errors=[err]).exit_code == 1
    assert status(snapshot_taken=True, consistency="filesystem").exit_code == 1
    assert status(snapshot_taken=True, consistency="crash").exit_code == 1
    assert status(snapshot_taken=False, consistency="none").exit_code == 2
    assert status(snapshot_taken=False, consistency="none", errors=[err]).exit_code == 2


def test_status_json_has_the_contract_fields() -> None:
    s = status(snapshot_taken=True, consistency="filesystem",
               errors=[RunError.azure(AzureCode.PRE_SCRIPT_TIMEOUT, "pre", "slow", "fix it")],
               freeze={"mounts": ["/data"], "window_ms": 1.5})
    s.phases["pre"] = PhaseRecord("pre", "timeout", 1700000000.0, 2000.0, 1)
    doc = json.loads(s.to_json())
    for key in ("run_id", "consistency", "snapshot_taken", "errors", "phases", "freeze"):
        assert key in doc
    assert doc["errors"] == [{"code": "Pre-ScriptTimeout", "number": 308, "phase": "pre",
                              "message": "slow", "hint": "fix it"}]
    (pre,) = doc["phases"]
    assert pre["start"] == "2023-11-14T22:13:20.000Z"
    assert pre["duration_ms"] == 2000.0 and pre["attempts"] == 1
    assert pre["duration"] == 2.0  # seconds, as issue 2 names it, beside duration_ms
    assert doc["freeze"] == {"mounts": ["/data"], "window_ms": 1.5}
    assert doc["exit_code"] == 1


def test_a_phase_that_never_ran_has_null_durations() -> None:
    doc = PhaseRecord("thaw").as_dict()
    assert doc["duration"] is None and doc["duration_ms"] is None and doc["start"] is None


def test_error_from_problem_keeps_the_azure_code_or_uses_ours() -> None:
    with_code = Problem("x", "bad", "fix", AzureCode.INCORRECT_JSON_CONFIG_FILE)
    e = RunError.from_problem(with_code, "validate", "ValidationFailed")
    assert (e.code, e.number, e.message) == ("IncorrectJSONConfigFile", 305, "x: bad")
    e = RunError.from_problem(Problem("y", "bad"), "validate", "FreezeFailed")
    assert (e.code, e.number) == ("FreezeFailed", None)


def test_human_report_has_a_line_per_phase_and_the_fixes() -> None:
    s = status(errors=[RunError.azure(AzureCode.PRE_SCRIPT_NOT_FOUND, "validate", "missing",
                                      "create it")])
    for name in ("validate", "pre", "post"):
        s.phase(name)
    text = human_report(s)
    assert "Pre-ScriptNotFound (302): missing" in text and "fix: create it" in text
    assert sum(1 for line in text.splitlines() if line.startswith("  ")) >= 3
    assert "exit 2" in text


def test_run_ids_sort_by_time_and_are_unique() -> None:
    ids = [new_run_id() for _ in range(200)]
    assert len(set(ids)) == 200
    assert all(re.fullmatch(r"\d{8}T\d{6}\.\d{6}Z-[0-9a-f]{8}", i) for i in ids)
    # One format everywhere: a hold started under this run takes the same id.
    assert all(valid_run_id(i) for i in ids)
    stamps = [i.split("-")[0] for i in ids]
    assert stamps == sorted(stamps)


def test_atomic_write_replaces_and_leaves_no_temporary(tmp_path: Path) -> None:
    target = tmp_path / "status.json"
    target.write_text("old")
    write_atomically(target, '{"new": true}\n')
    assert target.read_text() == '{"new": true}\n'
    assert stat.S_IMODE(target.stat().st_mode) == 0o600
    assert os.listdir(tmp_path) == ["status.json"]


def test_atomic_write_failure_keeps_the_old_file(tmp_path: Path) -> None:
    target = tmp_path / "status.json"
    target.write_text("old")
    with pytest.raises(TypeError):
        write_atomically(target, None)  # type: ignore[arg-type]
    assert target.read_text() == "old" and os.listdir(tmp_path) == ["status.json"]


def test_atomic_write_that_fails_at_the_rename_leaves_no_temp_file(tmp_path: Path) -> None:
    (tmp_path / "status.json").mkdir()  # os.replace of a file over a directory fails
    with pytest.raises(IsADirectoryError):
        write_atomically(tmp_path / "status.json", "{}")
    assert os.listdir(tmp_path) == ["status.json"]


class Stream:
    def __init__(self) -> None:
        self.text = ""

    def write(self, s: str) -> None:
        self.text += s

    def flush(self) -> None:
        pass


def test_log_is_held_in_memory_during_the_window() -> None:
    stream = Stream()
    log = RunLog(stream, run_id="r")  # type: ignore[arg-type]
    log("before")
    log.hold()
    log("while frozen")
    assert "while frozen" not in stream.text
    log.release()
    assert stream.text.index("before") < stream.text.index("while frozen")


def test_snapshot_command_is_split_and_resolved_without_a_shell() -> None:
    cmd = CommandSnapshot("true 'a b' \"$HOME\" ''")
    assert cmd.problems() == []
    assert os.path.isabs(cmd.argv[0]) and cmd.argv[1:] == ["a b", "$HOME", ""]


@pytest.mark.parametrize(("command", "fragment"), [
    ("", "empty"),
    ("   ", "empty"),
    ("echo 'unbalanced", "split"),
    ("no-such-program-quiesce-xyz", "not found"),
    ("/nonexistent/bin/snap", "not an executable"),
])
def test_bad_snapshot_commands_are_found_before_anything_runs(command: str,
                                                              fragment: str) -> None:
    (problem,) = CommandSnapshot(command).problems()
    assert fragment in problem.message and problem.hint
    result = CommandSnapshot(command).take("id", [], 1.0)
    assert result.taken is False


def test_provider_choice() -> None:
    assert isinstance(make_provider(None), NoopSnapshot)
    assert isinstance(make_provider("true"), CommandSnapshot)
    assert NoopSnapshot().take("id", ["/x"], 1.0).taken is True


def test_snapshot_command_gets_run_id_and_mounts_and_output_stays_in_memory() -> None:
    cmd = CommandSnapshot("sh -c 'printf \"%s|%s\\n\" \"$QUIESCE_RUN_ID\" "
                          "\"$QUIESCE_FROZEN_MOUNTS\"; exit 3'")
    result = cmd.take("run-1", ["/a", "/b c"], 30.0)
    assert result.taken is False and result.exit_code == 3
    assert result.output == ["stdout: run-1|/a", "stdout: /b c"]


def test_status_file_problems(tmp_path: Path) -> None:
    from quiesce.callers.runner import status_file_problems

    assert status_file_problems(str(tmp_path / "status.json")) == []
    (missing,) = status_file_problems(str(tmp_path / "no" / "such" / "status.json"))
    assert "does not exist" in missing.message and "mkdir -p" in missing.hint
    (is_dir,) = status_file_problems(str(tmp_path))
    assert "is a directory" in is_dir.message


def test_freezing_without_root_is_refused_up_front(monkeypatch: pytest.MonkeyPatch) -> None:
    """Non-root may run the cycle, but not freeze: FIFREEZE needs CAP_SYS_ADMIN."""
    from quiesce.callers import runner

    monkeypatch.setattr(runner.os, "geteuid", lambda: 65534)
    monkeypatch.setattr(runner, "has_cap_sys_admin", lambda: False)
    (problem,) = runner.freeze_privilege_problems("run", True)
    assert problem.where == "fsFreezeEnabled"
    assert "not root" in problem.message and "CAP_SYS_ADMIN" in problem.message
    assert "sudo quiesce run" in problem.hint and '"fsFreezeEnabled": false' in problem.hint
    assert runner.freeze_privilege_problems("run", False) == []
    monkeypatch.setattr(runner, "has_cap_sys_admin", lambda: True)  # e.g. a capable container
    assert runner.freeze_privilege_problems("run", True) == []


def test_root_is_never_refused_freezing_up_front(monkeypatch: pytest.MonkeyPatch) -> None:
    from quiesce.callers import runner

    monkeypatch.setattr(runner.os, "geteuid", lambda: 0)
    monkeypatch.setattr(runner, "has_cap_sys_admin", lambda: False)
    assert runner.freeze_privilege_problems("run", True) == []


@pytest.mark.parametrize(("capeff", "expected"), [
    ("000001ffffffffff", True),    # root's full set
    ("0000000000200000", True),    # CAP_SYS_ADMIN (bit 21) alone
    ("00000000001fffff", False),   # everything below it
    ("0000000000000000", False),   # a plain user
])
def test_cap_sys_admin_is_read_from_capeff(tmp_path: Path, capeff: str, expected: bool) -> None:
    from quiesce.callers.runner import has_cap_sys_admin

    status = tmp_path / "status"
    status.write_text(f"Name:\tpython\nCapInh:\t0000000000000000\nCapPrm:\t{capeff}\n"
                      f"CapEff:\t{capeff}\n")
    assert has_cap_sys_admin(str(status)) is expected
    assert has_cap_sys_admin(str(tmp_path / "missing")) is False


class _FakeConnection:
    """Stands in for protocol.LingeringRequest: the runner's choice of connection is what is
    tested here; the real exchange is covered by tests/integration/test_block_at_freeze.py."""

    made: ClassVar[list[_FakeConnection]] = []

    def __init__(self, rundir: str = "", timeout: float = 0.0, *,
                 fails: BaseException | None = None) -> None:
        self.fails = fails
        self.asked: list[str] = []
        self.closed = False
        _FakeConnection.made.append(self)

    def request(self, op: str, timeout: float, **fields: object) -> dict[str, object]:
        self.asked.append(op)
        if self.fails is not None:
            raise self.fails
        return {"ok": True, "blocked": True}

    def close(self) -> None:
        self.closed = True


@pytest.fixture
def fake_connections(monkeypatch: pytest.MonkeyPatch) -> list[_FakeConnection]:
    from quiesce.hold import protocol

    _FakeConnection.made = []
    monkeypatch.setattr(protocol, "LingeringRequest", _FakeConnection)
    return _FakeConnection.made


def _runner() -> Runner:
    from quiesce.callers.runner import RunOptions

    return Runner(RunOptions(config_path="/nonexistent.json"))


def test_block_goes_on_the_connection_opened_before_the_settle(
        fake_connections: list[_FakeConnection]) -> None:
    runner = _runner()
    early = _FakeConnection()
    runner._block_connection = early
    assert runner._ask_block("/run/x")["ok"] is True
    assert early.asked == ["block"] and fake_connections == [early]  # no second connection
    assert runner._block_connection is early and not early.closed  # closed after the thaw


def test_an_early_connection_the_holder_dropped_is_replaced(
        fake_connections: list[_FakeConnection]) -> None:
    from quiesce.errors import NoActiveHold

    runner = _runner()
    early = _FakeConnection(fails=NoActiveHold("closed without answering"))
    runner._block_connection = early
    assert runner._ask_block("/run/x")["ok"] is True
    assert early.closed and len(fake_connections) == 2
    assert fake_connections[1].asked == ["block"]
    assert runner._block_connection is fake_connections[1]


def test_a_block_that_timed_out_is_not_asked_twice(
        fake_connections: list[_FakeConnection]) -> None:
    from quiesce.errors import HolderError

    runner = _runner()
    early = _FakeConnection(fails=HolderError("did not answer within 40 s"))
    runner._block_connection = early
    with pytest.raises(HolderError):
        runner._ask_block("/run/x")
    assert len(fake_connections) == 1


# ----------------------------------------------------------- release between snapshot and thaw

class _OrderedConnection(_FakeConnection):
    """A block connection that records, in one shared list, when 'release' was sent and when
    its answer was read."""

    def __init__(self, events: list[str], *, send_fails: bool = False) -> None:
        super().__init__()
        self.events = events
        self.send_fails = send_fails
        self.fields: dict[str, object] = {}

    def send(self, op: str, timeout: float, **fields: object) -> None:
        from quiesce.errors import HolderError

        if self.send_fails:
            raise HolderError("the holder closed the connection")
        self.events.append(f"send {op}")
        self.fields = fields

    def receive(self, timeout: float) -> dict[str, object]:
        self.events.append("receive")
        return {"ok": True, "state": "released"}


class _OrderedSession:
    """A FreezeSession stand-in: freezes nothing, records its thaw."""

    def __init__(self, events: list[str]) -> None:
        self.events = events
        self.frozen = [SimpleNamespace(mount_point="/mnt/data")]
        self.watchdog_fired = False
        self.thaw_errors: list[str] = []
        self.window_ms = 1.0
        self.notes: list[str] = []

    def freeze(self, before: object = None) -> None:
        self.events.append("freeze")

    def thaw(self) -> None:
        self.events.append("thaw")


def _cycle_with(monkeypatch: pytest.MonkeyPatch, connection: _FakeConnection | None,
                allowed: bool, events: list[str], *, fired: bool = False,
                released_after: list[dict[str, object]] | None = None) -> Runner:
    """One sync/freeze/snapshot/thaw bracket of a runner whose pre-script was 'quiesce pre'
    (its hold already complete), with the freeze, the snapshot and the holder stood in for."""
    from quiesce.callers import runner as runner_module
    from quiesce.callers.snapshot import SnapshotResult

    runner = _runner()
    runner._block_connection = connection
    runner._release_before_thaw_allowed = allowed
    released_after = [] if released_after is None else released_after

    def at_thaw(rundir: str | None, run_id: str, *, frozen_together: bool = True
                ) -> dict[str, object]:
        events.append("release after the thaw")
        released_after.append({"frozen_together": frozen_together})
        return {"ok": True, "state": "released", "error": None}

    def take(run_id: str, mounts: list[str], budget: float) -> SnapshotResult:
        events.append("snapshot")
        return SnapshotResult(taken=True, provider="command")

    monkeypatch.setattr(runner_module, "release_at_thaw", at_thaw)
    monkeypatch.setattr(runner, "_hold_before_freeze", lambda *a: None)
    session = _OrderedSession(events)

    def thaw() -> None:
        events.append("thaw")
        session.watchdog_fired = fired  # as FreezeSession learns it: at the thaw

    session.thaw = thaw  # type: ignore[method-assign]
    monkeypatch.setattr(runner, "_freeze_session", lambda *a, **k: session)
    prepared = SimpleNamespace(
        config=SimpleNamespace(fs_freeze=True, continue_on_failure=False),
        mounts=["/mnt/data"], provider=SimpleNamespace(take=take),
        hold_runtime_dir="/run/quiesce-test")
    runner._snapshot_phases(prepared, True, 0.0)  # type: ignore[arg-type]
    return runner


def test_a_hold_that_stops_commits_is_released_before_the_thaw(
        monkeypatch: pytest.MonkeyPatch) -> None:
    events: list[str] = []
    connection = _OrderedConnection(events)
    runner = _cycle_with(monkeypatch, connection, True, events)
    assert events == ["freeze", "snapshot", "send release", "thaw", "receive"]
    assert connection.fields["keep"] is True and connection.fields["before_thaw"] is True
    assert runner.status.hold["released_before_thaw"] is True
    assert runner.status.hold["released_at_thaw"] is True
    assert runner.status.consistency == "application"


def test_a_hold_that_counts_on_the_freeze_is_released_after_the_thaw(
        monkeypatch: pytest.MonkeyPatch) -> None:
    events: list[str] = []
    runner = _cycle_with(monkeypatch, _OrderedConnection(events), False, events)
    assert events == ["freeze", "snapshot", "thaw", "release after the thaw"]
    assert runner.status.hold["released_before_thaw"] is False


def test_without_a_block_connection_the_release_comes_after_the_thaw(
        monkeypatch: pytest.MonkeyPatch) -> None:
    events: list[str] = []
    _cycle_with(monkeypatch, None, True, events)
    assert events == ["freeze", "snapshot", "thaw", "release after the thaw"]


def test_a_release_that_cannot_be_sent_is_asked_again_after_the_thaw(
        monkeypatch: pytest.MonkeyPatch) -> None:
    events: list[str] = []
    connection = _OrderedConnection(events, send_fails=True)
    runner = _cycle_with(monkeypatch, connection, True, events)
    assert events == ["freeze", "snapshot", "thaw", "release after the thaw"]
    # nothing closed in the window: the cycle closes the connection after the thaw
    assert not connection.closed and runner._block_connection is connection
    assert runner.status.hold["released_at_thaw"] is True
    assert runner.status.hold["released_before_thaw"] is False


def test_a_failure_of_the_early_release_never_skips_the_thaw(
        monkeypatch: pytest.MonkeyPatch) -> None:
    events: list[str] = []
    connection = _OrderedConnection(events)

    def broken(op: str, timeout: float, **fields: object) -> None:
        raise RuntimeError("a bug")

    connection.send = broken  # type: ignore[method-assign]
    runner = _cycle_with(monkeypatch, connection, True, events)
    assert events == ["freeze", "snapshot", "thaw", "release after the thaw"]
    assert runner.status.hold["released_at_thaw"] is True


@pytest.mark.parametrize(("error", "asked_again"), [("closed", True), ("timeout", False)])
def test_an_answer_lost_after_the_thaw(monkeypatch: pytest.MonkeyPatch, error: str,
                                       asked_again: bool) -> None:
    """The holder closed the connection without answering (it may never have read the
    line): asked again on a fresh connection. It did not answer in time: not asked twice."""
    from quiesce.errors import HolderError, NoActiveHold

    events: list[str] = []
    connection = _OrderedConnection(events)

    def receive(timeout: float) -> dict[str, object]:
        events.append("receive")
        raise (NoActiveHold("closed without answering") if error == "closed"
               else HolderError("did not answer within 30 s"))

    connection.receive = receive  # type: ignore[method-assign]
    runner = _cycle_with(monkeypatch, connection, True, events)
    again = ["release after the thaw"] if asked_again else []
    assert events == ["freeze", "snapshot", "send release", "thaw", "receive", *again]
    assert runner.status.hold["released_at_thaw"] is asked_again


# ------------------------------------------------------ commit paths frozen last (the order)

class _OrderSession:
    def __init__(self, mounts: list[object]) -> None:
        self.mounts = list(mounts)
        self.reordered: list[list[object]] = []

    def reorder(self, mounts: list[object]) -> None:
        self.reordered.append(list(mounts))
        self.mounts = list(mounts)


def _mount(point: str, device: str) -> SimpleNamespace:
    return SimpleNamespace(mount_point=point, device=device)


def test_the_commit_path_filesystem_goes_last(monkeypatch: pytest.MonkeyPatch) -> None:
    from quiesce.freezing import mounts as mounts_module

    wal, data = _mount("/srv/wal", "8:32"), _mount("/srv/data", "8:16")
    asked: list[object] = []

    def discover(only: list[str], *, late: set[str]) -> list[object]:
        asked.append((only, late))
        return [data, wal]

    monkeypatch.setattr(mounts_module, "device_of",
                        lambda path: "8:32" if path.startswith("/srv/data/pg_wal") else None)
    monkeypatch.setattr(mounts_module, "discover_mounts", discover)
    runner = _runner()
    runner._early_session = _OrderSession([wal, data])
    runner._commit_paths_last(["/srv/data/pg_wal"])
    assert asked == [(["/srv/wal", "/srv/data"], {"8:32"})]
    assert runner._early_session.mounts == [data, wal]
    assert runner.hold_info["frozen_last"] == ["/srv/wal"]


@pytest.mark.parametrize("paths", [[], None, "not a list", ["/elsewhere/pg_wal"]])
def test_no_commit_path_on_a_frozen_filesystem_keeps_the_order(
        monkeypatch: pytest.MonkeyPatch, paths: object) -> None:
    from quiesce.freezing import mounts as mounts_module

    monkeypatch.setattr(mounts_module, "device_of", lambda path: "9:9")
    runner = _runner()
    session = _OrderSession([_mount("/srv/wal", "8:32"), _mount("/srv/data", "8:16")])
    runner._early_session = session
    runner._commit_paths_last(paths)
    assert session.reordered == [] and "frozen_last" not in runner.hold_info


def test_an_order_that_cannot_be_worked_out_is_kept_and_said(
        monkeypatch: pytest.MonkeyPatch) -> None:
    from quiesce.errors import FreezeError
    from quiesce.freezing import mounts as mounts_module

    def discover(only: list[str], *, late: set[str]) -> list[object]:
        raise FreezeError("/srv/wal is not a mount point")

    monkeypatch.setattr(mounts_module, "device_of", lambda path: "8:32")
    monkeypatch.setattr(mounts_module, "discover_mounts", discover)
    logged: list[str] = []
    runner = _runner()
    monkeypatch.setattr(runner, "log", logged.append)
    session = _OrderSession([_mount("/srv/wal", "8:32"), _mount("/srv/data", "8:16")])
    runner._early_session = session
    runner._commit_paths_last(["/srv/wal/pg_wal"])
    assert session.reordered == [] and "frozen_last" not in runner.hold_info
    assert logged == ["freeze: kept the freeze order (/srv/wal is not a mount point)"]


def test_a_watchdog_that_thawed_first_is_reported_after_an_early_release(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """Released before the thaw as if the freeze held; the thaw then learns the watchdog had
    thawed first: the holder is told, so a hold that counted on the freeze is revised."""
    events: list[str] = []
    told: list[dict[str, object]] = []
    runner = _cycle_with(monkeypatch, _OrderedConnection(events), True, events, fired=True,
                         released_after=told)
    assert events == ["freeze", "snapshot", "send release", "thaw", "receive",
                      "release after the thaw"]
    assert told == [{"frozen_together": False}]
    assert runner.status.consistency == "crash"
