"""An emulated Azure VM Backup script runner: a foreign caller of the installed wrappers.

Written from the documented behaviour of the VMSnapshotLinux extension
(docs/azure-compatibility.md, and the notes on what the real extension does), including the
parts where it is careless, because those are what quiesce must survive:

- A script runs as ``sh <script> <params...>`` (the shebang is ignored, params are argv
  entries, never shell-split), from a thread, stdout and stderr piped and not read while it
  runs.
- The host sleeps ``ScriptsExecutionPollTimeSeconds`` (default 3) before each look at the
  thread, so every phase lasts at least one poll.
- At a poll whose elapsed time (since the phase started) exceeds ``timeoutInSeconds`` (capped
  at 1800) the phase is declared timed out: Pre-ScriptTimeout (308) / Post-ScriptTimeout
  (309). The timeout is checked before completion at each poll, as the stricter of the two
  possible orders: a script that finished after the limit, between two polls, is still late.
- A timed-out script is never killed: it keeps running while the snapshot and the post-script
  go on. :meth:`Backup.wait_scripts` lets a test wait for it afterwards.
- Retries never re-run a script: the thread re-polls the finished process ``retries`` times
  (so a failed script is reported failed with ``attempts == retries + 1`` and ran once).
- After the pre phase, whatever its result, comes the "snapshot" (the emulator records its
  wall-clock and monotonic start and end; an optional callable takes a real one, e.g. a
  ``cp -a`` of a throwaway data directory), then the post-script, which runs even after a
  pre-script failure or timeout and even when no snapshot was taken.
- With ``continueBackupOnFailure`` false, or ``fsFreezeEnabled`` false, a failed or timed-out
  pre-script means no snapshot; otherwise the snapshot is taken and is only
  file-system consistent.

Not emulated: freezing (the emulator never freezes anything; ``fsFreezeEnabled`` only decides
the consistency level), the permission checks and the plugin-host file. The emulator reads a
script's output only after the script exited (the real extension never reads it), so a test
can look at what ``quiesce pre``/``post`` printed.
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

TIMEOUT_CAP = 1800
DEFAULT_POLL_SECONDS = 3
SHELL = "/bin/sh"

PRE_FAILED, POST_FAILED = 300, 301
PRE_TIMEOUT, POST_TIMEOUT = 308, 309
ERROR_NAMES = {
    PRE_FAILED: "Pre-ScriptExecutionFailed",
    POST_FAILED: "Post-ScriptExecutionFailed",
    PRE_TIMEOUT: "Pre-ScriptTimeout",
    POST_TIMEOUT: "Post-ScriptTimeout",
}


@dataclass(frozen=True)
class RunnerConfig:
    """The keys of VMSnapshotScriptPluginConfig.json the runner acts on."""

    pre_script: str
    post_script: str
    pre_params: tuple[str, ...] = ()
    post_params: tuple[str, ...] = ()
    pre_retries: int = 0
    post_retries: int = 0
    timeout: float = 30
    poll: float = DEFAULT_POLL_SECONDS
    continue_on_failure: bool = True
    fs_freeze: bool = True

    @classmethod
    def from_document(cls, doc: Mapping[str, Any]) -> RunnerConfig:
        """From the parsed JSON, with the extension's defaults and its silent 1800 s cap."""
        return cls(
            pre_script=str(doc["preScriptLocation"]),
            post_script=str(doc["postScriptLocation"]),
            pre_params=tuple(str(p) for p in doc.get("preScriptParams") or ()),
            post_params=tuple(str(p) for p in doc.get("postScriptParams") or ()),
            pre_retries=int(doc.get("preScriptNoOfRetries", 0)),
            post_retries=int(doc.get("postScriptNoOfRetries", 0)),
            timeout=min(doc.get("timeoutInSeconds", 30), TIMEOUT_CAP),
            poll=doc.get("ScriptsExecutionPollTimeSeconds") or DEFAULT_POLL_SECONDS,
            continue_on_failure=bool(doc.get("continueBackupOnFailure", True)),
            fs_freeze=bool(doc.get("fsFreezeEnabled", True)),
        )

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> RunnerConfig:
        return cls.from_document(json.loads(Path(path).read_text()))


