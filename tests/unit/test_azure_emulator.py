"""The emulated Azure script runner (tests/helpers/azure_emulator.py) and the delay proxy
(tests/helpers/delay_proxy.py) follow their own rules: the integration tests of issue 7 are
only as good as these two stand-ins for the foreign caller and the slow network."""

from __future__ import annotations

import json
import socket
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from helpers import wait_for
from helpers.azure_emulator import AzureEmulator, RunnerConfig
from helpers.delay_proxy import DelayProxy, DelayProxyError

POLL = 0.2  # faster than any real config allows (1..5 s): these scripts take milliseconds


def setup(tmp_path: Path, pre: str, post: str = "exit 0\n", **keys: Any) -> Path:
    """An Azure config and two scripts; each script's first line is a shebang that does not
    exist, so only ``sh <script>`` can run it."""
    for name, body in (("pre.sh", pre), ("post.sh", post)):
        (tmp_path / name).write_text("#!/nonexistent/interpreter\n" + body)
    doc = {"pluginName": "ScriptRunner", "preScriptLocation": str(tmp_path / "pre.sh"),
           "postScriptLocation": str(tmp_path / "post.sh"), "timeoutInSeconds": 5,
           "ScriptsExecutionPollTimeSeconds": POLL, **keys}
    config = tmp_path / "azure.json"
    config.write_text(json.dumps(doc))
    return config


def test_scripts_run_under_sh_with_params_as_argv_entries(tmp_path: Path) -> None:
    out = tmp_path / "args"
    config = setup(tmp_path, f'for a in "$@"; do echo "[$a]" >> {out}; done\n',
                   preScriptParams=["two words", "$HOME", ""])
    backup = AzureEmulator(config).backup()
    assert backup.pre.status == "success", backup.describe()
    assert out.read_text() == "[two words]\n[$HOME]\n[]\n"


def test_every_phase_costs_at_least_one_poll(tmp_path: Path) -> None:
    backup = AzureEmulator(setup(tmp_path, "exit 0\n")).backup()
    assert (backup.pre.status, backup.pre.polls) == ("success", 1)
    assert (backup.post.status, backup.post.polls) == ("success", 1)
    assert backup.pre.elapsed >= POLL  # slept before its first look


def test_timeout_is_declared_at_a_poll_and_the_script_is_never_killed(tmp_path: Path) -> None:
    done = tmp_path / "pre-finished"
    config = setup(tmp_path, f"sleep 3\ntouch {done}\n", timeoutInSeconds=0.5)
    backup = AzureEmulator(config).backup()
    assert (backup.pre.status, backup.pre.code, backup.pre.error) == \
        ("timeout", 308, "Pre-ScriptTimeout")
    assert backup.pre.elapsed > 0.5
    assert backup.pre.polls >= 3  # 0.2, 0.4: within the limit
    # The snapshot and post went on while the pre-script kept running.
    assert backup.snapshot.taken and backup.snapshot.consistency == "filesystem"
    assert backup.post.status == "success"
    assert not done.exists()
    backup.wait_scripts(30)
    assert done.exists() and backup.pre.run.exit_code == 0


def test_a_post_script_timeout_is_its_own_error(tmp_path: Path) -> None:
    config = setup(tmp_path, "exit 0\n", post="sleep 1\n", timeoutInSeconds=0.3)
    backup = AzureEmulator(config).backup()
    assert backup.pre.status == "success"
    assert (backup.post.status, backup.post.code) == ("timeout", 309)
    assert not backup.post.run.done.is_set()  # still running: decided at the poll at 0.4 s
    backup.wait_scripts(30)
    assert backup.post.run.exit_code == 0


def test_retries_repoll_the_finished_process_and_never_rerun_it(tmp_path: Path) -> None:
    runs = tmp_path / "runs"
    config = setup(tmp_path, f"echo run >> {runs}\nexit 3\n", preScriptNoOfRetries=4)
    backup = AzureEmulator(config).backup()
    assert (backup.pre.status, backup.pre.code) == ("failed", 300)
    assert backup.pre.run.exit_code == 3
    assert backup.pre.run.attempts == 5
    assert runs.read_text() == "run\n"  # ran once


