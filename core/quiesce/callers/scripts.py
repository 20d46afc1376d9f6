"""Run one pre/post script phase: argv, own session, streamed output, one deadline, real retries.

What the Azure extension gets wrong and this module does instead:

* the script is executed directly (its shebang is honoured), through the descriptor that
  :mod:`quiesce.security` checked (``/proc/self/fd/N``), with the params as argv entries exactly
  as listed: empty strings kept, nothing shell-interpreted;
* stdin is /dev/null, cwd is ``/``, the script leads a new session (so its process group holds
  everything it starts that does not deliberately leave);
* stdout and stderr are read as they come, in large reads at pipe speed, so any amount of
  output is safe: per stream and attempt only a bounded head (:data:`HEAD_BYTES`, handed line
  by line to a sink as it arrives), a bounded tail (:data:`TAIL_BYTES`, handed to the sink when
  the attempt ends, after a line saying how many bytes were left out) and the byte count are
  kept; past the head a read costs no per-line work and no memory;
* ``timeout`` is the deadline of the whole phase, covering every attempt; at the deadline the
  process group gets SIGTERM, then SIGKILL after a short grace, and is reaped;
* a failed attempt is really run again, up to ``retries`` times, while the deadline allows.

A ``quiesce pre`` script leaves a holder daemon running in its *own* session, and that daemon
may still hold the script's stdout. So the end of an attempt is the exit of the script's main
process (watched through a pidfd), not EOF on the pipes: after the exit, whatever is already
readable is drained for a short, bounded time and the pipes are closed.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import selectors
import shutil
import signal
import subprocess
import time
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from quiesce.deadline import Deadline
from quiesce.errors import AzureCode, ScriptError

#: Called with (stream: "stdout" | "stderr", one line without its newline): the head's lines as
#: they arrive, then, when the attempt ends, a note on any bytes left out and the tail's lines.
Sink = Callable[[str, str], None]

DEFAULT_GRACE = 3.0  # seconds between SIGTERM and SIGKILL at the deadline
DRAIN_IDLE = 0.05  # after the main process exits: stop when nothing arrives for this long
DRAIN_MAX = 0.5  # ... and in any case after this long
MAX_LINE = 64 * 1024  # a longer line is passed on in pieces of this size
TAIL_LINES = 20
#: Per stream and attempt: the first bytes, kept and handed to the sink line by line as they come
HEAD_BYTES = 64 * 1024
#: Per stream and attempt: the last bytes after the head, handed to the sink when the attempt ends
TAIL_BYTES = 64 * 1024
#: One read takes whatever the pipe holds, up to this much
READ_SIZE = 1024 * 1024
#: Pipe capacity asked for (F_SETPIPE_SZ): fewer wake-ups for a chatty script; best effort
PIPE_SIZE = 1024 * 1024
#: PATH for scripts when the runner has none
DEFAULT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


@dataclass(frozen=True)
class StreamOutput:
    """What one attempt wrote to one stream: its size and the bounded part kept of it."""

    stream: str  # "stdout" | "stderr"
    bytes: int  # everything the script wrote, kept or not
    head: str  # the first HEAD_BYTES (UTF-8, invalid bytes replaced)
    tail: str  # the last TAIL_BYTES after the head
    omitted_bytes: int  # bytes between head and tail that were counted, not kept

    def as_dict(self) -> dict[str, Any]:
        return {"bytes": self.bytes, "head": self.head, "tail": self.tail,
                "omitted_bytes": self.omitted_bytes}


@dataclass(frozen=True)
class Attempt:
    """One execution of the script."""

    number: int
    started_at: float  # wall clock (time.time()), for reports
    duration_s: float
    exit_code: int | None  # None when killed by a signal
    signal: int | None = None
    timed_out: bool = False
    output: tuple[StreamOutput, ...] = ()

    @property
    def ok(self) -> bool:
        return self.exit_code == 0 and not self.timed_out

    def output_bytes(self) -> dict[str, int]:
        """Bytes written to each stream during this attempt."""
        return {o.stream: o.bytes for o in self.output}


@dataclass
class ScriptResult:
    """The outcome of a phase: every attempt, and the last lines of output for error messages."""

    phase: str
    path: str
    attempts: list[Attempt] = field(default_factory=list)
    started_at: float = 0.0
    duration_s: float = 0.0
    output_tail: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return bool(self.attempts) and self.attempts[-1].ok

    @property
    def timed_out(self) -> bool:
        return any(a.timed_out for a in self.attempts)

    @property
    def exit_codes(self) -> list[int | None]:
        return [a.exit_code for a in self.attempts]

    def output_json(self) -> dict[str, Any]:
        """The last attempt's output per stream (bytes, head, tail, omitted_bytes), for the
        status JSON; empty when nothing ran."""
        if not self.attempts:
            return {}
        return {o.stream: o.as_dict() for o in self.attempts[-1].output}

    @property
    def code(self) -> AzureCode | None:
        """The Azure error code of the phase's outcome, None on success."""
        if self.ok:
            return None
        return AzureCode.for_phase(self.phase, "timeout" if self.timed_out else "failed")

    def describe(self) -> str:
        """One sentence on what went wrong (empty on success)."""
        if self.ok:
            return ""
        n = len(self.attempts)
        if n == 0:
            return f"{self.phase}-script was not run: no time was left before the deadline"
        tries = f"{n} attempt{'s' if n != 1 else ''}"
        if self.timed_out:
            return f"{self.phase}-script did not finish within the phase deadline ({tries}); " \
                   "its process group was killed"
        last = self.attempts[-1]
        how = f"was killed by signal {last.signal}" if last.signal else \
            f"exited with status {last.exit_code}"
        return f"{self.phase}-script {how} ({tries}, exit statuses {self.exit_codes})"


