"""What 'quiesce status' prints for a holder's state (issue 7, item 5: a holder still acquiring
its locks was shown as "since None, until None (None s left)")."""

from __future__ import annotations

import pytest

from quiesce.commands import status


def state(**fields: object) -> dict[str, object]:
    base: dict[str, object] = {
        "state": "quiescing", "held": True, "run_id": "20261130T190000Z-ab12", "holder_pid": 4242,
        "since": None, "until": None, "remaining_seconds": None, "runtime_dir": "/run/quiesce",
        "instances": [{"plugin": "mysql", "name": "main", "status": "locking",
                       "held_seconds": None, "error": None}],
    }
    base.update(fields)
    return base


def test_quiescing_says_it_is_acquiring_not_none(capsys: pytest.CaptureFixture[str]) -> None:
    status._print(state(), as_json=False)
    out = capsys.readouterr().out
    assert "None" not in out, out
    assert out.splitlines()[0] == ("quiescing: run 20261130T190000Z-ab12, holder pid 4242, "
                                   "acquiring the locks (not held yet)")
    assert out.splitlines()[1] == "  mysql/main: locking"


def test_holding_shows_since_until_and_time_left(capsys: pytest.CaptureFixture[str]) -> None:
    status._print(state(state="holding", since="2026-11-30T19:00:01Z",
                        until="2026-11-30T19:05:01Z", remaining_seconds=287,
                        instances=[]), as_json=False)
    assert capsys.readouterr().out == (
        "holding: run 20261130T190000Z-ab12, holder pid 4242, since 2026-11-30T19:00:01Z, "
        "until 2026-11-30T19:05:01Z (287 s left)\n")


def test_an_unknown_deadline_is_left_out_not_printed_as_none(
        capsys: pytest.CaptureFixture[str]) -> None:
    status._print(state(state="releasing", since="2026-11-30T19:00:01Z", instances=[]),
                  as_json=False)
    out = capsys.readouterr().out
    assert "None" not in out
    assert out == ("releasing: run 20261130T190000Z-ab12, holder pid 4242, "
                   "since 2026-11-30T19:00:01Z\n")


def test_releasing_before_anything_was_held_does_not_claim_acquiring(
        capsys: pytest.CaptureFixture[str]) -> None:
    status._print(state(state="releasing", instances=[]), as_json=False)
    assert capsys.readouterr().out == ("releasing: run 20261130T190000Z-ab12, holder pid "
                                       "4242\n")