def test_snapshot_then_post_follow_a_failed_pre(tmp_path: Path) -> None:
    post_ran = tmp_path / "post-ran"
    seen: list[float] = []
    config = setup(tmp_path, "exit 1\n", post=f"touch {post_ran}\n")
    backup = AzureEmulator(config, snapshot=lambda: seen.append(time.monotonic())).backup()
    assert backup.pre.status == "failed" and post_ran.exists()
    snap = backup.snapshot
    assert snap.taken and snap.consistency == "filesystem" and len(seen) == 1
    assert snap.started_wall is not None and snap.ended_wall is not None
    assert backup.pre.decided_mono <= snap.started_mono <= seen[0]  # type: ignore[operator]
    assert seen[0] <= snap.ended_mono <= backup.post.started_mono  # type: ignore[operator]
    assert [name for name, _ in backup.events] == [
        "pre-start", "pre-failed", "snapshot-start", "snapshot-end", "post-start",
        "post-success"]


@pytest.mark.parametrize("keys", [{"continueBackupOnFailure": False},
                                  {"fsFreezeEnabled": False}])
def test_no_snapshot_after_a_failed_pre_but_post_still_runs(tmp_path: Path,
                                                            keys: dict[str, bool]) -> None:
    post_ran = tmp_path / "post-ran"
    seen: list[int] = []
    config = setup(tmp_path, "exit 1\n", post=f"touch {post_ran}\n", **keys)
    backup = AzureEmulator(config, snapshot=lambda: seen.append(1)).backup()
    assert (backup.snapshot.taken, backup.snapshot.consistency) == (False, "none")
    assert seen == [] and post_ran.exists()


def test_a_successful_pre_gives_an_application_consistent_snapshot(tmp_path: Path) -> None:
    backup = AzureEmulator(setup(tmp_path, "exit 0\n")).backup()
    assert (backup.snapshot.taken, backup.snapshot.consistency) == (True, "application")


def test_config_defaults_and_the_silent_cap() -> None:
    config = RunnerConfig.from_document({"preScriptLocation": "/a", "postScriptLocation": "/b",
                                         "timeoutInSeconds": 7200})
    assert (config.timeout, config.poll, config.pre_retries, config.pre_params) == \
        (1800, 3, 0, ())
    assert config.continue_on_failure and config.fs_freeze


# ---------------------------------------------------------------------------- delay proxy
def _echo_server() -> tuple[socket.socket, list[float]]:
    """A loopback server that echoes one connection; records when it accepted it."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(4)
    accepted: list[float] = []

    def serve() -> None:
        with listener:
            conn, _ = listener.accept()
            accepted.append(time.monotonic())
            with conn:
                while data := conn.recv(4096):
                    conn.sendall(data)

    threading.Thread(target=serve, daemon=True).start()
    return listener, accepted


def test_proxy_delays_the_connection_then_pipes_both_ways() -> None:
    listener, accepted = _echo_server()
    with DelayProxy("127.0.0.1", listener.getsockname()[1], 0.5) as proxy:
        connected = time.monotonic()
        with socket.create_connection(("127.0.0.1", proxy.port), timeout=10) as client:
            client.sendall(b"x" * 100_000)
            received = b""
            while len(received) < 100_000:
                chunk = client.recv(65536)
                assert chunk, "the proxy closed the connection"
                received += chunk
        assert received == b"x" * 100_000
        assert accepted and accepted[0] - connected >= 0.5  # a sleep lasts at least its time
        assert (proxy.accepted, proxy.forwarded) == (1, 1)
    assert not proxy.alive()


def test_proxy_stops_by_itself_at_the_end_of_its_lifetime() -> None:
    listener, _ = _echo_server()
    proxy = DelayProxy("127.0.0.1", listener.getsockname()[1], 30, lifetime=0.5).start()
    client = socket.create_connection(("127.0.0.1", proxy.port), timeout=10)
    try:
        wait_for(lambda: not proxy.alive(), 10, "the proxy to stop after its lifetime")
        assert proxy.stopped and proxy.forwarded == 0
        assert client.recv(10) == b""  # closed without ever reaching the server
    finally:
        client.close()
        listener.close()


def test_proxy_refuses_clients_over_its_bound_and_non_loopback_targets() -> None:
    with pytest.raises(DelayProxyError, match="not a loopback"):
        DelayProxy("192.0.2.1", 5432, 1)
    with pytest.raises(DelayProxyError, match="not a loopback"):
        DelayProxy("localhost.example", 5432, 1)
    listener, _ = _echo_server()
    with DelayProxy("127.0.0.1", listener.getsockname()[1], 5, max_connections=1) as proxy:
        first = socket.create_connection(("127.0.0.1", proxy.port), timeout=10)
        second = socket.create_connection(("127.0.0.1", proxy.port), timeout=10)
        try:
            assert second.recv(10) == b""  # closed at once
            assert (proxy.accepted, proxy.refused) == (1, 1)
        finally:
            first.close()
            second.close()
    listener.close()
