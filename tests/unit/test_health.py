"""quiesce.hold.health: which problem the records show, and the node-exporter textfile."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from quiesce.errors import QuiesceError
from quiesce.hold import health
from quiesce.hold.records import prune, write_record
from quiesce.timefmt import iso

NOW = 1_800_000_000.0


def record(state: str, consistent: bool, released: float, **extra: object) -> dict[str, object]:
    return {"run_id": "r", "state": state, "consistent": consistent,
            "started_at": iso(released - 3), "since": iso(released - 2),
            "released_at": iso(released), **extra}


def test_no_record_is_stale_only_when_a_max_age_is_asked() -> None:
    assert health.assess([], now=NOW).problems == []
    found = health.assess([], max_age_hours=24, now=NOW)
    assert found.problems == ["stale"] and found.exit_code == 5
    assert "no run record says one ever was" in found.details["stale"]


def test_problems_are_told_apart_and_ordered() -> None:
    records = [record("released", True, NOW - 7200), record("auto-released", False, NOW - 60)]
    found = health.assess(records, uncollected={"run_id": "x", "state": "auto-released"},
                          max_age_hours=1, now=NOW)
    assert found.problems == ["uncollected", "inconsistent", "stale"]
    assert found.exit_code == 3
    assert found.as_dict()["last_run"]["hold_seconds"] == pytest.approx(2.0)
    assert found.as_dict()["records_by_state"] == {"auto-released": 1, "released": 1}


def test_a_recent_consistent_hold_is_healthy() -> None:
    found = health.assess([record("released", True, NOW - 60)], max_age_hours=1, now=NOW)
    assert found.problems == [] and found.exit_code == 0


def test_the_textfile_is_valid_exposition_format() -> None:
    records = [record("auto-released", False, NOW - 100),
               record("released", True, NOW - 50, instances=[
                   {"plugin": "mysql", "name": 'we"ird\\name', "held_seconds": 0.25}])]
    text = health.metrics_text(health.assess(records, now=NOW), now=NOW)
    sample = re.compile(r'^[a-z_]+(\{[a-z_]+="(?:[^"\\]|\\.)*"(,[a-z_]+="(?:[^"\\]|\\.)*")*\})? '
                        r"-?[0-9.e+]+$")
    for line in text.splitlines():
        assert line.startswith("# HELP ") or line.startswith("# TYPE ") or sample.match(line), line
    assert "quiesce_last_run_consistent 1\n" in text
    assert "quiesce_auto_released_records 1\n" in text
    assert 'quiesce_last_instance_held_seconds{plugin="mysql",name="we\\"ird\\\\name"} 0.25' \
        in text
    assert "quiesce_last_consistent_age_seconds 50\n" in text


def test_write_metrics_replaces_the_file_readable_by_the_exporter(tmp_path: Path) -> None:
    path = tmp_path / "quiesce.prom"
    path.write_text("old")
    health.write_metrics(str(path), "quiesce_ok 1\n")
    assert path.read_text() == "quiesce_ok 1\n" and path.stat().st_mode & 0o777 == 0o644


def test_prune_needs_a_positive_keep_days_and_keeps_the_newest(tmp_path: Path) -> None:
    state = tmp_path / "state"
    write_record(str(state), {"run_id": "20000101T000000.000000Z-aaaaaa"})
    with pytest.raises(QuiesceError, match="positive number of days"):
        prune(str(state), 0)
    assert prune(str(state), 1) == ([], ["20000101T000000.000000Z-aaaaaa"])


def test_unreadable_records_are_a_clear_error(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("")
    with pytest.raises(QuiesceError, match="cannot read the run records"):
        health.read_records(str(tmp_path / "file"))  # ENOTDIR: an OSError like EACCES
    assert health.read_records(str(tmp_path / "missing")) == []
