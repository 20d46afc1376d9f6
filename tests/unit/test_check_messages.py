"""Messages of 'quiesce check' that were wrong (issue 7, item 5): what it says about freezing
for a config it rejected, and which notes a rejected wrapper does not also get."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from quiesce.runner import CheckResult, check, format_check


def azure_config(directory: Path, *, fs_freeze: bool) -> Path:
    pre = directory / "pre.sh"
    post = directory / "post.sh"
    for script in (pre, post):
        script.write_text("#!/bin/sh\nexit 0\n")
        script.chmod(0o700)
    path = directory / "VMSnapshotScriptPluginConfig.json"
    path.write_text(json.dumps({
        "pluginName": "ScriptRunner", "preScriptLocation": str(pre),
        "postScriptLocation": str(post), "preScriptParams": [], "postScriptParams": [],
        "preScriptNoOfRetries": 0, "postScriptNoOfRetries": 0, "timeoutInSeconds": 60,
        "continueBackupOnFailure": True, "fsFreezeEnabled": fs_freeze}))
    path.chmod(0o644)  # group/other-readable, and under /tmp: rejected
    return path


@pytest.mark.parametrize("fs_freeze", [False, True])
def test_a_rejected_config_lists_nothing_it_would_freeze(tmp_path: Path,
                                                         fs_freeze: bool) -> None:
    result = check(str(azure_config(tmp_path, fs_freeze=fs_freeze)))
    assert result.config is None and not result.ok  # rejected: mode 0644, under /tmp
    assert result.mounts == []
    text = format_check(result)
    assert "would freeze" not in text, text
    assert "  freeze: nothing (the config was rejected; see the problems below)\n" in text


def test_freeze_lines_for_each_state() -> None:
    off = CheckResult("/c.json", freeze_enabled=False)
    assert "  freeze: off (fsFreezeEnabled is false)\n" in format_check(off)
    rejected = CheckResult("/c.json", freeze_enabled=None)
    assert "would freeze" not in format_check(rejected)
    on = CheckResult("/c.json", freeze_enabled=True)
    assert "  would freeze: nothing (no freezable filesystem found)\n" in format_check(on)
