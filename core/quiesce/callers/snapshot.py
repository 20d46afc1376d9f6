"""Snapshot providers: the step between freeze and thaw.

A provider is small on purpose: ``problems()`` says before anything runs whether it can work
(so ``quiesce check`` and the runner's validation find a typo in the command, not the freeze
window), and ``take(run_id, mounts, timeout)`` takes the snapshot within ``timeout`` seconds
and returns a :class:`SnapshotResult`. LVM, btrfs, ZFS or image-copy providers only need those
two methods.

``take`` runs while filesystems are frozen: it must not log to, open, or write files (it may
be on a frozen filesystem) and must return by its timeout. Everything it wants to say goes
into the result, which the runner logs after the thaw.
"""

from __future__ import annotations

import os
import shlex
import shutil
import time
from abc import ABC, abstractmethod
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field

from quiesce.errors import Problem, ScriptError

OUTPUT_LINES = 200  # lines of the command's output kept (in memory) for the report


@dataclass
class SnapshotResult:
    taken: bool
    provider: str
    detail: str = ""
    exit_code: int | None = None
    timed_out: bool = False
    duration_ms: float = 0.0
    output: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, object]:
        return {
            "provider": self.provider,
            "taken": self.taken,
            "detail": self.detail,
            "exit_code": self.exit_code,
            "timed_out": self.timed_out,
            "duration_ms": round(self.duration_ms, 3),
            "output": list(self.output),
        }


class SnapshotProvider(ABC):
    """Takes the snapshot while the filesystems are frozen."""

    name: str = "provider"

    def problems(self) -> list[Problem]:
        """What stops this provider from working, found before anything runs."""
        return []

    def describe(self) -> str:
        return self.name

    @abstractmethod
    def take(self, run_id: str, mounts: Sequence[str], timeout: float) -> SnapshotResult:
        """Take the snapshot of ``mounts`` (frozen, in freeze order) within ``timeout`` s."""


class NoopSnapshot(SnapshotProvider):
    """No snapshot here: an outside orchestrator (Azure, a hypervisor) snapshots meanwhile."""

    name = "external"

    def describe(self) -> str:
        return "none (an outside orchestrator takes the snapshot)"

    def take(self, run_id: str, mounts: Sequence[str], timeout: float) -> SnapshotResult:
        return SnapshotResult(taken=True, provider=self.name,
                              detail="no --snapshot-command: the snapshot is taken outside")


class CommandSnapshot(SnapshotProvider):
    """Runs a command: split like a shell splits words, never run through a shell.

    The command gets ``QUIESCE_RUN_ID`` and ``QUIESCE_FROZEN_MOUNTS`` (newline-separated) in
    its environment, stdin /dev/null, cwd ``/``, its own session; its output is kept in memory
    only. Exit status 0 means the snapshot was taken. At the timeout its process group is
    killed and the snapshot counts as not taken.
    """

    name = "command"

    def __init__(self, command: str, *, kill_grace: float = 0.5) -> None:
        self.command = command
        self.kill_grace = kill_grace
        self.argv: list[str] = []
        self._problems: list[Problem] = []
        self._resolve()

    def _resolve(self) -> None:
        where = "--snapshot-command"
        try:
            argv = shlex.split(self.command)
        except ValueError as exc:
            self._problems.append(Problem(where, f"cannot be split into words: {exc}",
                                          "balance the quotes in the command"))
            return
        if not argv:
            self._problems.append(Problem(where, "is empty",
                                          "give the command to run, or leave the option out"))
            return
        exe = argv[0]
        # Resolved now, before any freeze: no PATH search while filesystems are frozen.
        found = exe if "/" in exe else shutil.which(exe)
        if found is None:
            self._problems.append(Problem(where, f"{exe!r} is not found on PATH",
                                          "give the full path of the program"))
            return
        found = os.path.abspath(found)
        if not os.path.isfile(found) or not os.access(found, os.X_OK):
            self._problems.append(Problem(where, f"{found} is not an executable file",
                                          f"check the path, or chmod +x {found}"))
            return
        self.argv = [found, *argv[1:]]

    def problems(self) -> list[Problem]:
        return list(self._problems)

    def describe(self) -> str:
        return f"command {shlex.join(self.argv or [self.command])}"

    def take(self, run_id: str, mounts: Sequence[str], timeout: float) -> SnapshotResult:
        from quiesce.callers.scripts import run_script  # imported by the runner before any freeze

        if self._problems:
            return SnapshotResult(taken=False, provider=self.name,
                                  detail="; ".join(p.message for p in self._problems))
        env = dict(os.environ)
        env["QUIESCE_RUN_ID"] = run_id
        env["QUIESCE_FROZEN_MOUNTS"] = "\n".join(mounts)
        lines: deque[str] = deque(maxlen=OUTPUT_LINES)
        t0 = time.monotonic()
        try:
            result = run_script("snapshot", self.argv[0], self.argv[1:], timeout=timeout,
                                env=env, grace=self.kill_grace,
                                sink=lambda stream, line: lines.append(f"{stream}: {line}"))
        except ScriptError as exc:
            return SnapshotResult(taken=False, provider=self.name, detail=str(exc),
                                  duration_ms=(time.monotonic() - t0) * 1000)
        duration = (time.monotonic() - t0) * 1000
        attempt = result.attempts[-1] if result.attempts else None
        if attempt is None:
            detail = "no time was left in the freeze window to run the snapshot command"
        elif attempt.timed_out:
            detail = f"did not finish within {timeout:.1f} s (the freeze window's budget); " \
                     "its process group was killed"
        elif attempt.signal:
            detail = f"was killed by signal {attempt.signal}"
        elif attempt.exit_code:
            detail = f"exited with status {attempt.exit_code}"
        else:
            detail = "exited with status 0"
        return SnapshotResult(
            taken=result.ok, provider=self.name, detail=detail,
            exit_code=attempt.exit_code if attempt else None,
            timed_out=bool(attempt and attempt.timed_out), duration_ms=duration,
            output=list(lines))


def make_provider(command: str | None) -> SnapshotProvider:
    return CommandSnapshot(command) if command is not None else NoopSnapshot()
