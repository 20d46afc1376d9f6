"""Run records: atomic files under the state dir, the latest pointer, exact text round-trip."""

from __future__ import annotations

import hashlib
import os
import stat
from pathlib import Path

import pytest

from quiesce.hold.records import (
    CatalogError,
    RecordNotFound,
    list_runs,
    load_record,
    load_record_file,
    new_run_id,
    valid_run_id,
    write_record,
)

LABEL = "START WAL LOCATION: 0/2000028 (file 000000010000000000000002)\r\nCHECKPOINT \u00e9\n\n"


def test_run_ids_sort_by_time_and_validate() -> None:
    first = new_run_id(1_700_000_000)
    second = new_run_id(1_700_000_001)
    assert first < second
    assert valid_run_id(first)
    assert not valid_run_id("../../etc/passwd")


def test_write_and_load_round_trip_exact_text(tmp_path: Path) -> None:
    state = tmp_path / "state"
    run_id = new_run_id()
    path = write_record(str(state), {"run_id": run_id, "instances": [
        {"plugin": "postgresql", "name": "main", "metadata": {
            "backup_label": LABEL, "sha256": hashlib.sha256(LABEL.encode()).hexdigest()}}]})
    assert stat.S_IMODE(os.stat(state).st_mode) == 0o700
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    record = load_record(str(state))
    metadata = record["instances"][0]["metadata"]
    assert metadata["backup_label"] == LABEL
    assert hashlib.sha256(metadata["backup_label"].encode()).hexdigest() == metadata["sha256"]
    assert load_record(str(state), run_id) == record
    assert load_record_file(path) == record
    assert not [n for n in os.listdir(state / "runs") if n.endswith(".tmp")]


def test_latest_points_at_the_newest(tmp_path: Path) -> None:
    state = str(tmp_path / "s")
    ids = [new_run_id(1_700_000_000 + i) for i in range(3)]
    for run_id in ids:
        write_record(state, {"run_id": run_id})
    assert load_record(state)["run_id"] == ids[-1]
    assert list_runs(state) == ids
    assert load_record(state, ids[0])["run_id"] == ids[0]


def test_missing_and_malformed(tmp_path: Path) -> None:
    with pytest.raises(RecordNotFound):
        load_record(str(tmp_path / "nope"))
    state = tmp_path / "s"
    write_record(str(state), {"run_id": new_run_id()})
    with pytest.raises(RecordNotFound, match="is not a run id"):
        load_record(str(state), "../x")
    with pytest.raises(RecordNotFound):
        load_record(str(state), new_run_id(1_000_000_000))
    bad = tmp_path / "bad.json"
    bad.write_text("{")
    with pytest.raises(CatalogError, match="not valid JSON"):
        load_record_file(str(bad))


def test_unsafe_state_dir_is_refused(tmp_path: Path) -> None:
    state = tmp_path / "s"
    write_record(str(state), {"run_id": new_run_id()})
    os.chmod(state, 0o777)
    with pytest.raises(CatalogError, match="not safe"):
        load_record(str(state))
    with pytest.raises(CatalogError, match="writable by group/other"):
        write_record(str(state), {"run_id": new_run_id()})


def test_a_run_record_serialises_the_same_fields_for_every_writer(tmp_path: Path) -> None:
    from quiesce.hold.records import RunRecord

    record = RunRecord(run_id=new_run_id(), state="lost", consistent=0,  # type: ignore[arg-type]
                       message="holder died", instances=[{"plugin": "x", "name": "y"}],
                       extra={"recovered_by": "guardian", "state": "not this one"})
    document = record.to_dict()
    assert document["consistent"] is False  # always a bool in the file
    assert document["state"] == "lost"  # the record's own fields win over extras
    assert document["recovered_by"] == "guardian"
    assert set(document) >= {"run_id", "state", "consistent", "message", "config",
                             "holder_pid", "started_at", "since", "until", "released_at",
                             "deadline", "max_hold_seconds", "instances", "log"}
    path = write_record(str(tmp_path / "state"), record)
    stored = load_record(str(tmp_path / "state"), record.run_id)
    assert Path(path).exists() and stored["recovered_by"] == "guardian"
    assert stored["instances"] == [{"plugin": "x", "name": "y"}]
