"""What to alert on, from the run records and the runtime dir: the monitoring side of quiesce.

Three problems, told apart (``quiesce status --check``, docs/monitoring in
docs/configuration.md):

- ``uncollected`` (exit 3): the last hold ended without 'post' (released automatically at
  ``max_hold_seconds``, lost, aborted) and no 'post' has collected it yet: the snapshot the
  caller took may not be application-consistent, and nobody was told;
- ``inconsistent`` (exit 4): the newest run record says the snapshot may NOT be
  application-consistent;
- ``stale`` (exit 5): no application-consistent hold was released within ``--max-age`` hours
  (or no record at all).

The same facts as a Prometheus node-exporter textfile (:func:`metrics_text`), written
atomically (:func:`write_metrics`) so the exporter never reads half a file.
"""

from __future__ import annotations

import calendar
import json
import os
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from quiesce.atomic import write_atomic
from quiesce.hold.records import RUNS_DIR, CatalogError, list_runs
from quiesce.timefmt import iso

UNCOLLECTED = "uncollected"
INCONSISTENT = "inconsistent"
STALE = "stale"
# --check exit statuses, in order of precedence when several problems apply.
EXIT_CODES = {UNCOLLECTED: 3, INCONSISTENT: 4, STALE: 5}
ENDED_WITHOUT_POST = ("auto-released", "lost", "aborted")


def parse_iso(text: Any) -> float | None:
    """``2026-01-31T23:59:59.123Z`` (records.iso) -> seconds since the epoch, or None."""
    if not isinstance(text, str) or not text.endswith("Z"):
        return None
    head, _, frac = text[:-1].partition(".")
    try:
        base = calendar.timegm(time.strptime(head, "%Y-%m-%dT%H:%M:%S"))
        return base + (float(f"0.{frac}") if frac.isdigit() else 0.0)
    except ValueError:
        return None


def read_records(state_dir: str) -> list[dict[str, Any]]:
    """Every readable run record, oldest first; unreadable ones are skipped (health reports
    on what it can read, it never fails on a damaged old record)."""
    out = []
    try:
        run_ids = list_runs(state_dir)
    except OSError as exc:
        raise CatalogError(f"cannot read the run records in {state_dir}: "
                           f"{exc.strerror or exc}",
                           hint="run as the user that owns the state dir (root), or pass "
                                "--state-dir") from exc
    for run_id in run_ids:
        path = os.path.join(state_dir, RUNS_DIR, f"{run_id}.json")
        try:
            with open(path, "rb") as handle:
                record = json.loads(handle.read(16 * 1024 * 1024))
        except (OSError, ValueError):
            continue
        if isinstance(record, dict):
            record.setdefault("run_id", run_id)
            out.append(record)
    return out


def hold_seconds(record: dict[str, Any]) -> float | None:
    """How long writes were blocked: from the moment everything was held to the release."""
    since, released = parse_iso(record.get("since")), parse_iso(record.get("released_at"))
    return None if since is None or released is None else max(0.0, released - since)


def quiesce_seconds(record: dict[str, Any]) -> float | None:
    """How long 'pre' took to hold everything (from the holder's start)."""
    started, since = parse_iso(record.get("started_at")), parse_iso(record.get("since"))
    return None if started is None or since is None else max(0.0, since - started)


def record_time(record: dict[str, Any]) -> float | None:
    return parse_iso(record.get("released_at")) or parse_iso(record.get("started_at"))


@dataclass
class Health:
    problems: list[str] = field(default_factory=list)
    details: dict[str, str] = field(default_factory=dict)
    last: dict[str, Any] | None = None
    last_consistent_at: float | None = None
    records: int = 0
    by_state: dict[str, int] = field(default_factory=dict)
    uncollected: dict[str, Any] | None = None
    max_age_hours: float | None = None

    @property
    def exit_code(self) -> int:
        for problem in (UNCOLLECTED, INCONSISTENT, STALE):
            if problem in self.problems:
                return EXIT_CODES[problem]
        return 0

    def as_dict(self) -> dict[str, Any]:
        last = self.last or {}
        return {
            "ok": not self.problems,
            "problems": [{"problem": p, "exit_code": EXIT_CODES[p], "message": self.details[p]}
                         for p in self.problems],
            "last_run": None if self.last is None else {
                "run_id": last.get("run_id"), "state": last.get("state"),
                "consistent": bool(last.get("consistent")),
                "released_at": last.get("released_at"),
                "hold_seconds": hold_seconds(last), "quiesce_seconds": quiesce_seconds(last)},
            "last_consistent_at": iso(self.last_consistent_at),
            "records": self.records,
            "records_by_state": dict(sorted(self.by_state.items())),
            "uncollected": self.uncollected,
            "max_age_hours": self.max_age_hours,
        }



