"""The ``[[postgresql]]`` instance section of quiesce.toml.

``name`` is added by the core. Passwords never live in quiesce.toml: a ``conninfo`` holding
``password=`` (or a URI with a password) is refused; use ``passfile`` (checked by the core like
every secret file: root-owned, no group/other bits) or libpq's ``passfile=`` keyword.
"""

from __future__ import annotations

import os
from typing import Any

from quiesce.freezing.freeze_set import LEVEL_SETTINGS
from quiesce.schema import Field, Table

CONNINFO_HINT = (
    "remove the password from conninfo and put it in a libpq password file "
    "(host:port:dbname:user:password, owned by root, mode 0600), then set "
    "passfile = \"/etc/quiesce/pgpass\" in this section"
)
MAX_LABEL_PREFIX = 200
# post's release of one instance gets RELEASE_SECONDS (quiesce.hold.lifecycle.Hold's
# release_timeout) for pg_backup_stop AND the archive wait; a longer wait would be cut short
# there, so a larger value is refused instead of being capped silently. 5 s stay for
# pg_backup_stop itself.
RELEASE_SECONDS = 30
MAX_ARCHIVE_WAIT_SECONDS = RELEASE_SECONDS - 5
DEFAULT_ARCHIVE_WAIT_SECONDS = 20


def conninfo_problem(value: str) -> str | None:
    """Why a conninfo is refused, or None. Parsed by libpq itself through psycopg."""
    if not value:
        return None
    try:
        from psycopg.conninfo import conninfo_to_dict
    except ImportError:
        return ("cannot check conninfo: the psycopg driver is not installed "
                "(pip install 'quiesce[postgresql]')")
    try:
        params = conninfo_to_dict(value)
    except Exception as exc:  # psycopg.ProgrammingError: libpq could not parse it
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        from quiesce.redact import redact

        return f"not a valid libpq connection string: {redact(first, value)}"
    from quiesce.redact import secrets_of

    # secrets_of also finds a URI password whose unescaped '/' made libpq read it as a port.
    if params.get("password") or secrets_of(value):
        return "contains a password; quiesce.toml is not a secret store"
    passfile = params.get("passfile")
    if passfile and not os.path.isabs(str(passfile)):
        return f"passfile={passfile} must be an absolute path"
    return None


def _label_problem(value: str) -> str | None:
    if not value:
        return "must not be empty"
    if len(value) > MAX_LABEL_PREFIX:
        return f"is {len(value)} characters long; keep it under {MAX_LABEL_PREFIX}"
    if not all(" " <= ch <= "~" for ch in value):
        return ("must be printable ASCII without newlines (it becomes the LABEL line of "
                "backup_label, which is recorded and restored byte for byte)")
    return None


def _absolute(value: str) -> str | None:
    return None if os.path.isabs(value) else "must be an absolute path"


def _wait_for_archive_problem(value: Any) -> str | None:
    if isinstance(value, bool) or value == "auto":
        return None
    return "must be true, false or \"auto\""


SCHEMA = Table({
    "conninfo": Field(
        str, default="", check=conninfo_problem, hint=CONNINFO_HINT,
        doc='the libpq connection string, e.g. "host=/var/run/postgresql port=5432 '
            'user=postgres dbname=postgres"; empty means libpq\'s defaults (local socket, PG* '
            "environment variables). No password here: put it in a passfile",
    ),
    "passfile": Field(str, check=_absolute,
                      hint="a libpq password file, root-owned, mode 0600",
                      doc="a libpq password file, root-owned, mode 0600"),
    # No default in the schema: the engine needs to know whether "backup" was set explicitly
    # (level = "auto" never drops an explicit backup mode); left out, it is "backup".
    "mode": Field(str, choices=("backup", "checkpoint"),
                  hint="\"backup\" brackets the snapshot with pg_backup_start/stop; "
                       "\"checkpoint\" only flushes",
                  doc="\"backup\" (used when left out) brackets the snapshot with "
                      "pg_backup_start/stop; \"checkpoint\" only flushes. Set to \"backup\" "
                      "explicitly, level = \"auto\" never drops backup mode"),
    "level": Field(str, default="full", choices=LEVEL_SETTINGS,
                   hint='"full" always uses mode; "auto" allows the light level where pre '
                        "verifies its conditions (docs/engines.md)",
                   doc='"full" (the default) uses mode as configured; "auto" lets pre choose '
                       "the light level (no backup mode and no checkpoint: the restore is a "
                       "crash recovery from the recorded LSN) only when it verifies that the "
                       "data directory, pg_wal and every tablespace are on filesystems the "
                       "caller freezes together (quiesce run; Azure with fsFreezeEnabled), "
                       "mode is not set to \"backup\", archive_mode is off, the server is a "
                       "primary with fsync on and synchronous_commit not off; the choice and "
                       "its evidence go into the run record"),
    "label": Field(str, default="quiesce", check=_label_problem,
                   doc=f"the prefix of the backup label (printable ASCII, at most "
                       f"{MAX_LABEL_PREFIX} characters); the instance name and time follow"),
    "fast_checkpoint": Field(bool, default=True,
                             doc="true starts backup mode with an immediate checkpoint; false "
                                 "waits for a spread one, which may not fit the pre deadline"),
    "connect_timeout": Field(int, default=10, minimum=2, maximum=600,
                             hint="seconds; libpq's minimum is 2",
                             doc="seconds to wait for the connection; libpq's minimum is 2"),
    "wait_for_archive": Field((bool, str), default="auto", check=_wait_for_archive_problem,
                              hint="\"auto\" waits only when WAL archiving is on",
                              doc="whether 'post' waits for the backup's last WAL file to be "
                                  "archived: true, false, or \"auto\" (only when WAL "
                                  "archiving is on)"),
    "archive_wait_seconds": Field(
        int, default=DEFAULT_ARCHIVE_WAIT_SECONDS, minimum=0, maximum=MAX_ARCHIVE_WAIT_SECONDS,
        hint=f"seconds 'post' waits for the archiver, at most {MAX_ARCHIVE_WAIT_SECONDS}: the "
             f"release of an instance has {RELEASE_SECONDS} s in all, pg_backup_stop included; "
             "a slower archiver costs only wal_archived: false (the label is still recorded), "
             "check pg_stat_archiver later",
        doc=f"seconds 'post' waits for the archiver, at most {MAX_ARCHIVE_WAIT_SECONDS}; a "
            "slower archiver costs only wal_archived: false (the label is still recorded)"),
})
