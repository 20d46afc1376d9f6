"""`quiesce run` without --freeze-mount asks for --freeze-all outside Azure (issue 14 item 2).

Nothing here may freeze a filesystem this machine runs on, not even when the code under test
is wrong. So the refusal is checked through ``validate()`` (which discovers the mounts a run
would freeze and never freezes), and the command line through ``--dry-run`` and ``check``
(which run nothing); no test starts a real run without --freeze-mount.
"""

from __future__ import annotations

import json
import os
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from quiesce.callers.runner import RunOptions, real_azure_environment, validate
from quiesce.freezing.freeze import discover_mounts

pytestmark = pytest.mark.timeout(120)


def azure_config(root: Path) -> Path:
    for name in ("pre.sh", "post.sh"):
        (root / name).write_text("#!/bin/sh\nexit 0\n")
        os.chmod(root / name, 0o700)
    config = root / "VMSnapshotScriptPluginConfig.json"
    config.write_text(json.dumps({
        "pluginName": "ScriptRunner", "preScriptLocation": str(root / "pre.sh"),
        "postScriptLocation": str(root / "post.sh"), "preScriptParams": [],
        "postScriptParams": [], "preScriptNoOfRetries": 0, "postScriptNoOfRetries": 0,
        "timeoutInSeconds": 30, "continueBackupOnFailure": True, "fsFreezeEnabled": True}))
    os.chmod(config, 0o600)
    return config


def every_mount() -> list[str]:
    mounts = [m.mount_point for m in discover_mounts(None)]
    if not mounts:
        pytest.skip("this machine has no freezable local filesystem to plan for")
    return mounts


def test_validate_refuses_every_filesystem_without_consent(root_dir: Path) -> None:
    mounts = every_mount()
    prepared, errors = validate(RunOptions(config_path=str(azure_config(root_dir)),
                                           freeze_all=False))
    assert prepared is None
    (error,) = errors
    assert "needs --freeze-all" in error.message
    assert all(m in error.message for m in mounts)
    if "/" in mounts:
        assert "/ included" in error.message
    assert "--freeze-mount PATH" in error.hint and "--dry-run" in error.hint


def test_validate_accepts_consent_or_a_limited_set(
        root_dir: Path, loop_disk_factory: Callable[..., Any]) -> None:
    config = str(azure_config(root_dir))
    every_mount()
    prepared, errors = validate(RunOptions(config_path=config, freeze_all=True))
    assert errors == [] and prepared is not None
    prepared.close()
    limited = loop_disk_factory("ext4", name="rehearsal").mount_point  # validated, not frozen
    prepared, errors = validate(RunOptions(config_path=config, freeze_all=False,
                                           freeze_mounts=[str(limited)]))
    assert errors == [], errors
    assert prepared is not None and len(prepared.mounts) == 1
    prepared.close()


def test_dry_run_prints_the_freeze_set_and_the_refusal(root_dir: Path,
                                                       quiesce_cmd: list[str]) -> None:
    mounts = every_mount()
    config = azure_config(root_dir)
    proc = subprocess.run([*quiesce_cmd, "run", "--config", str(config), "--dry-run"],
                          capture_output=True, text=True, timeout=60, check=False)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert "'quiesce run' would freeze, in this order (every freezable local filesystem" \
        in proc.stdout
    assert all(f"    {m} (" in proc.stdout for m in mounts)
    assert "REFUSED: without --freeze-mount" in proc.stdout
    assert "dry run: nothing was run or frozen" in proc.stdout
    proc = subprocess.run([*quiesce_cmd, "run", "--config", str(config), "--dry-run",
                           "--freeze-all", "--json"],
                          capture_output=True, text=True, timeout=60, check=False)
    plan = json.loads(proc.stdout)
    assert proc.returncode == 0 and plan["ok"] is True and plan["freeze_all_needed"] is False
    assert [m["mount_point"] for m in plan["freeze"]] == mounts
    assert not (root_dir / "order").exists()


def test_check_says_what_run_would_freeze(root_dir: Path, quiesce_cmd: list[str],
                                          loop_disk_factory: Callable[..., Any]) -> None:
    every_mount()
    config = azure_config(root_dir)
    proc = subprocess.run([*quiesce_cmd, "check", "--config", str(config)],
                          capture_output=True, text=True, timeout=60, check=False)
    assert "'quiesce run' would freeze, in this order (every freezable local filesystem: a " \
           "real backup; 'run' needs --freeze-all for it outside Azure" in proc.stdout
    limited = loop_disk_factory("ext4", name="rehearsal").mount_point  # checked, not frozen
    proc = subprocess.run([*quiesce_cmd, "check", "--config", str(config), "--freeze-mount",
                           str(limited)],
                          capture_output=True, text=True, timeout=60, check=False)
    assert "'quiesce run' would freeze, in this order:\n" in proc.stdout


def test_a_real_azure_environment_is_the_vmsnapshot_handler(tmp_path: Path) -> None:
    assert real_azure_environment(str(tmp_path / "missing")) is False
    handler = tmp_path / "Microsoft.Azure.RecoveryServices.VMSnapshotLinux-1.0.9225.0"
    handler.mkdir()
    assert real_azure_environment(str(tmp_path)) is False  # the extension is not set up
    (handler / "HandlerEnvironment.json").write_text("[]")
    assert real_azure_environment(str(tmp_path)) is True
    other = tmp_path / "other"
    other.mkdir()
    (other / "Microsoft.Azure.Extensions.CustomScript-2.1").mkdir()
    assert real_azure_environment(str(other)) is False


def test_run_logs_each_phase_and_writes_its_metrics(root_dir: Path,
                                                    quiesce_cmd: list[str]) -> None:
    """fsFreezeEnabled false: nothing is frozen, so no consent is needed, and the run's
    journal events and textfile can be checked without touching any filesystem."""
    import socket

    config = azure_config(root_dir)
    document = json.loads(config.read_text())
    document["fsFreezeEnabled"] = False
    config.write_text(json.dumps(document))
    journal = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    journal.bind(str(root_dir / "journal.sock"))
    journal.settimeout(0.5)
    metrics = root_dir / "run.prom"
    env = {**os.environ, "QUIESCE_JOURNAL_SOCKET": str(root_dir / "journal.sock"),
           "QUIESCE_SYSLOG_SOCKET": str(root_dir / "nolog.sock")}
    try:
        proc = subprocess.run([*quiesce_cmd, "run", "--config", str(config), "--json",
                               "--snapshot-command", "/bin/true", "--metrics-file",
                               str(metrics)],
                              capture_output=True, text=True, timeout=60, check=False, env=env)
        assert proc.returncode == 0, proc.stdout + proc.stderr
        events = []
        while True:
            try:
                data = journal.recv(65536).decode()
            except TimeoutError:
                break
            events.append(dict(line.split("=", 1) for line in data.splitlines() if "=" in line))
    finally:
        journal.close()
    run_id = json.loads(proc.stdout)["run_id"]
    phases = [e["QUIESCE_PHASE"] for e in events if e["QUIESCE_COMMAND"] == "run"]
    assert phases[0] == "validate" and phases[-1] == "done"
    assert {"pre", "snapshot", "post"} <= set(phases)
    assert {e["QUIESCE_RUN_ID"] for e in events if e["QUIESCE_COMMAND"] == "run"} == {run_id}
    text = metrics.read_text()
    assert "quiesce_run_last_exit_code 0\n" in text
    assert 'quiesce_run_last_phase_seconds{phase="snapshot"} ' in text
