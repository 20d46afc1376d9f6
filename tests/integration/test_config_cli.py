"""Hostile configs and chatty scripts through the real CLI (issue 12, items 3, 4, 5 and 8).

- quiesce.toml: deep nesting, NaN, a password in a conninfo, and a fuzzed sample each make
  ``quiesce pre`` exit 2 with its --json error written, no traceback, no password, nothing held;
- the Azure JSON: a 200k-deep array and a fuzzed sample make ``quiesce run`` / ``quiesce check``
  exit 2 with IncorrectJSONConfigFile (305) and the status file written;
- ``quiesce run`` with scripts printing a million lines finishes, and its status JSON carries
  each script's output as bytes, head and tail.

Every config here points at unreachable servers (port 1) and has fsFreezeEnabled false, so even
a config that validated by mistake could neither hold a database nor freeze a filesystem.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from helpers.cli import QuiesceCli, cli_workspace
from helpers.fuzz_configs import azure_base, azure_mutations, toml_base, toml_mutations
from quiesce.callers.scripts import HEAD_BYTES, TAIL_BYTES

pytestmark = pytest.mark.timeout(300)

TOML_SAMPLE = 14  # quiesce pre runs
AZURE_SAMPLE = 14  # quiesce check runs, plus a third of them through quiesce run


@pytest.fixture
def cli(require_root: None) -> Iterator[QuiesceCli]:
    with cli_workspace(QuiesceCli, "quiesce-cfgcli-") as workspace:
        yield workspace


def write_config(cli: QuiesceCli, data: bytes) -> None:
    cli.config.write_bytes(data)
    cli.config.chmod(0o600)


def assert_refused_and_nothing_held(cli: QuiesceCli, label: str) -> dict[str, Any]:
    out = cli.run("pre", "--json", timeout=120)
    assert out.returncode == 2, f"{label}: exit {out.returncode}\n{out.stdout}\n{out.stderr}"
    assert "Traceback" not in out.stderr and "RecursionError" not in out.stderr, label
    report = json.loads(out.stdout)
    assert report["error"]["type"] == "ConfigError", (label, report)
    assert report["error"]["problems"], label
    status = cli.status()
    assert not status.get("held") and not status.get("holder_pid"), (label, status)
    assert not (cli.rundir / "holder.sock").exists(), label
    for stream in (out.stdout, out.stderr):
        assert "Hunter2" not in stream, label
    return report


def test_pre_with_a_100k_deep_toml_array_is_a_config_error(cli: QuiesceCli) -> None:
    text = toml_base(str(cli.state)).replace(
        "max_hold_seconds = 120", "max_hold_seconds = " + "[" * 100_000 + "]" * 100_000)
    write_config(cli, text.encode())
    report = assert_refused_and_nothing_held(cli, "deep")
    assert "nested too deeply" in report["error"]["problems"][0]["message"]


def test_pre_with_nan_names_every_key(cli: QuiesceCli) -> None:
    text = toml_base(str(cli.state))
    text = text.replace("max_hold_seconds = 120", "max_hold_seconds = nan")
    text = text.replace("lock_wait_seconds = 10.5", "lock_wait_seconds = nan")
    text = text.replace("kill_blockers_after = 5", "kill_blockers_after = -inf")
    write_config(cli, text.encode())
    report = assert_refused_and_nothing_held(cli, "nan")
    where = {p["where"] for p in report["error"]["problems"]}
    assert {"max_hold_seconds", "mysql[1].lock_wait_seconds",
            "mysql[1].kill_blockers_after"} <= where


@pytest.mark.parametrize("conninfo", [
    "postgresql://postgres:Hunter2%Secret@127.0.0.1:1/postgres",
    "postgresql://postgres:Hunter2Secret@[::1:1/postgres",
])
def test_pre_never_prints_the_password_of_a_bad_conninfo(cli: QuiesceCli, conninfo: str) -> None:
    text = toml_base(str(cli.state)).replace(
        '"host=127.0.0.1 port=1 user=postgres dbname=postgres"', json.dumps(conninfo))
    write_config(cli, text.encode())
    report = assert_refused_and_nothing_held(cli, conninfo)
    assert any(p["where"] == "postgresql[1].conninfo" for p in report["error"]["problems"])
    plain = cli.run("pre")  # the text form on stderr too
    assert plain.returncode == 2 and "Hunter2" not in plain.stderr + plain.stdout
    assert "conninfo" in plain.stderr


def test_pre_refuses_a_fuzzed_sample_of_quiesce_toml(cli: QuiesceCli) -> None:
    for label, data in toml_mutations(str(cli.state), TOML_SAMPLE, seed=7):
        write_config(cli, data)
        assert_refused_and_nothing_held(cli, label)


# --- the Azure JSON -----------------------------------------------------------------------------


def azure_files(root: Path, pre_body: str = "exit 0", post_body: str = "exit 0") -> tuple[Path,
                                                                                          Path]:
    pre, post = root / "pre.sh", root / "post.sh"
    pre.write_text(f"#!/bin/sh\n{pre_body}\n")
    post.write_text(f"#!/bin/sh\n{post_body}\n")
    pre.chmod(0o700)
    post.chmod(0o700)
    return pre, post


def quiesce(*argv: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "quiesce", *argv], capture_output=True,
                          text=True, timeout=timeout, check=False)


def assert_run_refused(config: Path, status_file: Path, label: str) -> None:
    status_file.unlink(missing_ok=True)
    out = quiesce("run", "--config", str(config), "--json", "--status-file", str(status_file))
    assert out.returncode == 2, f"{label}: exit {out.returncode}\n{out.stderr[-2000:]}"
    assert "Traceback" not in out.stderr, label
    printed = json.loads(out.stdout)
    written = json.loads(status_file.read_text())
    for status in (printed, written):
        assert status["snapshot_taken"] is False and status["exit_code"] == 2
        assert status["errors"] and status["errors"][0]["code"] == "IncorrectJSONConfigFile"
        assert status["errors"][0]["number"] == 305
    assert all(p["status"] != "ok" for p in written["phases"] if p["name"] in ("pre", "post"))


def assert_check_refused(config: Path, label: str) -> None:
    out = quiesce("check", "--config", str(config))
    assert out.returncode == 2, f"{label}: exit {out.returncode}\n{out.stdout}\n{out.stderr}"
    assert "Traceback" not in out.stderr, label
    assert "problem IncorrectJSONConfigFile (305)" in out.stdout, (label, out.stdout)


def test_run_and_check_with_a_200k_deep_json_array(root_dir: Path) -> None:
    pre, post = azure_files(root_dir)
    config = root_dir / "azure.json"
    doc = json.dumps(azure_base(str(pre), str(post))).replace(
        '"fuzz"', "[" * 200_000 + "]" * 200_000)
    config.write_text(doc)
    config.chmod(0o600)
    assert_run_refused(config, root_dir / "status.json", "deep")
    assert_check_refused(config, "deep")


def test_run_and_check_refuse_a_fuzzed_sample_of_azure_configs(root_dir: Path) -> None:
    pre, post = azure_files(root_dir)
    config = root_dir / "azure.json"
    for i, (label, data) in enumerate(azure_mutations(str(pre), str(post), AZURE_SAMPLE,
                                                      seed=7)):
        config.write_bytes(data)
        config.chmod(0o600)
        assert_check_refused(config, label)
        if i % 3 == 0:
            assert_run_refused(config, root_dir / "status.json", label)


# --- script output in the status JSON ----------------------------------------------------------


def test_run_with_scripts_printing_a_million_lines(root_dir: Path) -> None:
    marker = root_dir / "post-did-its-work"
    pre, post = azure_files(
        root_dir, "yes 0123456789012345678901234 | head -n 1000000\necho pre-done",
        f"yes 0123456789012345678901234 | head -n 1000000\necho bye >&2\n"
        f"echo released > {marker}")
    config = root_dir / "azure.json"
    doc = azure_base(str(pre), str(post))
    doc["timeoutInSeconds"] = 10  # the post-script was killed at 10 s
    config.write_text(json.dumps(doc))
    config.chmod(0o600)
    status_file = root_dir / "status.json"
    out = quiesce("run", "--config", str(config), "--json", "--status-file", str(status_file))
    assert out.returncode == 0, out.stderr[-3000:]
    assert marker.read_text() == "released\n"
    status = json.loads(status_file.read_text())
    phases = {p["name"]: p for p in status["phases"]}
    for name, last in (("pre", "pre-done\n"), ("post", "0123456789012345678901234\n")):
        phase = phases[name]
        assert phase["status"] == "ok"
        stdout = phase["output"]["stdout"]
        assert stdout["bytes"] == 26_000_000 + (len(last) if name == "pre" else 0)
        assert len(stdout["head"].encode()) == HEAD_BYTES
        assert len(stdout["tail"].encode()) == TAIL_BYTES and stdout["tail"].endswith(last)
        assert stdout["omitted_bytes"] == stdout["bytes"] - HEAD_BYTES - TAIL_BYTES
        assert phase["attempt_results"][0]["output_bytes"]["stdout"] == stdout["bytes"]
    assert phases["post"]["output"]["stderr"] == {"bytes": 4, "head": "bye\n", "tail": "",
                                                  "omitted_bytes": 0}
    # The log on stderr shows the head, the note on what was left out and the tail; bounded.
    log_lines = out.stderr.splitlines()
    assert any("post stdout: [quiesce: stdout was 26000000 bytes" in line for line in log_lines)
    assert len(log_lines) < 2 * (HEAD_BYTES + TAIL_BYTES) // 26 + 100
    assert os.path.getsize(status_file) < 4 * (HEAD_BYTES + TAIL_BYTES) + 20_000
