"""PyMySQL sessions for quiesce: one dedicated, never-reconnecting connection per role.

PyMySQL is imported inside the functions, never at module level, so loading the plugin (and
validating a config) does not need the driver.

Every call is bounded: ``connect_timeout`` for the handshake and a socket read/write timeout
set before each statement (:func:`set_io_timeout`) on top of the server-side
``lock_wait_timeout``. PyMySQL reads its timeouts from the connection object on every socket
operation, which is what lets one long-lived connection use a different bound per statement.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from quiesce.deadline import Deadline
from quiesce.errors import EngineError
from quiesce_mysql.config import MySQLOptions

# Server error numbers (mysqld_error.h / MariaDB's errmsg) and client ones (errmsg.h).
ER_DBACCESS_DENIED = 1044
ER_ACCESS_DENIED = 1045
ER_BAD_DB = 1049
ER_NO_SUCH_THREAD = 1094
ER_KILL_DENIED = 1095
ER_TABLEACCESS_DENIED = 1142
ER_NO_SUCH_TABLE = 1146
ER_UNKNOWN_TABLE = 1109  # e.g. an information_schema view whose plugin is not installed
ER_LOCK_WAIT_TIMEOUT = 1205
ER_SPECIFIC_ACCESS_DENIED = 1227
CR_CONNECTION_ERROR = 2002
CR_CONN_HOST_ERROR = 2003
CR_SERVER_GONE = 2006
CR_SERVER_LOST = 2013
CR_SERVER_LOST_EXTENDED = 2055

ACCESS_DENIED = frozenset({ER_DBACCESS_DENIED, ER_ACCESS_DENIED, ER_TABLEACCESS_DENIED,
                           ER_SPECIFIC_ACCESS_DENIED, 1370, 1227, 1698})
CONNECTION_LOST = frozenset({CR_SERVER_GONE, CR_SERVER_LOST, CR_SERVER_LOST_EXTENDED,
                             CR_CONNECTION_ERROR, CR_CONN_HOST_ERROR, 0})

# Margin given to the client socket beyond what the server itself bounds (lock_wait_timeout):
# the server answers first; the socket timeout only catches a server that stopped answering.
IO_MARGIN = 3.0
DEFAULT_IO_TIMEOUT = 10.0


def error_number(exc: BaseException) -> int | None:
    """The MySQL error number carried by a PyMySQL exception, or None."""
    args = getattr(exc, "args", ())
    if args and isinstance(args[0], int):
        return args[0]
    return None


def is_connection_lost(exc: BaseException) -> bool:
    """True for errors meaning the session is gone (socket closed, timeout, server restart)."""
    import pymysql

    if isinstance(exc, pymysql.err.InterfaceError):  # "(0, '')": PyMySQL closed the socket
        return True
    if isinstance(exc, OSError | EOFError):
        return True
    number = error_number(exc)
    return isinstance(exc, pymysql.err.OperationalError) and number in CONNECTION_LOST


def describe_error(exc: BaseException) -> str:
    number = error_number(exc)
    args: tuple[Any, ...] = tuple(getattr(exc, "args", ()))
    if number is not None and len(args) > 1:
        return f"error {number}: {args[1]}"
    return f"{type(exc).__name__}: {exc}"


@dataclass
class Endpoint:
    """Where and as whom to connect; the password is kept in memory only."""

    options: MySQLOptions
    password: str = ""

    @property
    def address(self) -> str:
        return self.options.address


def tls_arguments(options: MySQLOptions) -> dict[str, Any]:
    """PyMySQL's TLS arguments for the section's ``tls`` mode."""
    mode = options.tls
    if mode == "auto":
        mode = "disabled" if options.unix_socket else "preferred"
    if mode == "disabled":
        return {"ssl_disabled": True}
    if mode == "required":
        # An SSLContext makes TLS mandatory; create_default_context verifies the certificate
        # chain and the host name (against tls_ca, or the system's CA store).
        import ssl

        return {"ssl": ssl.create_default_context(cafile=options.tls_ca)}
    return {}  # preferred: the driver's opportunistic TLS


def connect(endpoint: Endpoint, deadline: Deadline, *, purpose: str) -> Any:
    """A new autocommit connection, bounded by ``connect_timeout`` and the deadline.

    Raises EngineError with what to fix (unreachable server, wrong password, ...).
    """
    import pymysql

    options = endpoint.options
    timeout = min(options.connect_timeout, deadline.remaining())
    if timeout <= 0.05:
        raise EngineError(f"no time left to connect to {endpoint.address} ({purpose})",
                          hint="raise pre_timeout_seconds in quiesce.toml")
    kwargs: dict[str, Any] = {
        "user": options.user,
        "password": endpoint.password,
        "connect_timeout": timeout,
        # The handshake is read with read_timeout: bound it like the connect itself, so a
        # server that accepts but never greets fails within connect_timeout too.
        "read_timeout": timeout,
        "write_timeout": timeout,
        "autocommit": True,
        "charset": "utf8mb4",
        "program_name": f"quiesce-{purpose}",
        "local_infile": False,
    }
    if options.unix_socket:
        missing = socket_problem(options.unix_socket)
        if missing is not None:
            raise EngineError(missing, hint=FIND_SOCKET_HINT)
        kwargs["unix_socket"] = options.unix_socket
    else:
        kwargs["host"] = options.host
        kwargs["port"] = options.port
    kwargs.update(tls_arguments(options))
    try:
        conn = pymysql.connect(**kwargs)
    except pymysql.err.MySQLError as exc:
        number = error_number(exc)
        if number in (ER_ACCESS_DENIED, 1698):
            raise EngineError(
                f"{endpoint.address}: access denied ({describe_error(exc)})",
                hint="check user and the password in password_file (its first line), and that "
                     "the account may connect from this host",
            ) from exc
        cause = _os_cause(exc)
        handshake = number in (CR_SERVER_LOST, CR_SERVER_GONE)  # connected, then silence
        if number in (CR_CONN_HOST_ERROR, CR_CONNECTION_ERROR) or (cause is not None
                                                                   and not handshake):
            message, fix = _unreachable(options, exc, cause, timeout)
            raise EngineError(message, hint=fix) from exc
        if number in (CR_SERVER_LOST, CR_SERVER_GONE):
            where = options.unix_socket or f"{options.host}:{options.port}"
            raise EngineError(
                f"the server at {where} accepted the connection but did not answer the "
                f"handshake within {timeout:g}s ({describe_error(exc)})",
                hint="check that host/port or unix_socket point at a MySQL/MariaDB server "
                     "(not a proxy or another service) and that it is not overloaded",
            ) from exc
        raise EngineError(f"{endpoint.address}: cannot connect ({describe_error(exc)})",
                          hint="check the [[mysql]] section of quiesce.toml") from exc
    set_io_timeout(conn, DEFAULT_IO_TIMEOUT)
    return conn


FIND_SOCKET_HINT = (
    "set unix_socket in quiesce.toml to the server's real socket: ask a running server with "
    "mysql -e 'SELECT @@socket' (or: mysqladmin variables | grep socket), or read the socket "
    "setting of its configuration (my_print_defaults mysqld | grep socket); Debian and "
    "Ubuntu use /run/mysqld/mysqld.sock")


def socket_problem(path: str) -> str | None:
    """Why nothing can listen at ``path`` (missing, not a socket), said before any attempt:
    no point waiting connect_timeout for a file that is not there."""
    import stat

    try:
        st = os.stat(path)
    except FileNotFoundError:
        return (f"no MySQL/MariaDB socket at {path}: the file does not exist (the server is not "
                "running, or its socket is elsewhere)")
    except OSError as exc:
        return f"cannot use the MySQL/MariaDB socket {path}: {exc.strerror}"
    if not stat.S_ISSOCK(st.st_mode):
        return f"{path} is not a socket, so no MySQL/MariaDB server listens there"
    return None


def _os_cause(exc: BaseException) -> OSError | None:
    """The OSError under a PyMySQL connection error (it keeps it as original_exception)."""
    for candidate in (getattr(exc, "original_exception", None), exc.__cause__,
                      exc.__context__):
        if isinstance(candidate, OSError):
            return candidate
    return None


def _unreachable(options: MySQLOptions, exc: BaseException, cause: OSError | None,
                 timeout: float) -> tuple[str, str]:
    """The message and fix for a server that could not be reached. PyMySQL's own text names
    its ``host`` ('localhost') even for a socket, so the socket is named here instead; "within
    N s" only when the time really ran out."""
    timed_out = isinstance(cause, TimeoutError)
    if options.unix_socket:
        path = options.unix_socket
        if isinstance(cause, FileNotFoundError):
            return (f"no MySQL/MariaDB socket at {path}: the file does not exist (the server is "
                    "not running, or its socket is elsewhere)", FIND_SOCKET_HINT)
        if isinstance(cause, ConnectionRefusedError):
            return (f"nothing listens on the socket {path}: a socket file is left there but no "
                    "server accepts on it (the server is stopped, or now uses another socket)",
                    FIND_SOCKET_HINT)
        if isinstance(cause, PermissionError):
            return (f"permission denied on the socket {path}",
                    "run quiesce as root, or give its user access to the socket's directory")
        reason = cause.strerror if cause is not None and cause.strerror else describe_error(exc)
        return (f"cannot reach the MySQL/MariaDB server on the socket {path}"
                + (f" within {timeout:g}s" if timed_out else "") + f": {reason}",
                FIND_SOCKET_HINT)
    where = f"{options.host}:{options.port}"
    reason = cause.strerror if cause is not None and cause.strerror else describe_error(exc)
    if timed_out:
        reason = f"no answer within {timeout:g}s"
    return (f"cannot reach the MySQL/MariaDB server at {where}: {reason}",
            "check that the server runs and listens there (SELECT @@port, @@bind_address), or "
            "that host/port or unix_socket in quiesce.toml point at it")


