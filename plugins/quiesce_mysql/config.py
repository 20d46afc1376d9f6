"""The ``[[mysql]]`` section of quiesce.toml (also used for MariaDB) and its typed form.

Nothing here imports PyMySQL: this module is loaded while configs are validated.

Keys (``name`` is added by the core)::

    [[mysql]]
    name = "main"
    host = "127.0.0.1"        # TCP host, used when unix_socket is not set
    port = 3306
    unix_socket = "/run/mysqld/mysqld.sock"   # preferred on the same machine
    user = "quiesce"
    password_file = "/etc/quiesce/mysql.pw"    # root-owned, chmod 600; first line is used
    lock = "auto"              # "auto" | "ftwrl" | "instance" | "backup-stage"
    level = "full"             # "full" | "auto": allow the light level where it is verified
    lock_wait_seconds = 10     # bounded wait for the lock behind running statements
    kill_blockers_after = 5    # optional: KILL QUERY what still blocks after this many seconds
    connect_timeout = 5
    tls = "auto"               # "auto" | "disabled" | "preferred" | "required"
    tls_ca = "/etc/quiesce/mysql-ca.pem"       # optional CA file for tls = "required"
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from quiesce.errors import ConfigError, EngineError, Problem
from quiesce.freezing.freeze_set import LEVEL_SETTINGS
from quiesce.schema import Field, Table
from quiesce_mysql.flavour import LOCK_MODES

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 3306
DEFAULT_USER = "root"
DEFAULT_LOCK_WAIT = 10.0
DEFAULT_CONNECT_TIMEOUT = 5.0
# auto: no TLS over a Unix socket (it protects nothing there, and the driver's opportunistic
# TLS costs ~50 ms of CPU per connection, serialised across instances); the driver's
# opportunistic TLS over TCP. required: verified certificate and host name.
TLS_MODES = ("auto", "disabled", "preferred", "required")


def _absolute(value: Any) -> str | None:
    if isinstance(value, str) and not os.path.isabs(value):
        return f"{value!r} is not an absolute path"
    return None


def _not_empty(value: Any) -> str | None:
    if isinstance(value, str) and not value.strip():
        return "must not be empty"
    return None


SCHEMA = Table({
    "host": Field(str, default=DEFAULT_HOST, check=_not_empty,
                  hint="a host name or IP address; ignored when unix_socket is set",
                  doc="the server's host name or IP address, for TCP; not used when "
                      "unix_socket is set"),
    "port": Field(int, default=DEFAULT_PORT, minimum=1, maximum=65535,
                  doc="the server's TCP port"),
    "unix_socket": Field(str, check=_absolute,
                         hint="the server's socket path, e.g. /run/mysqld/mysqld.sock",
                         doc="the server's Unix socket, e.g. /run/mysqld/mysqld.sock; "
                             "preferred on the same machine (used instead of host and port)"),
    "user": Field(str, default=DEFAULT_USER, check=_not_empty,
                  doc="the account quiesce logs in as (its least privileges: "
                      "docs/engines.md)"),
    "password_file": Field(str, check=_absolute,
                           hint="an absolute path to a root-owned file (chmod 600) whose first "
                                "line is the password; never put the password in quiesce.toml",
                           doc="a root-owned file (mode 600) whose first line is the password; "
                               "left out, quiesce sends no password (e.g. for unix_socket "
                               "authentication)"),
    "lock": Field(str, default="auto", choices=LOCK_MODES,
                  hint='"auto" picks BACKUP STAGE on MariaDB 10.4+ and LOCK INSTANCE FOR '
                       "BACKUP plus FLUSH TABLES WITH READ LOCK on MySQL 8.0+ (the light "
                       'level, with level = "auto", only where verified)',
                  doc='how writes are blocked: "instance" (LOCK INSTANCE FOR BACKUP alone: '
                      'commits go on), "backup-stage" (BACKUP STAGE up to BLOCK_COMMIT), '
                      '"ftwrl" (FLUSH TABLES WITH READ LOCK), or "auto": BACKUP STAGE on '
                      "MariaDB 10.4+, LOCK INSTANCE FOR BACKUP plus FLUSH TABLES WITH READ "
                      "LOCK on MySQL 8.0+, FTWRL elsewhere; level decides whether commits "
                      "are blocked"),
    "level": Field(str, default="full", choices=LEVEL_SETTINGS,
                   hint='"full" always blocks commits too; "auto" allows the light level '
                        "where pre verifies its conditions (docs/engines.md)",
                   doc='"full" (the default) blocks DDL and commits for the whole hold; '
                       '"auto" lets pre choose the light level (DDL blocked, commits go on: '
                       "BACKUP STAGE BLOCK_DDL on MariaDB 10.6+, LOCK INSTANCE FOR BACKUP on "
                       "MySQL 8.0+) only when it verifies that every data, redo, undo, binlog, "
                       "relay and Aria log file is on filesystems the caller freezes together "
                       "(quiesce run; Azure with fsFreezeEnabled), every table is "
                       "transactional and innodb_flush_log_at_trx_commit and sync_binlog are "
                       "1; the choice and its evidence go into the run record. Needs lock = "
                       '"auto"'),
    "lock_wait_seconds": Field((int, float), default=DEFAULT_LOCK_WAIT, minimum=1, maximum=600,
                               hint="seconds to wait for the lock behind running statements",
                               doc="seconds to wait for the lock behind running statements "
                                   "before 'pre' gives up"),
    "kill_blockers_after": Field((int, float), minimum=0, maximum=600,
                                 hint="seconds after which statements still blocking the lock "
                                      "get KILL QUERY; leave it out to never kill",
                                 doc="seconds after which statements still blocking the lock "
                                     "get KILL QUERY; left out, nothing is ever killed"),
    "tls": Field(str, default="auto", choices=TLS_MODES,
                 hint='"auto" uses no TLS over unix_socket and opportunistic TLS over TCP; '
                      '"required" verifies the server certificate and host name',
                 doc='"auto" uses no TLS over unix_socket and opportunistic TLS over TCP; '
                     '"required" verifies the server certificate and host name'),
    "tls_ca": Field(str, check=_absolute,
                    hint="CA certificate file to verify the server with (tls = \"required\"); "
                         "default: the system's CA store",
                    doc="the CA certificate file to verify the server with (tls = "
                        "\"required\"); left out, the system's CA store"),
    "connect_timeout": Field((int, float), default=DEFAULT_CONNECT_TIMEOUT, minimum=0.1,
                             maximum=120,
                             doc="seconds to wait for the server to accept the connection"),
})


def section_problems(section: Mapping[str, Any], where: str = "mysql") -> list[Problem]:
    """Rules that involve two keys at once."""
    problems: list[Problem] = []
    kill = section.get("kill_blockers_after")
    wait = section.get("lock_wait_seconds", DEFAULT_LOCK_WAIT)
    if isinstance(kill, int | float) and isinstance(wait, int | float) and kill >= wait:
        problems.append(Problem(
            f"{where}.kill_blockers_after",
            f"{kill:g} is not below lock_wait_seconds ({wait:g}), so it could never act",
            "set kill_blockers_after lower than lock_wait_seconds, or leave it out",
        ))
    if section.get("level") == "auto" and section.get("lock", "auto") != "auto":
        problems.append(Problem(f"{where}.level",
                                f'"auto" needs lock = "auto"; lock = "{section.get("lock")}" '
                                "is used as configured, whatever the caller freezes",
                                'remove the lock key (or set lock = "auto"), or set '
                                'level = "full"'))
    if section.get("tls_ca") is not None and section.get("tls", "auto") != "required":
        problems.append(Problem(f"{where}.tls_ca", "is only used with tls = \"required\"",
                                'set tls = "required", or remove tls_ca'))
    return problems


@dataclass(frozen=True)
class MySQLOptions:
    """A validated section, typed."""

    host: str = DEFAULT_HOST
    port: int = DEFAULT_PORT
    unix_socket: str | None = None
    user: str = DEFAULT_USER
    password_file: str | None = None
    lock: str = "auto"
    level: str = "full"
    lock_wait_seconds: float = DEFAULT_LOCK_WAIT
    kill_blockers_after: float | None = None
    connect_timeout: float = DEFAULT_CONNECT_TIMEOUT
    tls: str = "auto"
    tls_ca: str | None = None

    @classmethod
    def from_mapping(cls, options: Mapping[str, Any], where: str = "mysql") -> MySQLOptions:
        """Validate (again: a core may hand over raw options) and build; every problem at once."""
        problems: list[Problem] = []
        data = SCHEMA.validate({k: v for k, v in options.items() if k != "name"}, where,
                               problems)
        problems.extend(section_problems(data, where))
        if problems:
            raise ConfigError(f"[[mysql]] section {where}", problems)
        return cls(
            host=data["host"], port=data["port"], unix_socket=data.get("unix_socket"),
            user=data["user"], password_file=data.get("password_file"), lock=data["lock"],
            level=data["level"],
            lock_wait_seconds=float(data["lock_wait_seconds"]),
            kill_blockers_after=(float(data["kill_blockers_after"])
                                 if data.get("kill_blockers_after") is not None else None),
            connect_timeout=float(data["connect_timeout"]),
            tls=data["tls"], tls_ca=data.get("tls_ca"),
        )

    @property
    def address(self) -> str:
        if self.unix_socket:
            return f"{self.user}@unix:{self.unix_socket}"
        return f"{self.user}@{self.host}:{self.port}"


def read_password(path: str) -> str:
    """The first line of a trusted secret file (root-owned, no group/other bits).

    The file is checked and read on the same descriptor (quiesce.security.open_trusted).
    """
    from quiesce.security import open_trusted

    with open_trusted(path, "secret") as trusted:
        raw = trusted.read_bytes(max_bytes=64 * 1024)
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise EngineError(f"{path}: the password file is not UTF-8 text",
                          hint="write the password as plain UTF-8 on the first line") from exc
    first = text.split("\n", 1)[0].removesuffix("\r")
    if not first:
        raise EngineError(f"{path}: the first line is empty",
                          hint="write the password on the first line of the file")
    return first