def has_interpreter_line(fd: int) -> bool:
    """True if the file starts with ``#!`` or is an ELF binary (something execve can run)."""
    head = os.pread(fd, 4, 0)
    return head.startswith(b"#!") or head == b"\x7fELF"


def _shebang_words(fd: int) -> list[str]:
    head = os.pread(fd, 256, 0)
    if not head.startswith(b"#!"):
        return []
    return head[2:].split(b"\n", 1)[0].decode("utf-8", "replace").split()


def interpreter_of(fd: int) -> str | None:
    """The program a ``#!`` line names (after ``env``, its argument), ``"ELF"`` for a binary,
    None when there is neither."""
    if os.pread(fd, 4, 0) == b"\x7fELF":
        return "ELF"
    words = _shebang_words(fd)
    if not words:
        return None
    if os.path.basename(words[0]) == "env":
        rest = [w for w in words[1:] if not w.startswith("-")]
        return rest[0] if rest else words[0]
    return words[0]


def interpreter_problem(fd: int, path: str,
                        search_path: str | None = None) -> tuple[str, str] | None:
    """Why execve could not start this script, as (message, hint); None when it can.

    Found while validating, so that a typo in the ``#!`` line stops the run before anything
    runs instead of failing the phase. ``search_path`` is the PATH ``env`` will search
    (default: this process's, as the scripts inherit it).
    """
    if not has_interpreter_line(fd):
        return (f"{path}: has no interpreter line ('#!')",
                f"add '#!/bin/sh' (or the interpreter it is written for) as the first line of "
                f"{path}")
    if os.pread(fd, 4, 0) == b"\x7fELF":
        return None
    words = _shebang_words(fd)
    if not words:
        return (f"{path}: its '#!' line names no interpreter", f"write e.g. '#!/bin/sh' as the "
                f"first line of {path}")
    program = words[0]
    if not os.path.isabs(program):
        return (f"{path}: interpreter {program!r} is not an absolute path",
                f"write its full path, e.g. '#!/usr/bin/{os.path.basename(program)}'")
    if not (os.path.isfile(program) and os.access(program, os.X_OK)):
        return (f"{path}: interpreter {program} does not exist or is not executable",
                f"install it, or fix the '#!' line of {path}")
    programs = [program]
    if os.path.basename(program) == "env":
        rest = [w for w in words[1:] if not w.startswith("-")]
        search = search_path or os.environ.get("PATH") or DEFAULT_PATH
        if rest:
            found = rest[0] if "/" in rest[0] else shutil.which(rest[0], path=search)
            if found is None:
                return (f"{path}: '#!{' '.join(words)}' needs {rest[0]} on PATH, and it is "
                        f"not in {search}", f"install {rest[0]}, or write its full path in the "
                        "'#!' line")
            programs.append(found)
    from quiesce.security import executable_problems

    for candidate in programs:
        unsafe = executable_problems(candidate)
        if unsafe:
            first = unsafe[0]
            from quiesce.security import user_name

            actor = "root" if os.geteuid() == 0 else user_name(os.geteuid())
            return (f"{path}: its interpreter is not safe to run as {actor}: {first.where}: "
                    f"{first.message}", first.hint)
    return None


