"""The caller's freeze set and whether a database's files lie on it (freeze_set)."""

from __future__ import annotations

import json
import os
import socket
from pathlib import Path

import pytest

from quiesce.freezing import freeze_set
from quiesce.freezing.freeze_set import (
    AZURE_FREEZE_ENV,
    FREEZE_MOUNTS_ENV,
    RUN_ID_ENV,
    CallerFreeze,
    LevelChoice,
    all_frozen_together,
    caller_freeze,
    freeze_mounts_value,
)

# Mount ids far above any real one: the lookup by an fd's mount id never matches these, so
# paths are judged by these entries' mount points.
MOUNTINFO = """\
9001 1 254:0 / / rw,relatime - ext4 /dev/vda rw
9002 9001 0:22 / /proc rw - proc proc rw
9003 9001 259:1 / /srv/data rw - xfs /dev/nvme0n1p1 rw
9004 9001 259:2 / /srv/wal rw - ext4 /dev/mapper/vg-wal rw
9005 9001 7:3 / /srv/loop rw - ext4 /dev/loop3 rw
9006 9001 0:40 / /srv/btr rw - btrfs /dev/sdb rw
9007 9001 0:50 / /srv/tmp rw - tmpfs tmpfs rw
9008 9001 0:51 / /srv/nfs rw - nfs4 host:/x rw
9009 9001 8:1 / /srv/f2 rw - f2fs /dev/sdc1 rw
"""


def run_env(mounts: list[str], run_id: str = "run-1", env_run_id: str | None = None) -> dict:
    return {FREEZE_MOUNTS_ENV: freeze_mounts_value(run_id, mounts),
            RUN_ID_ENV: run_id if env_run_id is None else env_run_id}


def test_quiesce_run_declares_its_mounts() -> None:
    freeze = caller_freeze(run_env(["/srv/data", "/srv/loop"]), mountinfo_text=MOUNTINFO)
    assert freeze.verified and freeze.caller == "quiesce run"
    assert freeze.mounts == ("/srv/data", "/srv/loop")
    assert freeze.devices == ("259:1", "7:3")  # quiesce run freezes loop devices too


@pytest.mark.parametrize(("env", "why"), [
    (run_env(["/srv/data"], env_run_id="run-2"), "not this run"),
    (run_env(["/srv/data"], env_run_id=""), "not this run"),
    (run_env(["/srv/nowhere"]), "not a mount point"),
    (run_env(["/srv/tmp"]), "cannot be frozen"),
    (run_env(["/srv/nfs"]), "cannot be frozen"),
    ({FREEZE_MOUNTS_ENV: "[not json", RUN_ID_ENV: "run-1"}, "not JSON"),
    ({FREEZE_MOUNTS_ENV: json.dumps(["/srv/data"]), RUN_ID_ENV: "run-1"}, "no list of mounts"),
    ({}, "did not say what it freezes"),
    ({AZURE_FREEZE_ENV: "false"}, "fsFreezeEnabled is false"),
])
def test_an_unverifiable_freeze_set_is_not_verified(env: dict, why: str) -> None:
    freeze = caller_freeze(env, mountinfo_text=MOUNTINFO)
    assert not freeze.verified
    assert why in freeze.evidence


def test_quiesce_run_freezing_nothing_is_not_a_freeze_set() -> None:
    freeze = caller_freeze(run_env([]), mountinfo_text=MOUNTINFO)
    assert not freeze.verified and "freezes nothing" in freeze.evidence


def test_azure_freezes_ext_xfs_btrfs_block_devices_but_no_loop_device() -> None:
    freeze = caller_freeze({AZURE_FREEZE_ENV: "true"}, mountinfo_text=MOUNTINFO)
    assert freeze.verified and freeze.caller == "azure"
    assert set(freeze.mounts) == {"/", "/srv/data", "/srv/wal", "/srv/btr"}
    assert "/srv/loop" not in freeze.mounts  # loop: Azure skips it
    assert "/srv/f2" not in freeze.mounts  # f2fs: not a type Azure freezes


def test_the_quiesce_run_declaration_wins_over_azure() -> None:
    env = {**run_env(["/srv/loop"]), AZURE_FREEZE_ENV: "true"}
    assert caller_freeze(env, mountinfo_text=MOUNTINFO).mounts == ("/srv/loop",)


