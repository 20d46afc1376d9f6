"""Running script phases for real: deadlines, process groups, retries, output, argv."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from quiesce.callers.scripts import HEAD_BYTES, TAIL_BYTES, has_interpreter_line, run_script
from quiesce.errors import AzureCode, ScriptError
from quiesce.security import open_trusted

pytestmark = pytest.mark.timeout(120)


@pytest.fixture
def pid_files(root_dir: Path) -> Iterator[Path]:
    """Scripts write the pids of what they start here; anything still alive is killed after."""
    d = root_dir / "pids"
    d.mkdir()
    yield d
    for f in d.iterdir():
        with contextlib.suppress(ValueError, ProcessLookupError):
            os.kill(int(f.read_text().strip()), signal.SIGKILL)


def script(root_dir: Path, body: str, name: str = "s.sh") -> Path:
    path = root_dir / name
    path.write_text(body)
    os.chmod(path, 0o700)
    return path


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie is dead for our purpose (its parent is gone or will reap it).
    with contextlib.suppress(FileNotFoundError):
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        return state != "Z"
    return False


def wait_dead(pid: int, seconds: float = 10.0) -> bool:
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        if not alive(pid):
            return True
        time.sleep(0.05)
    return False


def run(path: Path, params: list[str] | None = None, **kw):  # type: ignore[no-untyped-def]
    lines: list[tuple[str, str]] = kw.pop("lines", [])
    with open_trusted(path, "script") as trusted:
        return run_script(kw.pop("phase", "pre"), str(path), params or [], fd=trusted.fd,
                          sink=lambda s, line: lines.append((s, line)), **kw)


def test_hanging_script_and_its_background_child_are_killed_at_the_deadline(
        root_dir: Path, pid_files: Path) -> None:
    path = script(root_dir, f"""#!/bin/sh
sleep 300 &
echo $! > {pid_files}/child
echo $$ > {pid_files}/main
echo started
sleep 300
""")
    t0 = time.monotonic()
    result = run(path, timeout=2, grace=1)
    elapsed = time.monotonic() - t0
    assert result.timed_out and not result.ok
    assert result.code is AzureCode.PRE_SCRIPT_TIMEOUT
    assert len(result.attempts) == 1 and result.attempts[0].signal == signal.SIGTERM
    assert elapsed >= 2  # not before the deadline
    assert elapsed < 60  # and certainly not waiting for the 300 s sleeps
    for name in ("main", "child"):
        pid = int((pid_files / name).read_text())
        assert wait_dead(pid), f"{name} ({pid}) survived the deadline"


def test_script_ignoring_sigterm_is_killed_after_the_grace(root_dir: Path,
                                                           pid_files: Path) -> None:
    path = script(root_dir, f"""#!/bin/sh
trap '' TERM
(trap '' TERM; sleep 300) &
echo $! > {pid_files}/child
while :; do sleep 1; done
""")
    result = run(path, phase="post", timeout=1, grace=1)
    assert result.timed_out and result.code is AzureCode.POST_SCRIPT_TIMEOUT
    assert result.attempts[0].signal == signal.SIGKILL
    assert wait_dead(int((pid_files / "child").read_text()))


def test_failed_attempts_are_really_rerun(root_dir: Path) -> None:
    counter = root_dir / "count"
    path = script(root_dir, f"""#!/bin/sh
echo x >> {counter}
n=$(wc -l < {counter})
[ "$n" -ge 3 ]
""")
    result = run(path, timeout=60, retries=2)
    assert result.ok and result.exit_codes == [1, 1, 0]
    assert counter.read_text().count("x") == 3

    counter.unlink()
    result = run(path, timeout=60, retries=1)
    assert not result.ok and result.exit_codes == [1, 1]
    assert result.code is AzureCode.PRE_SCRIPT_EXECUTION_FAILED
    assert counter.read_text().count("x") == 2
    assert "exited with status 1" in result.describe()


def test_no_retry_after_success_and_zero_retries_means_one_try(root_dir: Path) -> None:
    counter = root_dir / "count"
    path = script(root_dir, f"#!/bin/sh\necho x >> {counter}\nexit 0\n")
    assert run(path, timeout=60, retries=5).exit_codes == [0]
    fail = script(root_dir, "#!/bin/sh\nexit 4\n", "f.sh")
    assert run(fail, timeout=60, retries=0).exit_codes == [4]


def test_the_deadline_covers_all_attempts(root_dir: Path) -> None:
    counter = root_dir / "count"
    path = script(root_dir, f"#!/bin/sh\necho x >> {counter}\nsleep 0.5\nexit 1\n")
    t0 = time.monotonic()
    result = run(path, timeout=3, retries=1000, grace=1)
    assert not result.ok
    assert len(result.attempts) < 1000
    assert time.monotonic() - t0 < 60
    assert counter.read_text().count("x") == len(result.attempts)


def test_one_mebibyte_of_output_does_not_block(root_dir: Path) -> None:
    path = script(root_dir, """#!/bin/sh
