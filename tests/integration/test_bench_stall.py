"""Smoke test of bench/bench_stall.py: one quick PostgreSQL run of the floor, `quiesce run` and
an emulated Azure cycle (poll 1 s) on the bench's own loop disks; checks the JSON's shape and
that the bench leaves no loop device behind. No timing is asserted (speed is the bench's job,
not the suite's)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from helpers import private_dir

BENCH = Path(__file__).resolve().parents[2] / "bench" / "bench_stall.py"
APPROACHES = ["floor", "run", "azure-1s"]

pytestmark = [pytest.mark.integration, pytest.mark.timeout(240),
              pytest.mark.usefixtures("require_root")]


def _stall_loops() -> set[str]:
    out = subprocess.run(["losetup", "-a"], capture_output=True, text=True, check=True).stdout
    return {line for line in out.splitlines() if "quiesce-stall-" in line}


def _bench(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, str(BENCH), *args], capture_output=True, text=True,
                          timeout=200, check=False, cwd="/")


@pytest.fixture
def postgres_binaries() -> None:
    from quiesce.errors import EngineUnavailable
    from quiesce_postgresql.server import find_bindir

    try:
        find_bindir()
    except EngineUnavailable as exc:
        pytest.skip(f"no PostgreSQL server binaries: {exc}")


@pytest.mark.usefixtures("postgres_binaries")
def test_quick_postgresql_run_writes_the_result_shape() -> None:
    before = _stall_loops()
    with private_dir("quiesce-bench-test-") as out_dir:
        output = out_dir / "stall.json"
        proc = _bench("--quick", "--engine", "postgresql", "--polls", "1", "--level", "full",
                      "--approaches", ",".join(APPROACHES), "--output", str(output))
        assert proc.returncode == 0, proc.stdout + proc.stderr
        data = json.loads(output.read_text())
    assert _stall_loops() - before == set(), "the bench left a loop device attached"
    assert "stall med" in proc.stdout and "<= 500 ms" in proc.stdout  # the table and a goal

    assert data["benchmark"] == "stall" and data["quick"] is True and data["runs"] == 1
    assert data["engines"]["postgresql"]["approaches"] == APPROACHES
    cycles = {c["approach"]: c for c in data["cycles"]}
    assert sorted(cycles) == sorted(APPROACHES)
    for approach, cycle in cycles.items():
        assert cycle["engine"] == "postgresql" and cycle["run"] == 0
        assert cycle["commits"] > 10, approach  # the writer ran through the whole cycle
        assert cycle["stall_ms"] > 0
        a, b = cycle["stall_at_ms"]
        assert 0 <= a < b <= cycle["duration_ms"]
        assert round(b - a, 1) == pytest.approx(cycle["stall_ms"], abs=0.1)
        assert all(len(point) == 2 and point[1] >= 0 for point in cycle["timeline"])
        f0, f1 = cycle["marks_ms"]["freeze"]
        assert 0 < f0 < f1 < cycle["duration_ms"], approach
        s0, s1 = cycle["marks_ms"]["snapshot"]
        # The snapshot ran inside the freeze (quiesce run's phase times are ms-rounded).
        assert f0 - 1 <= s0 <= s1 <= f1 + 1, approach
    assert "hold" not in cycles["floor"]["marks_ms"]
    for approach in ("run", "azure-1s"):
        info = cycles[approach]["info"]
        assert info["consistency"] == "application", info
        assert info["record_consistent"] is True, info
        assert [lv["chosen"] for lv in info["levels"]] == ["full"], info
        h0, h1 = cycles[approach]["marks_ms"]["hold"]
        f0, f1 = cycles[approach]["marks_ms"]["freeze"]
        assert h0 <= f0 + 1 and f1 <= h1 + 1, (approach, h0, h1, f0, f1)  # held over it
    assert cycles["run"]["info"]["hold"]["released_at_thaw"] is True

    rows = data["summary"]["postgresql"]
    assert set(rows) == set(APPROACHES)
    assert rows["run"]["goal"].startswith("<= 1.2 x floor + 5 ms")
    assert isinstance(rows["run"]["met"], bool) and isinstance(rows["azure-1s"]["met"], bool)
    assert rows["run"]["ratio_to_floor"] == pytest.approx(
        rows["run"]["stall_ms"]["median"] / rows["floor"]["stall_ms"]["median"], abs=0.01)


def test_a_poll_azure_does_not_accept_is_refused_before_anything_is_made() -> None:
    before = _stall_loops()
    proc = _bench("--quick", "--polls", "9")
    assert proc.returncode == 2
    assert "from 1 to 5" in proc.stderr
    assert _stall_loops() == before
