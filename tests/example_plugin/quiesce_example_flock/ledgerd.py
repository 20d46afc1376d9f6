"""A toy database for the drill of the example "flock" engine: the bank ledger, crash-safe.

Run as its own process (``python -I ledgerd.py --data DIR --log DIR --run DIR [--init]``) by
:class:`quiesce_example_flock.server.LedgerServer`. Standard library only, so it runs with
``python -I`` and imports nothing of quiesce.

Files:

- ``LOG/ledger.log`` (the log disk): append-only, one record per line,
  ``<crc32 hex> <json>\\n``; every commit is appended and fsync()ed before it is acknowledged.
  The first record is ``{"op": "init", ...}`` (``setup``), then one ``{"op": "transfer", ...}``
  per transfer.
- ``DATA/state.json`` (the data disk): a checkpoint: the balances and ledger as of log offset
  ``lsn``, replaced atomically (write, fsync, rename, fsync the directory) every
  ``CHECKPOINT_EVERY`` commits and on request.
- ``DATA/quiesce.lock``: every commit and checkpoint holds ``flock(LOCK_SH)`` on it while it
  writes, so a process holding ``LOCK_EX`` (the flock engine's Quiescer) stops all writes to
  both disks until it lets go. The wait for it is bounded (``LOCK_WAIT``): a commit that cannot
  get the lock fails having written nothing.

Recovery on start: read the checkpoint, scan the whole log (each record's CRC and JSON), drop
a torn tail (an incomplete or damaged last record, as a crash mid-append leaves), then replay
the records after the checkpoint. A damaged record before the end, or a checkpoint beyond the
end of the log (the data disk is newer than the log disk: they were captured at different
instants) is an ERROR line in the server's output and exit status 3: the server refuses to
start on files it cannot trust, as PostgreSQL does without a valid checkpoint record.

Protocol: TCP on 127.0.0.1, port chosen by the kernel and written to ``RUN/port`` once
recovery is done; one JSON object per line each way. Requests: ``ping``, ``setup``,
``transfer``, ``checkpoint``, ``state``, ``check``. Answers ``{"ok": true, ...}`` or
``{"ok": false, "error": "..."}`` (nothing was written then).
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import json
import os
import socketserver
import sys
import threading
import time
import zlib
from pathlib import Path
from typing import Any

VERSION = "ledgerd 0.1 (quiesce example flock engine)"
LOG_NAME = "ledger.log"
STATE_NAME = "state.json"
LOCK_NAME = "quiesce.lock"
CHECKPOINT_EVERY = 100
LOCK_WAIT = 90.0  # seconds a commit waits for a quiesce hold to end
IDLE_TIMEOUT = 600.0  # a client connection silent this long is closed
MAX_LINE = 1 << 20


class Refused(Exception):
    """A request that wrote nothing (bad input, lock wait timeout)."""


class Corrupt(Exception):
    """Files recovery cannot trust: the server must not start."""


def say(level: str, message: str) -> None:
    stamp = time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime())
    print(f"{stamp} [{level}] {message}", file=sys.stderr, flush=True)


def encode(record: dict[str, Any]) -> bytes:
    body = json.dumps(record, separators=(",", ":"), sort_keys=True).encode()
    return b"%08x %s\n" % (zlib.crc32(body), body)


def decode(line: bytes) -> dict[str, Any] | None:
    """The record of one complete line (without its newline), or None if damaged."""
    crc, _, body = line.partition(b" ")
    try:
        if len(crc) != 8 or int(crc, 16) != zlib.crc32(body):
            return None
        record = json.loads(body)
    except ValueError:
        return None
    return record if isinstance(record, dict) else None


def scan_log(data: bytes) -> tuple[list[tuple[int, int, dict[str, Any]]], int]:
    """(records as (start, end, record), end of the last good record). Raises Corrupt for a
    damaged record followed by more data; an incomplete or damaged last record is a torn
    tail, left out."""
    records: list[tuple[int, int, dict[str, Any]]] = []
    pos = 0
    while pos < len(data):
        nl = data.find(b"\n", pos)
        if nl < 0:
            break  # incomplete last record: torn tail
        record = decode(data[pos:nl])
        if record is None:
            if nl + 1 < len(data):
                raise Corrupt(f"damaged log record at offset {pos} with "
                              f"{len(data) - nl - 1} bytes of log after it")
            break  # damaged last record: torn tail
        records.append((pos, nl + 1, record))
        pos = nl + 1
    return records, pos


class Ledger:
    """The database: in-memory state, its log and checkpoint files, and the commit lock."""

    def __init__(self, data_dir: Path, log_dir: Path) -> None:
        self.data_dir = data_dir
        self.log_path = log_dir / LOG_NAME
        self.state_path = data_dir / STATE_NAME
        self.mutex = threading.Lock()  # one writer at a time inside this process
        self.accounts = 0
        self.initial = 0
        self.balances: list[int] = []
        self.ledger: dict[int, tuple[int, int, int]] = {}
        self.lsn = 0  # log offset the in-memory state includes
        self.since_checkpoint = 0
        self.lock_fd = -1
        self.log_fd = -1

    # ------------------------------------------------------------------ files
    @staticmethod
    def initialise(data_dir: Path, log_dir: Path) -> None:
        """Create empty files for a new database (refuses to overwrite one)."""
        for d in (data_dir, log_dir):
            d.mkdir(mode=0o700, parents=True, exist_ok=True)
        log = log_dir / LOG_NAME
        if log.exists() or (data_dir / STATE_NAME).exists():
            raise Corrupt(f"{data_dir} or {log_dir} already holds a database")
        fd = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        os.fsync(fd)
        os.close(fd)
        os.close(os.open(data_dir / LOCK_NAME, os.O_WRONLY | os.O_CREAT, 0o600))
        write_atomically(data_dir / STATE_NAME, {"lsn": 0, "accounts": 0, "initial": 0,
                                                 "balances": [], "ledger": []})
        for d in (data_dir, log_dir):
            fsync_dir(d)

    def open(self) -> str:
        """Recover; returns what recovery did (one line)."""
        try:
            with open(self.state_path, "rb") as fh:
                state = json.loads(fh.read())
            checkpoint = int(state["lsn"])
            self.accounts, self.initial = int(state["accounts"]), int(state["initial"])
            self.balances = [int(b) for b in state["balances"]]
            self.ledger = {int(i): (int(s), int(d), int(a)) for i, s, d, a in state["ledger"]}
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise Corrupt(f"cannot read the checkpoint {self.state_path}: {exc}") from exc
        try:
            with open(self.log_path, "rb") as fh:
                data = fh.read()
        except OSError as exc:
            raise Corrupt(f"cannot read the log {self.log_path}: {exc}") from exc
        records, end = scan_log(data)
        if checkpoint > end:
            raise Corrupt(f"the checkpoint in {self.state_path} is at log offset {checkpoint} "
                          f"but the log ends at offset {end}: the data file is newer than the "
                          "log (the two disks were captured at different instants)")
        if checkpoint and checkpoint not in {stop for _, stop, _ in records}:
            raise Corrupt(f"the checkpoint's log offset {checkpoint} is not the end of a log "
                          "record")
        replayed = 0
        for start, stop, record in records:
            if start >= checkpoint:
                self.apply(record, f"log offset {start}")
                self.lsn = stop
                replayed += 1
        self.lsn = max(self.lsn, checkpoint)
        torn = len(data) - end
        self.log_fd = os.open(self.log_path, os.O_WRONLY | os.O_APPEND | os.O_CLOEXEC)
        if torn:
            os.ftruncate(self.log_fd, end)
            os.fsync(self.log_fd)
        self.lock_fd = os.open(self.data_dir / LOCK_NAME,
                               os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        if replayed or torn:
            with self.locked(time.monotonic() + LOCK_WAIT):
                self.write_checkpoint()
        return (f"recovered: checkpoint at log offset {checkpoint}, {replayed} record(s) "
                f"replayed after it, torn tail of {torn} byte(s) dropped; "
                f"{len(self.ledger)} ledger rows")

    def apply(self, record: dict[str, Any], where: str) -> None:
        op = record.get("op")
        if op == "init":
            if self.accounts:
                raise Corrupt(f"second init record at {where}")
            self.accounts, self.initial = int(record["accounts"]), int(record["balance"])
            self.balances = [self.initial] * self.accounts
        elif op == "transfer":
            tid, src, dst, amount = (int(record[k]) for k in ("id", "src", "dst", "amount"))
            if tid in self.ledger or not (0 <= src < self.accounts and 0 <= dst < self.accounts):
                raise Corrupt(f"transfer record {tid} at {where} is a duplicate or names an "
                              "unknown account")
            self.balances[src] -= amount
            self.balances[dst] += amount
            self.ledger[tid] = (src, dst, amount)
        else:
            raise Corrupt(f"unknown record {op!r} at {where}")

    def write_checkpoint(self) -> None:
        write_atomically(self.state_path, {
            "lsn": self.lsn, "accounts": self.accounts, "initial": self.initial,
            "balances": self.balances,
            "ledger": [[i, *row] for i, row in sorted(self.ledger.items())]})
        self.since_checkpoint = 0

    @contextlib.contextmanager
    def locked(self, until: float) -> Any:
        """flock(LOCK_SH) on the lock file: writes wait while a quiesce hold has LOCK_EX."""
        waited = False
        while True:
            try:
                fcntl.flock(self.lock_fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if not waited:
                    say("LOG", f"a write waits: {LOCK_NAME} is locked exclusively (a quiesce "
                               "hold?)")
                    waited = True
                if time.monotonic() >= until:
                    raise Refused(f"{LOCK_NAME} stayed locked for {LOCK_WAIT:g}s (a quiesce "
                                  "hold?); nothing was written") from None
                time.sleep(0.005)
        try:
            yield
        finally:
            fcntl.flock(self.lock_fd, fcntl.LOCK_UN)

    # ------------------------------------------------------------------ requests
    def commit(self, record: dict[str, Any]) -> None:
        """Validate, then log + fsync + apply under the lock; a failed write ends the process
        (the outcome is unknown, as after a PostgreSQL PANIC)."""
        with self.mutex:
            self.validate(record)
            with self.locked(time.monotonic() + LOCK_WAIT):
                line = encode(record)
                try:
                    os.write(self.log_fd, line)
                    os.fsync(self.log_fd)
                except OSError as exc:
                    say("ERROR", f"cannot write the log: {exc}; stopping")
                    os._exit(4)
                self.apply(record, "commit")
                self.lsn += len(line)
                self.since_checkpoint += 1
                if self.since_checkpoint >= CHECKPOINT_EVERY:
                    self.write_checkpoint()

    def validate(self, record: dict[str, Any]) -> None:
        if record["op"] == "init":
            if self.accounts:
                raise Refused("already set up")
            if int(record["accounts"]) < 2:
                raise Refused("accounts must be at least 2")
            return
        if not self.accounts:
            raise Refused("not set up: send setup first")
        tid, src, dst, amount = (int(record[k]) for k in ("id", "src", "dst", "amount"))
        if tid in self.ledger:
            raise Refused(f"ledger id {tid} exists")
        if not (0 <= src < self.accounts and 0 <= dst < self.accounts) or src == dst:
            raise Refused(f"bad accounts {src} -> {dst}")
        if amount <= 0:
            raise Refused(f"bad amount {amount}")

    def checkpoint(self) -> int:
        with self.mutex, self.locked(time.monotonic() + LOCK_WAIT):
            self.write_checkpoint()
            return self.lsn

    def check(self) -> list[str]:
        """Re-read the log from disk and replay it from the start: every record must parse,
        the result must equal the live state, and the balances must sum to the initial
        total."""
        with self.mutex:
            problems: list[str] = []
            with open(self.log_path, "rb") as fh:
                data = fh.read()
            try:
                records, end = scan_log(data)
            except Corrupt as exc:
                return [str(exc)]
            if end != len(data):
                problems.append(f"{len(data) - end} byte(s) after the last good log record")
            replay = Ledger(self.data_dir, self.log_path.parent)
            try:
                for start, _stop, record in records:
                    replay.apply(record, f"log offset {start}")
            except (Corrupt, KeyError, ValueError) as exc:
                problems.append(f"the log does not replay: {exc}")
            if (replay.balances, replay.ledger) != (self.balances, self.ledger):
                problems.append("replaying the whole log gives other balances or ledger rows "
                                "than the recovered state")
            if sum(self.balances) != self.accounts * self.initial:
                problems.append(f"balances sum to {sum(self.balances)}, not "
                                f"{self.accounts * self.initial}")
            say("LOG" if not problems else "ERROR",
                f"check: {len(records)} log records; " + ("; ".join(problems) or "clean"))
            return problems

    def handle(self, request: dict[str, Any]) -> dict[str, Any]:
        op = request.get("op")
        if op == "ping":
            return {"version": VERSION}
        if op == "setup":
            self.commit({"op": "init", "accounts": int(request["accounts"]),
                         "balance": int(request["balance"])})
            self.checkpoint()
            return {}
        if op == "transfer":
            self.commit({"op": "transfer", **{k: int(request[k])
                                              for k in ("id", "src", "dst", "amount")}})
            return {}
        if op == "checkpoint":
            return {"lsn": self.checkpoint()}
        if op == "state":
            with self.mutex:
                return {"balances": list(self.balances),
                        "ledger": [[i, *row] for i, row in self.ledger.items()]}
        if op == "check":
            return {"problems": self.check()}
        raise Refused(f"unknown op {op!r}")


def write_atomically(path: Path, document: dict[str, Any]) -> None:
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
    try:
        os.write(fd, json.dumps(document, separators=(",", ":")).encode())
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)
    fsync_dir(path.parent)


def fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class Handler(socketserver.StreamRequestHandler):
    server: Service

    def handle(self) -> None:
        self.request.settimeout(IDLE_TIMEOUT)
        while True:
            try:
                line = self.rfile.readline(MAX_LINE)
            except OSError:
                return
            if not line:
                return
            try:
                request = json.loads(line)
                answer = {"ok": True, **self.server.ledger.handle(request)}
            except Refused as exc:
                answer = {"ok": False, "error": str(exc)}
            except (ValueError, KeyError, TypeError) as exc:
                answer = {"ok": False, "error": f"bad request: {exc}"}
            except Corrupt as exc:  # an in-memory invariant broke: stop, do not guess
                say("ERROR", str(exc))
                os._exit(4)
            try:
                self.wfile.write(json.dumps(answer).encode() + b"\n")
            except OSError:
                return


class Service(socketserver.ThreadingTCPServer):
    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, ledger: Ledger) -> None:
        super().__init__(("127.0.0.1", 0), Handler)
        self.ledger = ledger


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, required=True)
    parser.add_argument("--log", type=Path, required=True)
    parser.add_argument("--run", type=Path, required=True)
    parser.add_argument("--init", action="store_true", help="create a new, empty database")
    args = parser.parse_args(argv)
    try:
        if args.init:
            Ledger.initialise(args.data, args.log)
        ledger = Ledger(args.data, args.log)
        say("LOG", ledger.open())
    except Corrupt as exc:
        say("ERROR", f"{exc}; refusing to start")
        return 3
    service = Service(ledger)
    port_file = args.run / "port"
    tmp = args.run / "port.tmp"
    tmp.write_text(str(service.server_address[1]), encoding="ascii")
    os.replace(tmp, port_file)
    say("LOG", f"{VERSION} listening on 127.0.0.1:{service.server_address[1]}")
    with contextlib.suppress(KeyboardInterrupt):
        service.serve_forever(poll_interval=0.2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
