"""The drill's results: one record per cycle, the JSON document, and the terminal table.

The JSON fields named in issue 4 are a contract: top level ``engine``, ``version``,
``backend``, ``disks``, ``mode``, ``cycles`` and ``summary``; per cycle ``verified``,
``checks``, ``freeze_window_ms``, ``write_stall_ms`` and ``recovery_seconds``. Everything else
is additional information and may grow.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from quiesce.harness.drill.verify import Check


@dataclass
class CycleResult:
    number: int
    checks: list[Check] = field(default_factory=list)
    freeze_window_ms: float | None = None
    write_stall_ms: float | None = None
    recovery_seconds: float | None = None
    snapshot_seconds: float | None = None
    consistency: str | None = None  # what `quiesce run` reported, when it ran
    acked_before_pre: int | None = None
    acked_total: int | None = None
    backup_label_installed: bool = False
    error: str | None = None  # a step of the cycle failed before verification finished
    notes: list[str] = field(default_factory=list)
    kept: dict[str, str] = field(default_factory=dict)

    @property
    def verified(self) -> bool:
        return self.error is None and bool(self.checks) and all(c.ok for c in self.checks)

    def failed_checks(self) -> list[Check]:
        return [c for c in self.checks if not c.ok]

    def to_json(self) -> dict[str, Any]:
        doc: dict[str, Any] = {
            "cycle": self.number,
            "verified": self.verified,
            "checks": {c.name: c.to_json() for c in self.checks},
            "freeze_window_ms": _round(self.freeze_window_ms),
            "write_stall_ms": _round(self.write_stall_ms),
            "recovery_seconds": _round(self.recovery_seconds, 3),
            "snapshot_seconds": _round(self.snapshot_seconds, 3),
            "consistency": self.consistency,
            "acked_before_pre": self.acked_before_pre,
            "acked_total": self.acked_total,
            "backup_label_installed": self.backup_label_installed,
            "error": self.error,
            "notes": list(self.notes),
        }
        if self.kept:
            doc["kept"] = dict(self.kept)
        return doc


@dataclass
class DrillResult:
    engine: str
    backend: str
    disks: str
    mode: str
    version: str = ""
    fstype: str | None = None
    cycles: list[CycleResult] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    kept_dir: str | None = None
    workload_errors: dict[str, int] = field(default_factory=dict)
    #: why this backend: the Docker engine and image used, or why Docker was not used
    backend_reason: str = ""

    @property
    def verified(self) -> bool:
        return bool(self.cycles) and all(c.verified for c in self.cycles)

    def summary(self) -> dict[str, Any]:
        ok = sum(1 for c in self.cycles if c.verified)
        failed: dict[str, int] = {}
        for c in self.cycles:
            for check in c.failed_checks():
                failed[check.name] = failed.get(check.name, 0) + 1
            if c.error:
                failed["error"] = failed.get("error", 0) + 1
        stalls = [c.write_stall_ms for c in self.cycles if c.write_stall_ms is not None]
        windows = [c.freeze_window_ms for c in self.cycles if c.freeze_window_ms is not None]
        recoveries = [c.recovery_seconds for c in self.cycles if c.recovery_seconds is not None]
        return {
            "verified": self.verified,
            "cycles": len(self.cycles),
            "cycles_verified": ok,
            "failed_checks": failed,
            "max_write_stall_ms": _round(max(stalls)) if stalls else None,
            "max_freeze_window_ms": _round(max(windows)) if windows else None,
            "max_recovery_seconds": _round(max(recoveries), 3) if recoveries else None,
            "exit_status": 0 if self.verified else 1,
        }

    def to_json(self) -> dict[str, Any]:
        doc: dict[str, Any] = {
            "engine": self.engine,
            "version": self.version,
            "backend": self.backend,
            "backend_reason": self.backend_reason,
            "disks": self.disks,
            "fstype": self.fstype,
            "mode": self.mode,
            "cycles": [c.to_json() for c in self.cycles],
            "summary": self.summary(),
            "notes": list(self.notes),
            "workload_errors": dict(self.workload_errors),
        }
        if self.kept_dir:
            doc["kept"] = self.kept_dir
        return doc

    def dumps(self) -> str:
        return json.dumps(self.to_json(), indent=2, sort_keys=False)


def _round(value: float | None, digits: int = 1) -> float | None:
    return None if value is None else round(value, digits)


def _fmt(value: float | None, unit: str, digits: int = 1) -> str:
    return "-" if value is None else f"{value:.{digits}f}{unit}"


def render_table(result: DrillResult) -> str:
    """The human report: a header, one row per cycle, why any cycle failed, and the verdict."""
    head = (f"quiesce drill: {result.engine} {result.version} backend={result.backend} "
            f"disks={result.disks}{'/' + result.fstype if result.fstype else ''} "
            f"mode={result.mode}")
    rows = [("cycle", "verified", "freeze window", "write stall", "recovery", "acked<pre",
             "checks")]
    for c in result.cycles:
        passed = sum(1 for x in c.checks if x.ok)
        rows.append((
            str(c.number),
            "yes" if c.verified else "NO",
            _fmt(c.freeze_window_ms, " ms"),
            _fmt(c.write_stall_ms, " ms"),
            _fmt(c.recovery_seconds, " s", 2),
            "-" if c.acked_before_pre is None else str(c.acked_before_pre),
            f"{passed}/{len(c.checks)}",
        ))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines = [head, ""]
    for r in rows:
        lines.append("  ".join(v.ljust(w) for v, w in zip(r, widths, strict=True)).rstrip())
    problems: list[str] = []
    for c in result.cycles:
        if c.error:
            problems.append(f"cycle {c.number}: {c.error}")
        for check in c.failed_checks():
            problems.append(f"cycle {c.number}: {check.name} failed: {check.detail}")
    if problems:
        lines += ["", *problems]
    for note in result.notes:
        lines.append(f"note: {note}")
    s = result.summary()
    verdict = ("all cycles verified" if result.verified else
               f"{s['cycles'] - s['cycles_verified']} of {s['cycles']} cycle(s) NOT verified")
    lines += ["", f"result: {verdict}"]
    if result.kept_dir:
        lines.append(f"kept: {result.kept_dir}")
    return "\n".join(lines)
