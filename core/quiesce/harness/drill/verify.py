"""Engine-neutral checks of a restored database against the workload's record.

Each check is a :class:`Check` with a name, pass/fail and a one-line detail; a cycle is verified
only when every check passed. The engine-specific parts (reading the restored state, running
the engine's own integrity check) live in ``quiesce.harness.drill.targets``; this module turns
what was
read into checks, so the same rules apply to every engine.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from quiesce.harness.drill.workload import AckLog, compare_ledger


@dataclass
class Check:
    name: str
    ok: bool
    detail: str = ""

    def to_json(self) -> dict[str, Any]:
        return {"ok": self.ok, "detail": self.detail}


@dataclass
class RestoredState:
    """What the drill read back from a restored server."""

    balances: dict[int, int]
    ledger: dict[int, tuple[int, int, int]]  # id -> (src, dst, amount)
    # MySQL/MariaDB: ledger ids mirrored into a MyISAM table after their InnoDB commit, and
    # the MyISAM pairs table (id -> number of rows; every statement writes exactly two).
    mirror: set[int] | None = None
    pairs: dict[int, int] | None = None
    extra: dict[str, Any] = field(default_factory=dict)


def _sample(ids: list[int], n: int = 5) -> str:
    shown = ", ".join(str(i) for i in ids[:n])
    return shown + (f", ... ({len(ids)} in all)" if len(ids) > n else "")


def check_balances(state: RestoredState, accounts: int, initial: int) -> list[Check]:
    """Sum invariant, and every balance equal to what the restored ledger says it must be."""
    checks: list[Check] = []
    expected_total = accounts * initial
    total = sum(state.balances.values())
    if len(state.balances) != accounts:
        checks.append(Check("balance_total", False,
                            f"{len(state.balances)} accounts restored, expected {accounts}"))
    else:
        checks.append(Check("balance_total", total == expected_total,
                            f"sum of balances {total}, expected {expected_total}"))
    derived = dict.fromkeys(range(accounts), initial)
    for src, dst, amount in state.ledger.values():
        if src in derived and dst in derived:
            derived[src] -= amount
            derived[dst] += amount
    wrong = sorted(a for a in range(accounts) if state.balances.get(a) != derived[a])
    detail = (f"all {accounts} balances match the restored ledger ({len(state.ledger)} rows)"
              if not wrong else
              f"{len(wrong)} account(s) disagree with the ledger: " + "; ".join(
                  f"account {a} has {state.balances.get(a)}, ledger says {derived[a]}"
                  for a in wrong[:3]))
    checks.append(Check("balances_match_ledger", not wrong, detail))
    return checks


def check_ledger(state: RestoredState, log: AckLog, pre_began: float) -> list[Check]:
    """Acknowledged-before-pre ids present, no phantoms, and a consistent cut."""
    present = set(state.ledger)
    report = compare_ledger(log, present, pre_began)
    checks = [
        Check("acked_writes_present", not report.missing,
              f"all {report.expected} writes acknowledged before pre began are present"
              if not report.missing else
              f"{len(report.missing)} of {report.expected} writes acknowledged before pre "
              f"began are missing: ids {_sample(report.missing)}"),
        Check("no_phantom_writes", not report.phantoms,
              "no ledger row that the workload never sent" if not report.phantoms else
              f"rows never sent by the workload: ids {_sample(report.phantoms)}"),
        Check("consistent_cut", not report.cut_violation_count,
              "the restored ledger is one instant of the acknowledged history"
              if not report.cut_violation_count else
              f"{report.cut_violation_count} row(s) present whose transaction started after "
              f"a missing row had been acknowledged, e.g. id {report.cut_violations[0][0]} "
              f"present but id {report.cut_violations[0][1]} missing: the disks were captured "
              f"at different instants"),
    ]
    return checks


def check_mirror(state: RestoredState) -> list[Check]:
    """MyISAM tables: the mirror never runs ahead of InnoDB, and pairs are never torn."""
    checks: list[Check] = []
    if state.mirror is not None:
        ahead = sorted(state.mirror - set(state.ledger))
        checks.append(Check(
            "myisam_mirror_behind_innodb", not ahead,
            f"all {len(state.mirror)} MyISAM mirror rows have their InnoDB ledger row"
            if not ahead else
            f"{len(ahead)} MyISAM mirror rows have no InnoDB ledger row (ids {_sample(ahead)}):"
            f" the MyISAM and InnoDB files come from different instants"))
    if state.pairs is not None:
        torn = sorted(k for k, n in state.pairs.items() if n != 2)
        checks.append(Check(
            "myisam_pairs_whole", not torn,
            f"all {len(state.pairs)} two-row MyISAM statements are whole" if not torn else
            f"{len(torn)} MyISAM statements are torn (ids {_sample(torn)})"))
    return checks
