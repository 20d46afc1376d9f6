"""Running statements that can hold up a backup lock, read from the process list.

A lock request (FTWRL, LOCK INSTANCE, BACKUP STAGE) waits for statements that already run and
conflict with it; while FTWRL waits, every new writer queues behind it. quiesce therefore asks
for the lock in short attempts and, between attempts, looks at the process list to name (and,
when configured, KILL QUERY) what is in the way. Seeing other users' threads needs the PROCESS
privilege.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

# Commands of threads that are not running a client statement, or that belong to the server
# itself (replication, event scheduler): never counted as blockers and never killed.
IDLE_OR_SYSTEM_COMMANDS = frozenset({
    "Sleep", "Daemon", "Binlog Dump", "Binlog Dump GTID", "Slave_IO", "Slave_SQL",
    "Slave_worker", "Connect", "Killed", "Register Slave", "Delayed insert",
})
SYSTEM_USERS = frozenset({"system user", "event_scheduler"})

INFO_PREVIEW = 80


@dataclass(frozen=True)
class Statement:
    """One process-list row running a client statement."""

    id: int
    user: str
    host: str
    db: str | None
    command: str
    seconds: float
    state: str
    info: str

    def preview(self, limit: int = INFO_PREVIEW) -> str:
        text = " ".join(self.info.split())
        return text if len(text) <= limit else text[: limit - 3] + "..."

    def describe(self) -> str:
        return (f"id {self.id} (user {self.user!r}, running {self.seconds:.1f}s, "
                f"state {self.state or '-'!r}): {self.preview()}")

    def as_dict(self) -> dict[str, Any]:
        return {"id": self.id, "user": self.user, "host": self.host, "db": self.db,
                "seconds": round(self.seconds, 3), "state": self.state,
                "info": self.preview()}


def processlist_query(has_time_ms: bool) -> str:
    """Non-idle threads. MariaDB has TIME_MS (fractional); MySQL only whole seconds."""
    seconds = "TIME_MS / 1000" if has_time_ms else "TIME"
    return ("SELECT ID, USER, HOST, DB, COMMAND, " + seconds + ", STATE, INFO "
            "FROM information_schema.PROCESSLIST WHERE COMMAND <> 'Sleep'")


def parse_rows(rows: Iterable[Sequence[Any]]) -> list[Statement]:
    out = []
    for row in rows:
        ident, user, host, db, command, seconds, state, info = row
        out.append(Statement(
            id=int(ident), user=column_text(user), host=column_text(host),
            db=column_text(db) or None, command=column_text(command),
            seconds=float(seconds or 0), state=column_text(state), info=column_text(info),
        ))
    return out


def column_text(value: Any) -> str:
    """A column value as text: PyMySQL returns bytes for some server columns."""
    if value is None:
        return ""
    if isinstance(value, bytes | bytearray):
        return bytes(value).decode("utf-8", "replace")
    return str(value)


def candidate_blockers(statements: Iterable[Statement], *, exclude_ids: Iterable[int],
                       min_seconds: float) -> list[Statement]:
    """Client statements (not ours, not the server's own threads) running >= ``min_seconds``.

    Longest-running first: those started before the lock attempt are the ones it waits for.
    """
    excluded = set(exclude_ids)
    found = [
        s for s in statements
        if s.id not in excluded
        and s.command not in IDLE_OR_SYSTEM_COMMANDS
        and s.user not in SYSTEM_USERS
        and s.info
        and s.seconds >= min_seconds
    ]
    return sorted(found, key=lambda s: s.seconds, reverse=True)


def describe_blockers(blockers: Sequence[Statement], limit: int = 3) -> str:
    if not blockers:
        return ("no long-running statement was visible. An idle session may hold a backup "
                "lock (another backup tool's BACKUP STAGE, FLUSH TABLES WITH READ LOCK or LOCK "
                "INSTANCE FOR BACKUP): look for it in SHOW PROCESSLIST. Without the PROCESS "
                "privilege only this account's own sessions are visible")
    shown = "; ".join(b.describe() for b in blockers[:limit])
    more = f"; and {len(blockers) - limit} more" if len(blockers) > limit else ""
    return shown + more


def row_to_json(row: Mapping[str, Any]) -> dict[str, Any]:
    """A SHOW ... STATUS row with values JSON can carry (bytes decoded, numbers kept)."""
    out: dict[str, Any] = {}
    for key, value in row.items():
        if isinstance(value, bytes | bytearray):
            out[key] = bytes(value).decode("utf-8", "replace")
        elif value is None or isinstance(value, bool | int | float | str):
            out[key] = value
        else:
            out[key] = str(value)
    return out