def azure_shell_note(path: str, fd: int) -> str | None:
    """Why the script may behave differently under Azure's extension, which ignores the
    shebang and runs ``sh <script>``; None for a plain ``sh`` script."""
    interpreter = interpreter_of(fd)
    if interpreter is None or os.path.basename(interpreter) == "sh":
        return None
    what = "a binary" if interpreter == "ELF" else f"written for {interpreter}"
    return (f"{path} is {what}: quiesce runs it as such, but Azure's own extension ignores the "
            "shebang and runs `sh <script>`; under Azure it needs to work with sh too (or be "
            "a sh wrapper that execs it)")


class _LineSplitter:
    def __init__(self, stream: str, sink: Sink, tail: deque[str]) -> None:
        self.stream = stream
        self.sink = sink
        self.tail = tail
        self.buffer = bytearray()

    def feed(self, data: bytes) -> None:
        self.buffer += data
        while True:
            cut = self.buffer.find(b"\n")
            if cut < 0:
                if len(self.buffer) >= MAX_LINE:
                    self._emit(bytes(self.buffer[:MAX_LINE]))
                    del self.buffer[:MAX_LINE]
                    continue
                return
            line = bytes(self.buffer[:cut])
            del self.buffer[: cut + 1]
            self._emit(line)

    def close(self) -> None:
        if self.buffer:
            self._emit(bytes(self.buffer))
            self.buffer.clear()

    def _emit(self, raw: bytes) -> None:
        self.note(raw.decode("utf-8", errors="replace").rstrip("\r"))

    def note(self, line: str) -> None:
        """Hand one line (of output, or quiesce's own note about it) to the sink."""
        self.tail.append(f"{self.stream}: {line}")
        self.sink(self.stream, line)


class _Capture:
    """One stream of one attempt: the byte count, a bounded head and a bounded tail.

    The head goes to the sink line by line as it arrives (a short script's output reads
    exactly as it was written). Past it, a chunk only adds to the count and to the tail buffer:
    no line splitting, no decoding, no growth. The tail goes to the sink when the attempt ends,
    after a line saying how many bytes were left out, if any.
    """

    def __init__(self, stream: str, sink: Sink, tail: deque[str]) -> None:
        self.stream = stream
        self.total = 0
        self.head = bytearray()
        self.tail = bytearray()
        self.splitter = _LineSplitter(stream, sink, tail)
        self.closed = False

    def feed(self, data: bytes) -> None:
        self.total += len(data)
        room = HEAD_BYTES - len(self.head)
        if room > 0:
            if len(data) <= room:
                self.head += data
                self.splitter.feed(data)
                return
            self.head += data[:room]
            self.splitter.feed(data[:room])
            data = data[room:]
        if len(data) >= TAIL_BYTES:
            self.tail[:] = data[-TAIL_BYTES:]
            return
        self.tail += data
        excess = len(self.tail) - TAIL_BYTES
        if excess > 0:
            del self.tail[:excess]

    @property
    def omitted(self) -> int:
        return self.total - len(self.head) - len(self.tail)

    def close(self) -> None:
        """Hand the rest to the sink: the tail, after a note on what was left out."""
        if self.closed:
            return
        self.closed = True
        if self.omitted:
            self.splitter.close()  # the head's last, unfinished line
            self.splitter.note(
                f"[quiesce: {self.stream} was {self.total} bytes; {self.omitted} bytes after "
                f"the first {len(self.head)} are not shown, the last {len(self.tail)} follow]")
        if self.tail:
            self.splitter.feed(bytes(self.tail))
        self.splitter.close()

    def result(self) -> StreamOutput:
        return StreamOutput(stream=self.stream, bytes=self.total,
                            head=self.head.decode("utf-8", "replace"),
                            tail=self.tail.decode("utf-8", "replace"),
                            omitted_bytes=self.omitted)