head -c 1048576 /dev/zero | tr '\\0' 'o' | fold -w 1024; echo
head -c 1048576 /dev/zero | tr '\\0' 'e' | fold -w 1024 >&2; echo >&2
echo done
""")
    lines: list[tuple[str, str]] = []
    result = run(path, timeout=120, lines=lines)
    assert result.ok, result.output_tail
    stdout = (b"o" * 1024 + b"\n") * 1024 + b"done\n"
    stderr = (b"e" * 1024 + b"\n") * 1024
    output = result.output_json()
    for name, stream in (("stdout", stdout), ("stderr", stderr)):
        assert output[name]["bytes"] == len(stream)
        assert output[name]["head"].encode() == stream[:HEAD_BYTES]
        assert output[name]["tail"].encode() == stream[-TAIL_BYTES:]
        assert output[name]["omitted_bytes"] == len(stream) - HEAD_BYTES - TAIL_BYTES
        # The sink saw the head, a note on what was left out, then the tail.
        seen = [line for s, line in lines if s == name]
        assert any(line.startswith(f"[quiesce: {name} was {len(stream)} bytes") for line in seen)
        assert len(seen) < (HEAD_BYTES + TAIL_BYTES) // 1024 + 5
    assert lines[-1] == ("stdout", "done") or ("stdout", "done") in lines


def test_a_long_line_without_newline_arrives_in_pieces(root_dir: Path) -> None:
    path = script(root_dir, "#!/bin/sh\nhead -c 200000 /dev/zero | tr '\\0' 'z'\n")
    lines: list[tuple[str, str]] = []
    result = run(path, timeout=60, lines=lines)
    assert result.ok
    assert max(len(line) for _, line in lines) <= 64 * 1024
    out = result.output_json()["stdout"]
    assert out["bytes"] == 200000 and out["head"] == "z" * HEAD_BYTES
    assert out["tail"] == "z" * TAIL_BYTES
    assert "".join(line for _, line in lines if not line.startswith("[quiesce:")) == \
        "z" * (HEAD_BYTES + TAIL_BYTES)


LINE = b"0123456789012345678901234\n"  # what `yes 0123456789012345678901234` prints


def test_a_million_lines_then_the_real_work_finish_well_within_the_deadline(
        root_dir: Path) -> None:
    # The issue: a post-script printing 1,000,000 short lines (0.1 s on its own) was killed
    # at its 10 s timeout before it reached `quiesce post`. Logged the way the runner logs.
    from quiesce.callers.runner import RunLog

    marker = root_dir / "released"
    path = script(root_dir, f"""#!/bin/sh
yes 0123456789012345678901234 | head -n 1000000
echo released > {marker}
echo done
""")
    with open(os.devnull, "w") as devnull:
        log = RunLog(devnull)
        with open_trusted(path, "script") as trusted:
            result = run_script("post", str(path), [], fd=trusted.fd, timeout=10,
                                sink=lambda s, line: log(f"post {s}: {line}"))
    assert result.ok and not result.timed_out, result.describe()
    assert marker.read_text() == "released\n"
    out = result.output_json()["stdout"]
    assert out["bytes"] == 26_000_000 + len(b"done\n")
    assert out["tail"].endswith("0123456789012345678901234\ndone\n")
    # The run log holds the head, one note and the tail, not a million lines.
    assert len(log.lines) < (HEAD_BYTES + TAIL_BYTES) // len(LINE) + 10
    assert log.lines[-1].endswith("post stdout: done")


READER = r"""
import json, os, sys
from quiesce.callers.runner import RunLog
from quiesce.callers.scripts import run_script

def hwm_kib():
    for line in open("/proc/self/status"):
        if line.startswith("VmHWM:"):
            return int(line.split()[1])

devnull = open(os.devnull, "w")
log = RunLog(devnull)
sink = lambda s, line: log(f"post {s}: {line}")
run_script("post", sys.argv[2], [], timeout=60, sink=sink)  # warm up: lazy imports, buffers
before, logged = hwm_kib(), len(log.lines)
result = run_script("post", sys.argv[1], [], timeout=600, sink=sink)
after = hwm_kib()
print(json.dumps({"ok": result.ok, "before_kib": before, "after_kib": after,
                  "log_lines": len(log.lines) - logged, "output": result.output_json()}))
