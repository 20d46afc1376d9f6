"""The guardian: a small process that cleans up if the holder dies while holding.

The holder starts it (``python -m quiesce.hold.guardian``) in its own session and keeps the write
end of a pipe; the guardian holds the read end. EOF on that pipe without a ``done`` message
means the holder died (SIGKILL, OOM killer, crash). The holder tells the guardian, one JSON
line at a time:

- ``start``: run id, config path, state dir, max_hold_seconds, and a first backstop;
- ``token``: an instance whose lock outlives its session (EngineType.recover exists), with its
  options and the Quiescer's recovery_token(), sent the moment that instance is held;
- ``hold``: every instance is held, the deadline, the backstop (deadline + grace);
- ``dropped``: one instance is no longer held (its session was lost);
- ``released``: nothing is held any more (disarms the guardian);
- ``done``: the holder is exiting normally.

If the holder dies while armed, the guardian calls ``EngineType.recover(settings, token)`` for
each instance that had a token (loading only those plugins), and writes ``result.json`` in the
runtime dir so ``post`` reports "lost" (never "released"). Sessions of engines without a token
(PostgreSQL, MySQL) ended with the holder's connections; they are reported "lost" too, because
the snapshot may have been taken after the lock went away. Hard backstop: if the holder is
still alive at the backstop (it hung instead of auto-releasing), the guardian SIGKILLs it and
recovers the same way.

The guardian shares the holder's ``holder.lock`` (inherited descriptor), so no new hold can
start until its recovery is finished and recorded.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import select
import signal
import sys
import threading
import time
from typing import TYPE_CHECKING

from quiesce.timefmt import iso

if TYPE_CHECKING:
    from typing import Any

# quiesce.hold.protocol (sockets, the runtime dir checks) is imported only to recover: the
# guardian starts while the holder quiesces, and every millisecond of CPU it spends then is
# taken from the holder and the database server on a small machine.

RECOVER_TIMEOUT = 60.0


class Guardian:
    def __init__(self, pipe_fd: int, lock_fd: int, holder_pid: int, rundir: str) -> None:
        self.pipe_fd = pipe_fd
        self.lock_fd = lock_fd
        self.holder_pid = holder_pid
        self.rundir = rundir
        self.start: dict[str, Any] = {}
        self.hold: dict[str, Any] | None = None
        self.tokens: dict[tuple[str, str], dict[str, Any]] = {}
        self.dropped: set[tuple[str, str]] = set()
        self.armed = False
        self.done = False
        self.backstop: float | None = None
        self.buffer = b""
        self.log: list[str] = []

    def note(self, message: str) -> None:
        stamp = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
        self.log.append(f"{stamp} guardian: {message}")

    def handle(self, message: dict[str, Any]) -> None:
        op = message.get("op")
        if op == "start":
            self.start = message
            self.backstop = message.get("backstop")
            self.armed = True
        elif op == "token":
            self.tokens[(message["plugin"], message["name"])] = message
            self.armed = True
        elif op == "hold":
            self.hold = message
            self.backstop = message.get("backstop")
            self.armed = True
        elif op == "dropped":
            self.dropped.add((message["plugin"], message["name"]))
        elif op == "released":
            self.armed = False
            self.backstop = None
        elif op == "done":
            self.done = True

    def run(self) -> int:
        while True:
            timeout = None
            if self.armed and self.backstop is not None:
                timeout = min(60.0, max(0.0, self.backstop - time.monotonic()))
            try:
                ready, _, _ = select.select([self.pipe_fd], [], [], timeout)
            except InterruptedError:
                continue
            if not ready:
                if self.backstop is None or time.monotonic() < self.backstop:
                    continue
                self.note("backstop reached: the holder neither released nor exited; "
                          "killing it")
                with contextlib.suppress(ProcessLookupError):
                    os.kill(self.holder_pid, signal.SIGKILL)
                self.recover("the holder hung past its deadline and was killed by the guardian")
                return 0
            data = os.read(self.pipe_fd, 65536)
            if not data:
                if self.done or not self.armed:
                    return 0
                self.recover("the holder died while holding")
                return 0
            self.buffer += data
            while b"\n" in self.buffer:
                line, self.buffer = self.buffer.split(b"\n", 1)
                with contextlib.suppress(ValueError):
                    message = json.loads(line)
                    if isinstance(message, dict):
                        self.handle(message)

    def recover(self, why: str) -> None:
        self.note(why)
        if self.hold is None and not self.tokens:
            # Died before anything was held ('pre' reports that failure itself).
            return
        from quiesce.hold import protocol as proto

        instances: list[dict[str, Any]] = []
        listed = (self.hold or {}).get("instances") or [
            {"plugin": p, "name": n} for (p, n) in self.tokens]
        for item in listed:
            key = (item["plugin"], item["name"])
            result = {"plugin": key[0], "name": key[1], "status": proto.LOST,
                      "held_seconds": None, "metadata": {}, "error": why, "note": None}
            if key in self.dropped:
                result["note"] = "its session had already been lost before the holder died"
            elif key in self.tokens:
                problem = self._recover_one(self.tokens[key])
                if problem:
                    result["status"] = proto.FAILED
                    result["note"] = (f"the guardian could NOT undo its lock ({problem}): the "
                                      "server may still be locked; unlock it by hand")
                else:
                    result["note"] = "its lock was undone by the guardian (EngineType.recover)"
            else:
                result["note"] = ("its session ended with the holder's connection, so the "
                                  "server released the lock at that moment")
            instances.append(result)
        from quiesce.hold.records import RunRecord

        record = RunRecord(
            run_id=str(self.start.get("run_id") or ""), state="lost", consistent=False,
            message=f"{why}: the snapshot may NOT be application-consistent",
            config=self.start.get("config"), holder_pid=self.holder_pid,
            since=iso((self.hold or {}).get("since")), until=iso((self.hold or {}).get("until")),
            released_at=iso(time.time()), instances=instances, log=self.log,
            extra={"recovered_by": "guardian"})
        outcome = {"ok": True, **record.to_dict()}
        try:
            proto.write_json_atomic(os.path.join(self.rundir, proto.RESULT_NAME), outcome)
        except OSError as exc:
            self.note(f"cannot write the result file: {exc}")
        from quiesce import journal  # nothing is held any more: a non-blocking datagram

        journal.log_event("guardian", "recovered", str(outcome["message"]),
                          priority=journal.ERR, run_id=outcome["run_id"], consistent=False,
                          holder_pid=self.holder_pid,
                          failed=sum(1 for i in instances if i["status"] == proto.FAILED))
        # Recovery is finished and recorded on tmpfs: a new hold may start now. The state dir
        # may be on a filesystem that is still frozen, so it is written last, without the lock.
        if self.lock_fd >= 0:
            os.close(self.lock_fd)
            self.lock_fd = -1
        state_dir = self.start.get("state_dir")
        if state_dir and outcome["run_id"]:
            with contextlib.suppress(Exception):
                from quiesce.hold.records import write_record

                write_record(state_dir, record)

    def _recover_one(self, message: dict[str, Any]) -> str | None:
        """Run the engine's recover() in a thread bounded by RECOVER_TIMEOUT; None = done."""
        outcome: list[str | None] = []

        def work() -> None:
            try:
                from quiesce.engine import InstanceSettings
                from quiesce.plugins import Plugins

                plugins = Plugins()
                plugins.load_entry_points(only=[message["plugin"]])
                etype = plugins.engines.get(message["plugin"])
                if etype.recover is None:
                    outcome.append("the engine has no recover function")
                    return
                from quiesce.hold.records import default_state_dir

                settings = InstanceSettings(
                    engine=message["plugin"], name=message["name"],
                    options=message.get("options") or {},
                    max_hold_seconds=float(self.start.get("max_hold_seconds") or 300),
                    state_dir=str(self.start.get("state_dir") or default_state_dir()))
                etype.recover(settings, message["token"])
                outcome.append(None)
            except BaseException as exc:
                outcome.append(f"{type(exc).__name__}: {exc}")

        thread = threading.Thread(target=work, daemon=True)
        thread.start()
        thread.join(RECOVER_TIMEOUT)
        if thread.is_alive() or not outcome:
            return f"recover did not finish within {RECOVER_TIMEOUT:g} s"
        return outcome[0]



def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m quiesce.hold.guardian")
    parser.add_argument("--pipe-fd", type=int, required=True)
    parser.add_argument("--lock-fd", type=int, required=True)
    parser.add_argument("--holder-pid", type=int, required=True)
    parser.add_argument("--runtime-dir", required=True)
    args = parser.parse_args(argv)
    os.chdir("/")
    # The guardian outlives a dying holder; stray terminal signals must not stop it early.
    for sig in (signal.SIGINT, signal.SIGHUP):
        signal.signal(sig, signal.SIG_IGN)
    os.set_inheritable(args.pipe_fd, False)
    os.set_inheritable(args.lock_fd, False)
    return Guardian(args.pipe_fd, args.lock_fd, args.holder_pid, args.runtime_dir).run()


if __name__ == "__main__":
    sys.exit(main())
