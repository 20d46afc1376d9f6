"""Messages of 'quiesce check' that were wrong (issue 7, item 5): what it says about freezing
for a config it rejected, and which notes a rejected wrapper does not also get."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from quiesce.callers.runner import CheckResult, check, format_check


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


DOCS = Path(__file__).resolve().parents[2] / "docs" / "azure-compatibility.md"


@pytest.fixture
def trusted_dir() -> Iterator[Path]:
    import os
    import shutil
    import tempfile

    if os.geteuid() != 0:
        pytest.skip("needs root: a config is trusted only in root-owned directories")
    path = Path(tempfile.mkdtemp(prefix="qcm-", dir="/run"))
    path.chmod(0o755)
    yield path
    shutil.rmtree(path, ignore_errors=True)


def test_quiesce_keeps_305_where_the_extension_says_317_or_304(trusted_dir: Path) -> None:
    """Issue 7 item 5: a bad owner/mode (extension: 317) and a quoted number (extension: 304)
    are both IncorrectJSONConfigFile (305) here, and the docs list the difference."""
    path = azure_config(trusted_dir, fs_freeze=False)  # mode 0644
    codes = {(e.code, e.number) for e in check(str(path)).errors}
    assert codes == {("IncorrectJSONConfigFile", 305)}
    path.chmod(0o600)
    assert check(str(path)).ok
    document = json.loads(path.read_text())
    document["timeoutInSeconds"] = "60"
    path.write_text(json.dumps(document))
    errors = check(str(path)).errors
    assert [(e.code, e.number) for e in errors] == [("IncorrectJSONConfigFile", 305)]
    assert "write 60 without quotes" in errors[0].hint

    rows = [line for line in DOCS.read_text().splitlines() if line.startswith("| ")]
    assert any("quoted number" in row and "304" in row and "`IncorrectJSONConfigFile` (305)"
               in row for row in rows)
    assert any("wrong owner or mode" in row and "317" in row
               and "`IncorrectJSONConfigFile` (305)" in row for row in rows)
