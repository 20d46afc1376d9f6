"""`quiesce run` with quiesce wrappers as its scripts releases the hold at the thaw, over the
holder socket, instead of after the post-script's interpreter has started: the post-script
then only collects the outcome. A hold that stops writes (the example flock engine's) is
released between the snapshot and the thaw, on a connection opened before the freeze. Real
loop filesystems and real FIFREEZE (only the test's own mounts), the example flock engine as
the held "database"."""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from helpers import example_plugin_env, wait_for

pytestmark = pytest.mark.timeout(240)

# The snapshot command: the hold must still be held (the flock taken) while it runs.
SNAPSHOT = """\
import fcntl, os, sys
fd = os.open(sys.argv[1], os.O_RDWR)
try:
    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
except BlockingIOError:
    print("held during the snapshot")
    sys.exit(0)
print("NOT held during the snapshot")
sys.exit(9)
"""


class Cycle:
    def __init__(self, root: Path, mounts: list[str]) -> None:
        self.root = root
        self.mounts = mounts
        self.lock = root / "db.lock"
        self.rundir = root / "rt"
        self.state = root / "state"
        self.toml = root / "quiesce.toml"
        self.toml.write_text(f'state_dir = "{self.state}"\n[[flock]]\nname = "db"\n'
                             f'path = "{self.lock}"\n')
        os.chmod(self.toml, 0o600)
        self.lock.touch()
        self.seen = root / "post-saw"
        self.snapshot = root / "snap.py"
        self.snapshot.write_text(SNAPSHOT)
        self.env = example_plugin_env()
        quiesce = f"{sys.executable} -m quiesce"
        common = f"--config {self.toml} --runtime-dir {self.rundir}"
        self.script("pre.sh", f"exec {quiesce} pre {common} \"$@\"\n")
        # Before 'quiesce post' starts: is the lock already free? (released at the thaw)
        self.script("post.sh",
                    f"if {sys.executable} -c \"import fcntl,os,sys; "
                    f"fd=os.open('{self.lock}', os.O_RDWR); "
                    f"fcntl.flock(fd, fcntl.LOCK_EX|fcntl.LOCK_NB)\" 2>/dev/null; "
                    f"then echo free > {self.seen}; else echo held > {self.seen}; fi\n"
                    f"exec {quiesce} post {common} --json \"$@\"\n")
        self.config = root / "VMSnapshotScriptPluginConfig.json"
        self.config.write_text(json.dumps({
            "pluginName": "ScriptRunner", "preScriptLocation": str(root / "pre.sh"),
            "postScriptLocation": str(root / "post.sh"), "preScriptParams": [],
            "postScriptParams": [], "preScriptNoOfRetries": 0, "postScriptNoOfRetries": 0,
            "timeoutInSeconds": 60, "continueBackupOnFailure": False, "fsFreezeEnabled": True}))
        os.chmod(self.config, 0o600)

    def script(self, name: str, body: str) -> None:
        path = self.root / name
        path.write_text("#!/bin/sh\n" + body)
        os.chmod(path, 0o700)

    def run(self) -> tuple[int, dict[str, Any], str]:
        import subprocess

        argv = [sys.executable, "-m", "quiesce", "run", "--config", str(self.config), "--json",
                "--freeze-timeout", "30", "--snapshot-command",
                f"{sys.executable} {self.snapshot} {self.lock}"]
        for mount in self.mounts:
            argv += ["--freeze-mount", mount]
        proc = subprocess.run(argv, capture_output=True, text=True, timeout=180, check=False,
                              env=self.env, cwd="/")
        return proc.returncode, json.loads(proc.stdout), proc.stderr


@pytest.fixture
def cycle(root_dir: Path, loop_disk_factory: Callable[..., Any]) -> Iterator[Cycle]:
    disk = loop_disk_factory("ext4", name="data")
    yield Cycle(root_dir, [str(disk.mount_point)])


def test_the_runner_releases_at_the_thaw_and_post_only_collects(cycle: Cycle) -> None:
    code, status, err = cycle.run()
    assert code == 0, (status, err)
    assert status["consistency"] == "application"
    assert status["hold"]["released_at_thaw"] is True, status["hold"]
    # It stops writers and counts on no freeze: released once the snapshot existed.
    assert status["hold"]["released_before_thaw"] is True, status["hold"]
    # The flock engine cannot split its hold and blocks writers from pre on: no wait for the
    # kernel to settle (it would lengthen the hold), nothing to complete at the freeze.
    assert "settled_ms" not in status["hold"] and "block" not in status["hold"]
    # The lock was held during the snapshot (the snapshot command checked), and already free
    # when the post-script started.
    assert cycle.seen.read_text().strip() == "free"
    [record_path] = wait_for(lambda: list((cycle.state / "runs").glob("*.json")), 30,
                             "the run record")
    record = json.loads(record_path.read_text())
    assert record["consistent"] is True
    assert record["run_id"] == status["run_id"]  # one id for one backup
    assert any("released by the runner, after the snapshot and before the thaw" in line
               for line in record["log"])


def test_a_post_script_that_is_no_quiesce_wrapper_is_left_alone(cycle: Cycle) -> None:
    """Only a recognised 'quiesce post' call is released early; anything else releases as it
    always did (here: the post-script releases itself)."""
    quiesce = f"{sys.executable} -m quiesce"
    cycle.script("post.sh", f"echo custom > {cycle.seen}\n"
                            f"{quiesce} post --config {cycle.toml} --runtime-dir {cycle.rundir}"
                            " --json > /dev/null && echo ok\n")
    code, status, err = cycle.run()
    assert code == 0, (status, err)
    assert status["hold"] == {}
    assert cycle.seen.read_text().strip() == "custom"