def test_round_trip_through_a_dict() -> None:
    freeze = caller_freeze(run_env(["/srv/data"]), mountinfo_text=MOUNTINFO)
    assert CallerFreeze.from_dict(freeze.to_dict()) == freeze
    assert not CallerFreeze.from_dict(None).verified
    assert not CallerFreeze.from_dict({"verified": True}).verified  # malformed


def _tree(tmp_path: Path) -> str:
    """Fake mountinfo putting tmp_path/a on one filesystem and tmp_path/b on another."""
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    a, b = tmp_path / "a", tmp_path / "b"
    return (f"9001 1 254:0 / / rw - ext4 /dev/vda rw\n"
            f"9011 9001 7:1 / {a} rw - ext4 /dev/loop1 rw\n"
            f"9012 9001 7:2 / {b} rw - ext4 /dev/loop2 rw\n")


def test_all_paths_on_the_frozen_set(tmp_path: Path) -> None:
    info = _tree(tmp_path)
    freeze = CallerFreeze("quiesce run", True, (str(tmp_path / "a"), str(tmp_path / "b")),
                          ("7:1", "7:2"), "declared")
    os.symlink(tmp_path / "b", tmp_path / "a" / "link")  # pg_wal as a symlink
    verdict = all_frozen_together(freeze, [
        ("data directory", str(tmp_path / "a")),
        ("pg_wal", str(tmp_path / "a" / "link")),
        ("binary log", str(tmp_path / "b" / "not-yet" / "mysql-bin")),  # judged by its parent
    ], mountinfo_text=info)
    assert verdict.frozen_together, verdict.reason
    assert [p.device for p in verdict.paths] == ["7:1", "7:2", "7:2"]


def test_one_path_off_the_frozen_set_fails_and_names_it(tmp_path: Path) -> None:
    info = _tree(tmp_path)
    freeze = CallerFreeze("quiesce run", True, (str(tmp_path / "a"),), ("7:1",), "declared")
    verdict = all_frozen_together(freeze, [("data directory", str(tmp_path / "a")),
                                           ("redo", str(tmp_path / "b"))], mountinfo_text=info)
    assert not verdict.frozen_together
    assert "redo" in verdict.reason and str(tmp_path / "b") in verdict.reason
    assert [p.frozen for p in verdict.paths] == [True, False]


def test_an_unverified_freeze_set_covers_nothing(tmp_path: Path) -> None:
    verdict = all_frozen_together(freeze_set.unknown("no idea"),
                                  [("data directory", str(tmp_path))])
    assert not verdict.frozen_together and "no idea" in verdict.reason


def test_level_choice_is_light_only_when_allowed_and_every_condition_holds() -> None:
    choice = LevelChoice("auto")
    choice.check("a", True, "yes")
    choice.check("b", False, "because")
    assert choice.decide() == "full" and choice.reason == "b: because"
    good = LevelChoice("auto")
    good.check("a", True, "yes")
    assert good.decide() == "light"
    good.fall_back("found later")
    assert good.to_dict()["chosen"] == "full" and good.reason == "found later"
    full = LevelChoice("full")
    full.check("a", True, "yes")
    assert full.decide() == "full"
    assert LevelChoice("auto").decide() == "full"  # nothing checked: never light


def test_peer_pid_of_a_unix_socket_is_the_other_process() -> None:
    left, right = socket.socketpair()
    with left, right:
        assert freeze_set.peer_pid(left) == os.getpid()


def test_a_remote_tcp_server_is_not_on_this_machine() -> None:
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(1)
    client = socket.create_connection(server.getsockname())
    with server, client:
        pid, how = freeze_set.server_pid(client, None)
        assert pid is None and "pid file" in how
        # This process listens on that port, so with its pid it is found.
        pid, how = freeze_set.server_pid(client, os.getpid())
        assert pid == os.getpid(), how
        pid, how = freeze_set.server_pid(client, 1)
        assert pid is None and "does not hold" in how


def test_server_process_must_work_in_the_data_directory(tmp_path: Path) -> None:
    assert freeze_set.server_process_problem(os.getpid(), os.getcwd()) is None
    assert "does not work in" in (freeze_set.server_process_problem(os.getpid(),
                                                                    str(tmp_path)) or "")
