"""The drill target of the example "flock" engine (harness side): ``quiesce drill --engine
flock``.

The database is :mod:`quiesce_example_flock.ledgerd`, a toy server keeping the drill's bank
ledger as an fsync()ed append-only log on the log disk and a checkpoint file on the data disk,
each commit holding ``flock(LOCK_SH)`` on ``quiesce.lock`` on the data disk. The drill's
quiesce.toml points a ``[[flock]]`` section at that file, so the engine's Quiescer (an
exclusive flock) really stops every write to both disks while it is held.

Verification: the restored server recovers (checkpoint + log replay, torn tail dropped, a
checkpoint beyond the end of the log refused); ``read_state`` returns its balances and ledger
for the drill's engine-neutral checks; the integrity check replays the whole restored log
from the start; the log check fails on any ``[ERROR]`` line.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from quiesce.errors import EngineUnavailable
from quiesce.harness.drill.targets.base import ACCOUNTS, INITIAL_BALANCE, Backend, Target
from quiesce.harness.drill.verify import Check, RestoredState
from quiesce.harness.drill.workload import OutcomeUnknown, Transfer
from quiesce.harness.servers.base import Server, ServerLayout
from quiesce_example_flock.server import LedgerClient, LedgerServer, Refused


def _ledger(server: Server) -> LedgerServer:
    if not isinstance(server, LedgerServer):
        raise TypeError(f"the flock target drives LedgerServer, not {type(server).__name__}")
    return server


class LedgerSession:
    """One workload writer's connection: one transfer per request."""

    def __init__(self, server: Server) -> None:
        self.client = _ledger(server).client()

    def transfer(self, t: Transfer) -> None:
        try:
            self.client.call("transfer", id=t.id, src=t.src, dst=t.dst, amount=t.amount)
        except Refused:
            raise  # ledgerd wrote nothing: rolled back for sure
        except (OSError, ValueError) as exc:  # sent, but no answer: it may have committed
            raise OutcomeUnknown(str(exc) or type(exc).__name__) from exc

    def close(self) -> None:
        self.client.close()


class FlockTarget(Target):
    section = "flock"

    def __init__(self, backend: Backend, name: str | None = None) -> None:
        super().__init__(backend, name or "flock")

    def check_available(self) -> None:
        if self.backend.name != "local":
            raise EngineUnavailable("the flock example's ledgerd runs only as a local process",
                                    hint="use --backend local")

    def new_server(self, layout: ServerLayout) -> Server:
        server = LedgerServer(layout, init=True)
        server.start()
        return server

    def open_restored(self, layout: ServerLayout, original: Server) -> Server:
        server = LedgerServer(layout, init=False)
        server.start()  # recovery runs here; a refused start is a ServerError
        return server

    def toml_section(self, server: Server, config_dir: Path) -> str:
        return f'[[flock]]\nname = "drill"\npath = "{_ledger(server).lock_path}"\n'

    def setup_schema(self, server: Server) -> None:
        self._call(server, "setup", accounts=ACCOUNTS, balance=INITIAL_BALANCE)

    def session(self, server: Server) -> LedgerSession:
        return LedgerSession(server)

    def checkpoint(self, server: Server) -> str:
        lsn = self._call(server, "checkpoint")["lsn"]
        return f"ledgerd checkpoint at log offset {lsn}"

    def read_state(self, server: Server) -> RestoredState:
        state = self._call(server, "state")
        balances = {i: int(b) for i, b in enumerate(state["balances"])}
        ledger = {int(i): (int(s), int(d), int(a)) for i, s, d, a in state["ledger"]}
        return RestoredState(balances=balances, ledger=ledger)

    def integrity_checks(self, server: Server) -> list[Check]:
        problems = self._call(server, "check")["problems"]
        return [Check("log_replay", not problems,
                      "the whole log parses (CRC and JSON of every record), replays to the "
                      "recovered state, and the balances sum to the initial total"
                      if not problems else "; ".join(problems)[:600])]

    log_clean_text = "no [ERROR] line from ledgerd while recovering and verifying"

    def bad_log_lines(self, text: str) -> list[str]:
        return [line.strip() for line in text.splitlines() if re.search(r"\[ERROR\]", line)]

    @staticmethod
    def _call(server: Server, op: str, **fields: object) -> dict[str, Any]:
        client: LedgerClient = _ledger(server).client()
        try:
            return client.call(op, **fields)
        finally:
            client.close()