def set_io_timeout(conn: Any, seconds: float) -> None:
    """Bound the next socket reads/writes of ``conn`` (PyMySQL reads these on every call)."""
    value = max(0.5, float(seconds))
    conn._read_timeout = value
    conn._write_timeout = value


def run(conn: Any, sql: str, params: Sequence[Any] | None = None, *,
        timeout: float = DEFAULT_IO_TIMEOUT) -> list[tuple[Any, ...]]:
    """Execute one statement, return all rows (tuples)."""
    set_io_timeout(conn, timeout)
    with conn.cursor() as cur:
        cur.execute(sql, params)
        return list(cur.fetchall())


def run_dicts(conn: Any, sql: str, params: Sequence[Any] | None = None, *,
              timeout: float = DEFAULT_IO_TIMEOUT) -> list[dict[str, Any]]:
    """Execute one statement, return all rows as dicts (column name -> value)."""
    import pymysql.cursors

    set_io_timeout(conn, timeout)
    with conn.cursor(pymysql.cursors.DictCursor) as cur:
        cur.execute(sql, params)
        return [dict(row) for row in cur.fetchall()]


def close_quietly(conn: Any, *, graceful: bool = True) -> None:
    """Close a connection without raising. ``graceful`` sends COM_QUIT first (bounded)."""
    if conn is None:
        return
    try:
        if graceful and getattr(conn, "_sock", None) is not None:
            set_io_timeout(conn, 2.0)
            conn.close()
            return
    except Exception:  # noqa: S110 - closing is best effort; the socket is dropped below
        pass
    with contextlib.suppress(Exception):
        conn._force_close()