class ScriptRun:
    """One script started by the runner's thread; it is never killed by the runner."""

    def __init__(self, argv: list[str], retries: int, env: Mapping[str, str] | None) -> None:
        self.argv = argv
        self.retries = retries
        self.env = dict(env) if env is not None else None
        self.process: subprocess.Popen[bytes] | None = None
        self.launch_error: OSError | None = None
        self.exit_code: int | None = None  # what the thread saw, after its re-polls
        self.attempts = 0  # looks at the finished process (1 + retries when it failed)
        self.started_mono: float | None = None
        self.exited_mono: float | None = None
        self.stdout = b""
        self.stderr = b""
        self.done = threading.Event()  # the thread has its final answer
        self._collected = False
        self.thread = threading.Thread(target=self._run, daemon=True,
                                       name=f"azure-script-{os.path.basename(argv[1])}")

    def start(self) -> ScriptRun:
        self.thread.start()
        return self

    def _run(self) -> None:
        try:
            self.started_mono = time.monotonic()
            self.process = subprocess.Popen(self.argv, stdin=subprocess.DEVNULL,
                                            stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                            env=self.env, cwd="/")
        except OSError as exc:
            self.launch_error = exc
            self.exit_code = 127
            self.attempts = 1
            self.done.set()
            return
        code = self.process.wait()
        self.exited_mono = time.monotonic()
        self.attempts = 1
        # The extension's retry loop: it looks at the same finished process again, no re-run.
        for _ in range(self.retries):
            if code == 0:
                break
            self.attempts += 1
            code = self.process.poll()  # type: ignore[assignment]
        self.exit_code = code
        self.done.set()

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def wait(self, timeout: float) -> int | None:
        """Until the script exited (the runner never kills it), then collect its output.
        Returns the exit code, or None if it still runs after ``timeout`` seconds."""
        self.done.wait(timeout)
        if not self.done.is_set():
            return None
        self._collect()
        return self.exit_code

    def _collect(self) -> None:
        """Read what the script left in its pipes; never waits for a descendant that may
        still hold them open."""
        if self._collected or self.process is None:
            return
        self._collected = True
        for name in ("stdout", "stderr"):
            stream = getattr(self.process, name)
            if stream is None:
                continue
            chunks: list[bytes] = []
            with contextlib.suppress(OSError):
                os.set_blocking(stream.fileno(), False)
                while True:
                    try:
                        chunk = os.read(stream.fileno(), 65536)
                    except BlockingIOError:
                        break
                    if not chunk:
                        break
                    chunks.append(chunk)
            stream.close()
            setattr(self, name, b"".join(chunks))

    def output(self) -> str:
        return (self.stdout + self.stderr).decode(errors="replace")

    def kill(self) -> None:
        """Test cleanup only (never something the runner does): SIGKILL the script."""
        if self.running:
            with contextlib.suppress(OSError):
                self.process.kill()  # type: ignore[union-attr]
        if self.process is not None:
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.process.wait(10)


@dataclass
class PhaseResult:
    """What the runner concluded about one script phase."""

    phase: str  # "pre" or "post"
    status: str  # "success", "failed" or "timeout"
    code: int | None  # Azure's number: None on success, 300/301, 308/309
    polls: int  # looks the host took
    elapsed: float  # seconds from the phase start to the deciding poll
    run: ScriptRun
    started_mono: float = 0.0
    decided_mono: float = 0.0

    @property
    def error(self) -> str | None:
        return ERROR_NAMES.get(self.code) if self.code is not None else None

    def describe(self) -> str:
        run = self.run
        return (f"{self.phase}: {self.status} ({self.error or 'ok'}) after {self.polls} "
                f"poll(s); script exit {run.exit_code}, attempts {run.attempts}, "
                f"output: {run.output()!r}")


@dataclass
class Snapshot:
    """The snapshot step: when it began and ended, and what the runner would report."""

    taken: bool
    consistency: str  # "application", "filesystem" or "none"
    started_wall: float | None = None
    started_mono: float | None = None
    ended_wall: float | None = None
    ended_mono: float | None = None
    error: BaseException | None = None


