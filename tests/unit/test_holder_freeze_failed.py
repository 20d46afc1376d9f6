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
