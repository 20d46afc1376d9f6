"""The Azure codes keep the documented strings and the extension's numbers."""

from __future__ import annotations

import pytest

from quiesce.errors import AzureCode, ConfigError, Problem


def test_numbers_follow_documented_order() -> None:
    assert [c.number for c in AzureCode] == list(range(300, 310))
    assert AzureCode.PRE_SCRIPT_TIMEOUT.text == "Pre-ScriptTimeout"
    assert AzureCode.INSUFFICIENT_PERMISSION_POST.text == "InsufficientPermissionforPost-Script"


@pytest.mark.parametrize(
    ("phase", "kind", "text"),
    [
        ("pre", "timeout", "Pre-ScriptTimeout"),
        ("post", "timeout", "Post-ScriptTimeout"),
        ("pre", "failed", "Pre-ScriptExecutionFailed"),
        ("post", "not-found", "Post-ScriptNotFound"),
        ("pre", "permission", "InsufficientPermissionforPre-Script"),
    ],
)
def test_code_for_phase(phase: str, kind: str, text: str) -> None:
    assert AzureCode.for_phase(phase, kind).text == text


def test_validation_error_lists_every_problem() -> None:
    err = ConfigError("x.json", [Problem("a", "bad", "fix a"), Problem("b", "worse")])
    assert "2 problem(s)" in str(err)
    assert "a: bad (fix a)" in str(err)
    assert "b: worse" in str(err)
