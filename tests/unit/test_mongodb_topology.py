"""Role detection from real-shaped hello/isMaster replies, and version rules."""

from __future__ import annotations

import pytest
from bson import ObjectId, Timestamp

from quiesce_mongodb.topology import (
    detect_role,
    last_write_ts,
    lock_timeout_supported,
    mongos_fsync_supported,
    parse_version,
)

PID = ObjectId("65f0c0ffee0000000000abcd")
TOPOLOGY = {"processId": PID, "counter": 6}


def test_primary() -> None:
    role = detect_role({"isWritablePrimary": True, "secondary": False, "setName": "rs0",
                        "hosts": ["h1:27017"], "topologyVersion": TOPOLOGY, "ok": 1.0})
    assert (role.role, role.set_name, role.process_id) == ("primary", "rs0", str(PID))
    assert role.is_replica_member and not role.is_mongos


def test_legacy_ismaster_primary() -> None:
    assert detect_role({"ismaster": True, "secondary": False, "setName": "rs0"}).role == \
        "primary"


def test_secondary_and_hidden_secondary() -> None:
    reply = {"isWritablePrimary": False, "secondary": True, "setName": "rs0"}
    assert detect_role(reply).role == "secondary"
    hidden = detect_role({**reply, "hidden": True})
    assert (hidden.role, hidden.state) == ("secondary", "hidden")


def test_arbiter() -> None:
    assert detect_role({"isWritablePrimary": False, "secondary": False, "arbiterOnly": True,
                        "setName": "rs0"}).role == "arbiter"


def test_member_in_transition_is_other() -> None:
    role = detect_role({"isWritablePrimary": False, "secondary": False, "setName": "rs0"})
    assert role.role == "other"
    assert "recovering" in role.state


def test_mongos() -> None:
    role = detect_role({"isWritablePrimary": True, "msg": "isdbgrid", "ok": 1.0})
    assert role.is_mongos and role.set_name is None


def test_standalone_and_uninitiated_member() -> None:
    assert detect_role({"isWritablePrimary": True, "ok": 1.0}).role == "standalone"
    role = detect_role({"isWritablePrimary": False, "isreplicaset": True, "ok": 1.0})
    assert role.role == "other" and "rs.initiate" in role.state


@pytest.mark.parametrize("text, expected", [
    ("7.0.14", (7, 0, 14)), ("8.0.0-rc3", (8, 0, 0)), ("4.4", (4, 4, 0)),
])
def test_parse_version(text: str, expected: tuple[int, int, int]) -> None:
    assert parse_version(text) == expected


def test_parse_version_rejects_garbage() -> None:
    with pytest.raises(ValueError, match="not a MongoDB version"):
        parse_version("unknown")


@pytest.mark.parametrize("version, ok", [
    ((5, 0, 21), False), ((5, 0, 22), True), ((6, 0, 10), False), ((6, 0, 11), True),
    ((7, 0, 1), False), ((7, 0, 2), True), ((7, 1, 0), True), ((8, 0, 0), True),
    ((6, 3, 0), False), ((4, 4, 30), False),
])
def test_mongos_fsync_supported(version: tuple[int, int, int], ok: bool) -> None:
    assert mongos_fsync_supported(version) is ok


def test_lock_timeout_supported() -> None:
    assert not lock_timeout_supported((7, 0, 1))
    assert lock_timeout_supported((7, 0, 2))
    assert lock_timeout_supported((8, 0, 0))
    assert not lock_timeout_supported((6, 0, 20))


def test_last_write_ts() -> None:
    ts = Timestamp(1700000000, 7)
    assert last_write_ts({"lastWrite": {"opTime": {"ts": ts, "t": 3}}}) == ts
    assert last_write_ts({"ok": 1}) is None