def assess(records: Iterable[dict[str, Any]], *, uncollected: dict[str, Any] | None = None,
           max_age_hours: float | None = None, now: float | None = None) -> Health:
    """The problems the records (oldest first) and an uncollected outcome show."""
    now = time.time() if now is None else now
    health = Health(uncollected=uncollected, max_age_hours=max_age_hours)
    for record in records:
        health.records += 1
        state = str(record.get("state"))
        health.by_state[state] = health.by_state.get(state, 0) + 1
        health.last = record
        if record.get("consistent") is True:
            health.last_consistent_at = record_time(record)
    if uncollected is not None:
        health.problems.append(UNCOLLECTED)
        health.details[UNCOLLECTED] = (
            f"the last hold (run {uncollected.get('run_id')}) ended "
            f"{uncollected.get('state')} and no 'post' collected it: the snapshot taken then may "
            "NOT be application-consistent")
    last = health.last
    if last is not None and last.get("consistent") is not True:
        health.problems.append(INCONSISTENT)
        health.details[INCONSISTENT] = (
            f"the last run ({last.get('run_id')}) ended {last.get('state')}: "
            f"{last.get('message') or 'not application-consistent'}")
    if max_age_hours is not None:
        newest = health.last_consistent_at
        if newest is None or now - newest > max_age_hours * 3600:
            health.problems.append(STALE)
            health.details[STALE] = (
                f"no application-consistent hold in the last {max_age_hours:g} hours"
                + (f" (the last one was released at {iso(newest)})" if newest else
                   " (no run record says one ever was)"))
    return health


def _label(value: Any) -> str:
    return str(value).replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def metrics_text(health: Health, now: float | None = None) -> str:
    """The Prometheus text exposition of ``health`` (node-exporter textfile collector)."""
    now = time.time() if now is None else now
    lines: list[str] = []

    def gauge(name: str, help_text: str, samples: list[tuple[str, float]]) -> None:
        lines.append(f"# HELP {name} {help_text}")
        lines.append(f"# TYPE {name} gauge")
        for labels, value in samples:
            lines.append(f"{name}{labels} {value:.6g}" if not float(value).is_integer()
                         else f"{name}{labels} {int(value)}")

    last = health.last
    gauge("quiesce_ok", "1 when no problem is found (no uncollected, inconsistent or stale "
          "backup)", [("", 0 if health.problems else 1)])
    gauge("quiesce_problem", "1 for each problem found", [
        (f'{{problem="{p}"}}', 1 if p in health.problems else 0)
        for p in (UNCOLLECTED, INCONSISTENT, STALE)])
    gauge("quiesce_uncollected", "1 when the last hold ended without 'post' and nobody "
          "collected it", [("", 1 if health.uncollected else 0)])
    if last is not None:
        gauge("quiesce_last_run_consistent", "1 when the newest run record is "
              "application-consistent", [("", 1 if last.get("consistent") is True else 0)])
        when = record_time(last)
        if when is not None:
            gauge("quiesce_last_run_timestamp_seconds", "when the newest recorded hold ended",
                  [("", when)])
        held = hold_seconds(last)
        if held is not None:
            gauge("quiesce_last_hold_seconds", "how long writes were blocked in the newest "
                  "recorded hold (held until released)", [("", held)])
        taken = quiesce_seconds(last)
        if taken is not None:
            gauge("quiesce_last_quiesce_seconds", "how long the newest hold took to hold every "
                  "instance", [("", taken)])
        per_instance = [(f'{{plugin="{_label(i.get("plugin"))}",name="{_label(i.get("name"))}"}}',
                         float(i["held_seconds"]))
                        for i in last.get("instances") or []
                        if isinstance(i, dict) and isinstance(i.get("held_seconds"), int | float)]
        if per_instance:
            gauge("quiesce_last_instance_held_seconds", "how long each instance was held in "
                  "the newest recorded hold", per_instance)
    if health.last_consistent_at is not None:
        gauge("quiesce_last_consistent_timestamp_seconds", "when the newest "
              "application-consistent hold was released", [("", health.last_consistent_at)])
        gauge("quiesce_last_consistent_age_seconds", "seconds since then",
              [("", max(0.0, now - health.last_consistent_at))])
    gauge("quiesce_records", "run records kept in the state dir, by final state",
          [(f'{{state="{_label(s)}"}}', n) for s, n in sorted(health.by_state.items())]
          or [('{state="none"}', 0)])
    gauge("quiesce_auto_released_records", "kept run records whose hold was released "
          "automatically (max_hold_seconds, a signal) instead of by 'post'",
          [("", health.by_state.get("auto-released", 0))])
    return "\n".join(lines) + "\n"


def write_metrics(path: str, text: str) -> None:
    """Replace ``path`` atomically, world-readable (0644) for the exporter."""
    write_atomic(path, text.encode("utf-8"), 0o644)
