"""Drill checks and report rendering: the JSON contract and the human table."""

from __future__ import annotations

import json

from quiesce.harness.drill.report import CycleResult, DrillResult, render_table
from quiesce.harness.drill.verify import (
    Check,
    RestoredState,
    check_balances,
    check_ledger,
    check_mirror,
)
from quiesce.harness.drill.workload import AckLog


def _state(balances: dict[int, int], ledger: dict[int, tuple[int, int, int]],
           **kw: object) -> RestoredState:
    return RestoredState(balances=balances, ledger=ledger, **kw)  # type: ignore[arg-type]


def test_balances_match_ledger() -> None:
    state = _state({0: 990, 1: 1010}, {1: (0, 1, 10)})
    checks = {c.name: c for c in check_balances(state, 2, 1000)}
    assert checks["balance_total"].ok and checks["balances_match_ledger"].ok


def test_balance_without_its_ledger_row_fails() -> None:
    state = _state({0: 990, 1: 1010}, {})
    checks = {c.name: c for c in check_balances(state, 2, 1000)}
    assert checks["balance_total"].ok
    assert not checks["balances_match_ledger"].ok
    assert "account 0 has 990, ledger says 1000" in checks["balances_match_ledger"].detail


def test_sum_broken() -> None:
    checks = {c.name: c for c in check_balances(_state({0: 1000, 1: 999}, {}), 2, 1000)}
    assert not checks["balance_total"].ok
    assert "1999, expected 2000" in checks["balance_total"].detail


def test_missing_account() -> None:
    checks = {c.name: c for c in check_balances(_state({0: 1000}, {}), 2, 1000)}
    assert not checks["balance_total"].ok


def test_ledger_checks_name_the_missing_ids() -> None:
    log = AckLog()
    for i in (1, 2, 3):
        log.attempt(i)
        log.ack(i, i * 0.1, i * 0.1 + 0.05)
    checks = {c.name: c for c in check_ledger(_state({}, {1: (0, 1, 1)}), log, 10.0)}
    assert not checks["acked_writes_present"].ok
    assert "2 of 3" in checks["acked_writes_present"].detail
    assert "ids 2, 3" in checks["acked_writes_present"].detail


def test_mirror_ahead_of_innodb_and_torn_pairs() -> None:
    state = _state({}, {1: (0, 1, 1)}, mirror={1, 2}, pairs={1: 2, 2: 1})
    checks = {c.name: c for c in check_mirror(state)}
    assert not checks["myisam_mirror_behind_innodb"].ok
    assert "ids 2" in checks["myisam_mirror_behind_innodb"].detail
    assert not checks["myisam_pairs_whole"].ok
    ok = {c.name: c for c in check_mirror(_state({}, {1: (0, 1, 1)}, mirror={1},
                                                 pairs={1: 2}))}
    assert all(c.ok for c in ok.values())


def test_no_mirror_for_engines_without_myisam() -> None:
    assert check_mirror(_state({}, {})) == []


def _result() -> DrillResult:
    good = CycleResult(1, checks=[Check("a", True, "fine")], freeze_window_ms=1.234,
                       write_stall_ms=12.0, recovery_seconds=0.5)
    bad = CycleResult(2, checks=[Check("a", True), Check("server_started", False, "PANIC: x")])
    broken = CycleResult(3, error="quiesce run took no snapshot")
    return DrillResult("postgresql", "local", "loop", "quiesced", version="15.2",
                       fstype="ext4", cycles=[good, bad, broken])


def test_json_contract_fields() -> None:
    doc = json.loads(_result().dumps())
    for key in ("engine", "version", "backend", "disks", "mode", "cycles", "summary"):
        assert key in doc
    c = doc["cycles"][0]
    for key in ("verified", "checks", "freeze_window_ms", "write_stall_ms", "recovery_seconds"):
        assert key in c
    assert c["verified"] is True and c["checks"]["a"] == {"ok": True, "detail": "fine"}
    assert c["freeze_window_ms"] == 1.2
    assert doc["cycles"][1]["verified"] is False
    assert doc["cycles"][2]["verified"] is False and doc["cycles"][2]["error"]
    s = doc["summary"]
    assert s["verified"] is False and s["cycles_verified"] == 1 and s["exit_status"] == 1
    assert s["failed_checks"] == {"server_started": 1, "error": 1}


def test_cycle_without_checks_is_not_verified() -> None:
    assert not CycleResult(1).verified
    assert not DrillResult("postgresql", "local", "loop", "quiesced").verified


def test_table_shows_each_cycle_and_why() -> None:
    text = render_table(_result())
    lines = text.splitlines()
    assert lines[0].startswith("quiesce drill: postgresql 15.2 backend=local disks=loop/ext4")
    rows = [line for line in lines if line[:1].isdigit()]
    assert len(rows) == 3
    assert rows[0].split()[1] == "yes" and rows[1].split()[1] == "NO"
    assert "cycle 2: server_started failed: PANIC: x" in text
    assert "cycle 3: quiesce run took no snapshot" in text
    assert text.endswith("result: 2 of 3 cycle(s) NOT verified")


def test_startup_failure_keeps_the_servers_own_error_lines() -> None:
    from quiesce.harness.drill.cycle import _startup_failure

    pg = RuntimeError("postgres exited with status 1 while starting; log tail:\n"
                      "2026-01-01 UTC [1] LOG:  database system was interrupted\n"
                      "2026-01-01 UTC [1] FATAL:  the database system is starting up\n"
                      "2026-01-01 UTC [1] PANIC:  could not locate a valid checkpoint record\n")
    assert _startup_failure(pg) == ("postgres exited with status 1 while starting: "
                                    "PANIC: could not locate a valid checkpoint record")
    maria = RuntimeError("the mariadb server exited with status 1 while starting; log tail:\n"
                         "2026-01-01 0 [ERROR] InnoDB: Page 2 log sequence number 9 is in the "
                         "future!\n2026-01-01 0 [Note] InnoDB: x\n")
    assert _startup_failure(maria).endswith("ERROR: InnoDB: Page 2 log sequence number 9 is "
                                            "in the future!")