def _grow_pipe(fd: int) -> None:
    """Ask for a larger pipe (fewer wake-ups); the default 64 KiB works too."""
    setpipe = getattr(fcntl, "F_SETPIPE_SZ", None)
    if setpipe is not None:
        with contextlib.suppress(OSError):
            fcntl.fcntl(fd, setpipe, PIPE_SIZE)


def _killpg(pgid: int, sig: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, sig)


class _Execution:
    """One attempt: start, pump output until the main process exits or the deadline passes."""

    def __init__(self, argv: Sequence[str], pass_fds: Sequence[int], env: Mapping[str, str],
                 sink: Sink, tail: deque[str]) -> None:
        self.proc = subprocess.Popen(
            list(argv),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            cwd="/",
            env=dict(env),
            pass_fds=tuple(pass_fds),
            start_new_session=True,
            close_fds=True,
        )
        self.selector = selectors.DefaultSelector()
        self.captures: dict[int, _Capture] = {}
        for name, pipe in (("stdout", self.proc.stdout), ("stderr", self.proc.stderr)):
            assert pipe is not None
            fd = pipe.fileno()
            os.set_blocking(fd, False)
            _grow_pipe(fd)
            self.captures[fd] = _Capture(name, sink, tail)
            self.selector.register(fd, selectors.EVENT_READ, "pipe")
        self.pidfd = -1
        with contextlib.suppress(OSError, AttributeError):
            self.pidfd = os.pidfd_open(self.proc.pid)
            self.selector.register(self.pidfd, selectors.EVENT_READ, "exit")

    def _pump(self, wait: float) -> bool:
        """Wait up to ``wait`` seconds for output or exit. True if any output was read."""
        got = False
        # Without a pidfd the exit is noticed by polling, so bound each wait.
        timeout = wait if self.pidfd >= 0 else min(wait, 0.02)
        for key, _ in self.selector.select(timeout):
            if key.data != "pipe":
                continue
            fd = int(key.fd)
            try:
                data = os.read(fd, READ_SIZE)
            except BlockingIOError:
                continue
            if data:
                got = True
                self.captures[fd].feed(data)
            else:
                self.selector.unregister(fd)
                self.captures[fd].close()
        return got

    def _open_pipes(self) -> int:
        return sum(1 for key in self.selector.get_map().values() if key.data == "pipe")

    def wait_exit(self, deadline: Deadline) -> bool:
        """Pump until the main process exits (True) or the deadline passes (False)."""
        while self.proc.poll() is None:
            remaining = deadline.remaining()
            if remaining <= 0:
                return False
            if self._open_pipes() == 0 and self.pidfd < 0:
                with contextlib.suppress(subprocess.TimeoutExpired):
                    self.proc.wait(timeout=min(remaining, 0.02))
                continue
            self._pump(remaining)
        return True

    def drain(self) -> None:
        """After the exit: read what is readable, briefly; never wait for EOF from a daemon."""
        if self.pidfd >= 0:
            self.selector.unregister(self.pidfd)
            os.close(self.pidfd)
            self.pidfd = -1
        stop = Deadline(DRAIN_MAX)
        while self._open_pipes() and not stop.expired():
            if not self._pump(min(DRAIN_IDLE, stop.remaining())):
                break

    def terminate_group(self, grace: float) -> None:
        """SIGTERM the whole process group, SIGKILL it after ``grace``, reap the main process."""
        pgid = self.proc.pid  # leader of its own session and group
        _killpg(pgid, signal.SIGTERM)
        self.wait_exit(Deadline(grace))
        # Whether or not the leader left, anything still in the group gets SIGKILL.
        _killpg(pgid, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.proc.wait(timeout=max(grace, 5.0))
        self.drain()

    def output(self) -> tuple[StreamOutput, ...]:
        return tuple(capture.result() for capture in self.captures.values())

    def close(self) -> None:
        if self.proc.poll() is None:  # an exception escaped mid-attempt: leave nothing behind
            _killpg(self.proc.pid, signal.SIGKILL)
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.proc.wait(timeout=5.0)
        if self.pidfd >= 0:
            os.close(self.pidfd)
            self.pidfd = -1
        for capture in self.captures.values():
            capture.close()
        self.selector.close()
        for pipe in (self.proc.stdout, self.proc.stderr):
            if pipe is not None:
                pipe.close()


def run_script(
    phase: str,
    path: str,
    params: Sequence[str],
    *,
    timeout: float,
    retries: int = 0,
    sink: Sink | None = None,
    fd: int | None = None,
    env: Mapping[str, str] | None = None,
    grace: float = DEFAULT_GRACE,
    deadline: Deadline | None = None,
) -> ScriptResult:
    """Run a script phase and return its result; never raises for a script's failure.

    ``fd`` is the checked descriptor of the script (from :func:`quiesce.security.open_trusted`):
    when given, the script is executed through it, and ``path`` is only used in messages.
    ``deadline`` overrides ``timeout`` (the phase deadline, shared by every attempt).
    Raises :class:`ScriptError` only when the script cannot be executed at all.
    """
    deadline = deadline or Deadline(timeout)
    sink = sink or (lambda stream, line: None)
    run_env = dict(os.environ if env is None else env)
    run_env.setdefault("PATH", DEFAULT_PATH)
    exe = f"/proc/self/fd/{fd}" if fd is not None else path
    argv = [exe, *params]
    tail: deque[str] = deque(maxlen=TAIL_LINES)
    result = ScriptResult(phase=phase, path=path, started_at=time.time())
    start = time.monotonic()
    for number in range(1, retries + 2):
        if deadline.expired():
            break
        t0 = time.monotonic()
        wall = time.time()
        try:
            execution = _Execution(argv, [fd] if fd is not None else [], run_env, sink, tail)
        except OSError as exc:
            hint = "check the script exists and is executable"
            if exc.errno == errno.ENOEXEC:
                hint = "add an interpreter line such as '#!/bin/sh' as the script's first line"
            raise ScriptError(f"{phase}-script {path} cannot be executed: {exc.strerror}",
                              hint=hint, code=AzureCode.for_phase(phase, "failed")) from exc
        try:
            exited = execution.wait_exit(deadline)
            if exited:
                execution.drain()
            else:
                execution.terminate_group(min(grace, max(0.5, float(timeout))))
        finally:
            execution.close()
        code = execution.proc.returncode
        attempt = Attempt(
            number=number,
            started_at=wall,
            duration_s=time.monotonic() - t0,
            exit_code=code if code is not None and code >= 0 else None,
            signal=-code if code is not None and code < 0 else None,
            timed_out=not exited,
            output=execution.output(),
        )
        result.attempts.append(attempt)
        if attempt.ok or attempt.timed_out:
            break
    result.duration_s = time.monotonic() - start
    result.output_tail = list(tail)
    return result
