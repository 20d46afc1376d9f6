"""The result of one ``quiesce run``: the status JSON (a public contract) and the human report.

Status JSON fields (see docs/azure-compatibility.md and issue 2): ``run_id``, ``consistency``
(``application``/``filesystem``/``crash``/``none``), ``snapshot_taken``, ``exit_code``,
``errors`` (``code``, ``number``, ``phase``, ``message``, ``hint``), ``phases`` (``name``,
``status``, ``start``, ``duration`` (seconds), ``duration_ms``, ``attempts``, ...), ``freeze``
(``enabled``, ``mounts``, ``window_ms``, ...) and ``snapshot``. The status file is replaced
atomically: written to a temporary file in the same directory, fsynced, renamed over the target,
directory fsynced.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from typing import Any

from quiesce.atomic import write_atomic
from quiesce.errors import AzureCode, Problem
from quiesce.timefmt import iso

SCHEMA_VERSION = 1

# Codes for errors that Azure has no string for (number null in the JSON).
VALIDATION_FAILED = "ValidationFailed"
FREEZE_FAILED = "FreezeFailed"
THAW_FAILED = "ThawFailed"
WATCHDOG_THAWED = "WatchdogThawed"
SNAPSHOT_FAILED = "SnapshotFailed"
HOLD_INCOMPLETE = "HoldIncomplete"
INTERRUPTED = "Interrupted"
INTERNAL_ERROR = "InternalError"


@dataclass(frozen=True)
class RunError:
    code: str
    number: int | None
    phase: str
    message: str
    hint: str = ""

    @classmethod
    def azure(cls, code: AzureCode, phase: str, message: str, hint: str = "") -> RunError:
        return cls(code.text, code.number, phase, message, hint)

    @classmethod
    def from_problem(cls, problem: Problem, phase: str, default_code: str) -> RunError:
        where = f"{problem.where}: " if problem.where else ""
        if problem.code is not None:
            return cls(problem.code.text, problem.code.number, phase,
                       f"{where}{problem.message}", problem.hint)
        return cls(default_code, None, phase, f"{where}{problem.message}", problem.hint)

    def as_dict(self) -> dict[str, Any]:
        return {"code": self.code, "number": self.number, "phase": self.phase,
                "message": self.message, "hint": self.hint}


@dataclass
class PhaseRecord:
    name: str
    status: str = "skipped"  # ok | failed | timeout | skipped | disabled | interrupted
    start: float | None = None  # wall clock
    duration_ms: float | None = None
    attempts: int = 0
    detail: str = ""
    extra: dict[str, Any] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "name": self.name,
            "status": self.status,
            "start": iso(self.start),
            # ``duration`` (seconds) is what issue 2 names; ``duration_ms`` came first and stays.
            "duration": None if self.duration_ms is None else round(self.duration_ms / 1000, 6),
            "duration_ms": None if self.duration_ms is None else round(self.duration_ms, 3),
            "attempts": self.attempts,
            "detail": self.detail,
        }
        out.update(self.extra)
        return out


@dataclass
class RunStatus:
    run_id: str
    config: str
    started_at: float
    finished_at: float | None = None
    consistency: str = "none"
    snapshot_taken: bool = False
    errors: list[RunError] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    phases: dict[str, PhaseRecord] = field(default_factory=dict)
    freeze: dict[str, Any] = field(default_factory=dict)
    snapshot: dict[str, Any] = field(default_factory=dict)
    #: The hold a quiesce post-script releases: released by the runner at the thaw, or not.
    hold: dict[str, Any] = field(default_factory=dict)

    def phase(self, name: str) -> PhaseRecord:
        if name not in self.phases:
            self.phases[name] = PhaseRecord(name)
        return self.phases[name]

    @property
    def exit_code(self) -> int:
        """0: snapshot taken, application-consistent, no error; 1: taken but degraded or an
        error (e.g. the post-script); 2: no snapshot."""
        if not self.snapshot_taken:
            return 2
        if self.consistency == "application" and not self.errors:
            return 0
        return 1

    def as_dict(self) -> dict[str, Any]:
        return {
            "schema": SCHEMA_VERSION,
            "run_id": self.run_id,
            "config": self.config,
            "started_at": iso(self.started_at),
            "finished_at": iso(self.finished_at),
            "consistency": self.consistency,
            "snapshot_taken": self.snapshot_taken,
            "exit_code": self.exit_code,
            "errors": [e.as_dict() for e in self.errors],
            "notes": list(self.notes),
            "phases": [p.as_dict() for p in self.phases.values()],
            "freeze": dict(self.freeze),
            "snapshot": dict(self.snapshot),
            "hold": dict(self.hold),
        }

    def to_json(self) -> str:
        return json.dumps(self.as_dict(), indent=2, ensure_ascii=False) + "\n"


def write_atomically(path: str | os.PathLike[str], text: str, mode: int = 0o600) -> None:
    """Replace ``path`` with ``text`` so a reader sees the old or the new file, never half."""
    if not isinstance(text, str):
        raise TypeError(f"status text must be str, not {type(text).__name__}")
    write_atomic(path, text.encode("utf-8"), mode)


_STATUS_WORD = {"ok": "ok", "failed": "FAILED", "timeout": "TIMEOUT", "skipped": "skipped",
                "disabled": "off", "interrupted": "INTERRUPTED"}


def human_report(status: RunStatus) -> str:
    """A short report: one line per phase, then each error with what to do."""
    lines = [f"quiesce run {status.run_id}"]
    for record in status.phases.values():
        word = _STATUS_WORD.get(record.status, record.status)
        took = f" {record.duration_ms / 1000:.2f}s" if record.duration_ms is not None else ""
        tries = f" {record.attempts} attempt(s)" if record.attempts > 1 else ""
        detail = f" - {record.detail}" if record.detail else ""
        lines.append(f"  {record.name:<9} {word:<8}{took}{tries}{detail}")
    taken = "snapshot taken" if status.snapshot_taken else "NO snapshot"
    lines.append(f"result: {taken}, consistency {status.consistency}, exit {status.exit_code}")
    for note in status.notes:
        lines.append(f"note: {note}")
    for error in status.errors:
        number = f" ({error.number})" if error.number is not None else ""
        lines.append(f"error [{error.phase}] {error.code}{number}: {error.message}")
        if error.hint:
            lines.append(f"  fix: {error.hint}")
    return "\n".join(lines) + "\n"
