"""A hold at the lighter level relies on the caller freezing every disk together: when the
runner says its freeze did not hold, that hold is not consistent; a full-level hold is."""

from __future__ import annotations

from typing import Any

from quiesce.hold.holder import Holder


def outcome(*levels: str) -> dict[str, Any]:
    return {"consistent": True, "message": "every instance was held",
            "instances": [{"plugin": "mysql", "name": f"db{n}", "status": "released",
                           "metadata": {"level": {"chosen": level}}}
                          for n, level in enumerate(levels)]}


def test_a_light_level_hold_under_a_failed_freeze_is_not_consistent() -> None:
    holder = Holder("/nonexistent.toml", "/nonexistent-rundir", None)
    result = outcome("full", "light")
    holder._freeze_failed(result)
    assert result["consistent"] is False
    assert "mysql/db1" in result["message"] and "mysql/db0" not in result["message"]
    assert "NOT" in result["message"]
    assert result["instances"][1]["note"].startswith("held at the lighter level")
    assert "note" not in result["instances"][0]


def test_a_full_level_hold_does_not_depend_on_the_freeze() -> None:
    holder = Holder("/nonexistent.toml", "/nonexistent-rundir", None)
    result = outcome("full", "full")
    holder._freeze_failed(result)
    assert result["consistent"] is True


def test_a_failed_freeze_reported_after_the_release_revises_the_outcome() -> None:
    """'quiesce run' released before its thaw, then found its watchdog had thawed first: the
    holder's already released outcome is revised for a hold that counted on the freeze."""
    holder = Holder("/nonexistent.toml", "/nonexistent-rundir", None)
    holder.final = outcome("light")
    answer = dict(holder.final, collected_from="holder")
    holder._note_freeze({"frozen_together": False}, answer)
    assert holder.final["consistent"] is False and answer["consistent"] is False
    assert answer["message"] == holder.final["message"]


def test_a_freeze_that_held_changes_nothing() -> None:
    holder = Holder("/nonexistent.toml", "/nonexistent-rundir", None)
    holder.final = outcome("light")
    for fields in ({"frozen_together": True}, {}):
        holder._note_freeze(fields, dict(holder.final))
        assert holder.final["consistent"] is True