@dataclass
class Backup:
    """One emulated backup: pre phase, snapshot, post phase, in that order."""

    config: RunnerConfig
    pre: PhaseResult
    snapshot: Snapshot
    post: PhaseResult
    events: list[tuple[str, float]] = field(default_factory=list)  # (what, monotonic)

    def wait_scripts(self, timeout: float = 60.0) -> None:
        """Until both scripts exited (timed-out scripts keep running after the backup);
        AssertionError naming the one still running after ``timeout`` seconds."""
        give_up = time.monotonic() + timeout
        for phase in (self.pre, self.post):
            if phase.run.wait(max(0.0, give_up - time.monotonic())) is None:
                raise AssertionError(f"the {phase.phase}-script still runs {timeout:g} s after "
                                     f"the backup: {phase.run.argv}")

    def kill_scripts(self) -> None:
        """Test cleanup only: a script still running is killed."""
        for phase in (self.pre, self.post):
            phase.run.kill()
            phase.run.wait(10)

    def describe(self) -> str:
        snap = self.snapshot
        return (f"{self.pre.describe()}\nsnapshot: taken={snap.taken} ({snap.consistency})\n"
                f"{self.post.describe()}")


class AzureEmulator:
    """Runs backups the way the extension does, from the Azure JSON config at ``config_path``
    (read at each backup, as the extension reads it at each backup)."""

    def __init__(self, config_path: str | os.PathLike[str], *,
                 env: Mapping[str, str] | None = None,
                 snapshot: Callable[[], None] | None = None,
                 shell: str = SHELL) -> None:
        self.config_path = Path(config_path)
        self.env = env
        self.take_snapshot = snapshot
        self.shell = shell

    def backup(self) -> Backup:
        config = RunnerConfig.load(self.config_path)
        events: list[tuple[str, float]] = []
        pre = self._phase("pre", config, events)
        snapshot = self._snapshot(config, pre, events)
        # The post-script runs whatever happened before: failure, timeout, no snapshot.
        post = self._phase("post", config, events)
        return Backup(config=config, pre=pre, snapshot=snapshot, post=post, events=events)

    def _phase(self, phase: str, config: RunnerConfig,
               events: list[tuple[str, float]]) -> PhaseResult:
        if phase == "pre":
            script, params, retries = config.pre_script, config.pre_params, config.pre_retries
        else:
            script, params, retries = (config.post_script, config.post_params,
                                       config.post_retries)
        start = time.monotonic()
        events.append((f"{phase}-start", start))
        run = ScriptRun([self.shell, script, *params], retries, self.env).start()
        polls = 0
        while True:
            time.sleep(config.poll)
            polls += 1
            now = time.monotonic()
            elapsed = now - start
            if elapsed > config.timeout:
                status, code = "timeout", (PRE_TIMEOUT if phase == "pre" else POST_TIMEOUT)
                break
            if run.done.is_set():
                if run.exit_code == 0:
                    status, code = "success", None
                else:
                    status, code = "failed", (PRE_FAILED if phase == "pre" else POST_FAILED)
                break
        events.append((f"{phase}-{status}", now))
        if run.done.is_set():
            run.wait(0)
        return PhaseResult(phase=phase, status=status, code=code, polls=polls,
                           elapsed=elapsed, run=run, started_mono=start, decided_mono=now)

    def _snapshot(self, config: RunnerConfig, pre: PhaseResult,
                  events: list[tuple[str, float]]) -> Snapshot:
        if pre.status == "success":
            consistency = "application"
        elif config.continue_on_failure and config.fs_freeze:
            consistency = "filesystem"
        else:
            return Snapshot(taken=False, consistency="none")
        snap = Snapshot(taken=True, consistency=consistency,
                        started_wall=time.time(), started_mono=time.monotonic())
        events.append(("snapshot-start", snap.started_mono))  # type: ignore[arg-type]
        if self.take_snapshot is not None:
            try:
                self.take_snapshot()
            except Exception as exc:  # the test asserts on it; the backup goes on to post
                snap.error = exc
                snap.taken = False
                snap.consistency = "none"
        snap.ended_mono = time.monotonic()
        snap.ended_wall = time.time()
        events.append(("snapshot-end", snap.ended_mono))
        return snap