"""


def test_100_megabytes_of_output_keep_bounded_bytes_and_memory(tmp_path: Path) -> None:
    size = 100_000_000
    path = tmp_path / "chatty.sh"
    path.write_text(f"#!/bin/sh\nyes 0123456789012345678901234 | head -c {size}\n")
    path.chmod(0o700)
    small = tmp_path / "small.sh"
    small.write_text("#!/bin/sh\nyes 0123456789012345678901234 | head -c 300000\n")
    small.chmod(0o700)
    reader = subprocess.run([sys.executable, "-c", READER, str(path), str(small)],
                            capture_output=True, text=True, timeout=600, check=False)
    assert reader.returncode == 0, reader.stderr
    report = json.loads(reader.stdout)
    assert report["ok"]
    out = report["output"]["stdout"]
    assert out["bytes"] == size
    stream_at = lambda start, n: bytes(LINE[(start + k) % len(LINE)]  # noqa: E731
                                       for k in range(n))
    assert out["head"].encode() == stream_at(0, HEAD_BYTES)
    assert out["tail"].encode() == stream_at(size - TAIL_BYTES, TAIL_BYTES)
    assert out["omitted_bytes"] == size - HEAD_BYTES - TAIL_BYTES
    assert report["log_lines"] < (HEAD_BYTES + TAIL_BYTES) // len(LINE) + 10
    # Peak RSS of the reading process: a few read buffers, not the 100 MB (nor, as before,
    # several times that in per-line strings). Measured as VmHWM growth over the warm-up.
    growth_mib = (report["after_kib"] - report["before_kib"]) / 1024
    assert growth_mib < 16, f"the reader's peak RSS grew by {growth_mib:.1f} MiB"


PARAMS = ["a b", "", "'single'", '"double"', "$(touch /run/quiesce-pwned)", "`id`", "*",
          "back\\slash", "semi;colon && echo hi", "--flag=x y", "tab\there", "ünïcødé", "$HOME"]


def test_params_arrive_verbatim(root_dir: Path) -> None:
    path = script(root_dir, """#!/usr/bin/env python3
import json, sys
print(json.dumps(sys.argv[1:]))
""", "p.py")
    lines: list[tuple[str, str]] = []
    result = run(path, PARAMS, timeout=60, lines=lines)
    assert result.ok, result.output_tail
    assert json.loads(lines[0][1]) == PARAMS
    assert not Path("/run/quiesce-pwned").exists()


def test_shebang_is_honoured_and_environment_is_clean(root_dir: Path) -> None:
    path = script(root_dir, """#!/bin/bash
echo "shell=$BASH_VERSION"
echo "cwd=$(pwd)"
echo "stdin=$(readlink /proc/$$/fd/0)"
echo "pgid=$(ps -o pgid= -p $$ | tr -d ' ') pid=$$ sid=$(ps -o sid= -p $$ | tr -d ' ')"
""")
    lines: list[tuple[str, str]] = []
    assert run(path, timeout=60, lines=lines).ok
    out = dict(line.split("=", 1) for _, line in lines[:3])
    assert out["shell"]  # bash ran it, not sh
    assert out["cwd"] == "/"
    assert out["stdin"] == "/dev/null"
    fields = dict(kv.split("=") for kv in lines[3][1].split())
    assert fields["pgid"] == fields["pid"] == fields["sid"]  # its own session and group


def test_daemon_keeping_stdout_open_does_not_hold_the_phase(root_dir: Path,
                                                            pid_files: Path) -> None:
    # What `quiesce pre` does: leave a holder in its own session, which inherited stdout.
    path = script(root_dir, f"""#!/bin/sh
setsid sleep 60 &
echo $! > {pid_files}/daemon
echo holder started
exit 0
""")
    t0 = time.monotonic()
    lines: list[tuple[str, str]] = []
    result = run(path, timeout=50, lines=lines)
    assert result.ok and not result.timed_out
    assert time.monotonic() - t0 < 30  # far from the 50 s deadline and the 60 s sleeper
    assert ("stdout", "holder started") in lines
    daemon = int((pid_files / "daemon").read_text())
    assert alive(daemon)  # the runner does not kill what deliberately left its session


def test_script_killed_by_a_signal_is_a_failure(root_dir: Path) -> None:
    path = script(root_dir, "#!/bin/sh\nkill -9 $$\n")
    result = run(path, timeout=60)
    assert not result.ok and result.attempts[0].signal == 9
    assert "signal 9" in result.describe()


def test_script_without_interpreter_line_is_a_clear_error(root_dir: Path) -> None:
    path = script(root_dir, "echo no shebang\n")
    with open_trusted(path, "script") as trusted:
        assert not has_interpreter_line(trusted.fd)
        with pytest.raises(ScriptError) as info:
            run_script("pre", str(path), [], timeout=10, fd=trusted.fd)
    assert "#!/bin/sh" in info.value.hint
    assert info.value.code is AzureCode.PRE_SCRIPT_EXECUTION_FAILED
    good = script(root_dir, "#!/bin/sh\n", "g.sh")
    with open_trusted(good, "script") as trusted:
        assert has_interpreter_line(trusted.fd)


def test_missing_interpreter_is_a_clear_error(root_dir: Path) -> None:
    path = script(root_dir, "#!/nonexistent/interpreter\n")
    with pytest.raises(ScriptError, match="cannot be executed"):
        run(path, timeout=10)
