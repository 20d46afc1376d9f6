"""The schema the MariaDB/MySQL tests write to, and the probe that nothing is locked."""

from __future__ import annotations

from typing import Any


def setup_schema(server: Any) -> None:
    """A fresh ``app`` database: ``app.inno`` (InnoDB) and ``app.myi`` (MyISAM, one row)."""
    server.execute("DROP DATABASE IF EXISTS app")
    server.execute("CREATE DATABASE app")
    server.execute("CREATE TABLE app.inno (id INT AUTO_INCREMENT PRIMARY KEY, v INT) "
                   "ENGINE=InnoDB")
    server.execute("CREATE TABLE app.myi (id INT AUTO_INCREMENT PRIMARY KEY, v INT) "
                   "ENGINE=MyISAM")
    server.execute("INSERT INTO app.myi (v) VALUES (1)")


def nothing_locked(server: Any, *, myisam: bool = True) -> None:
    """No backup stage and no global read lock is held by anyone on ``server``; otherwise
    the server's own error (lock wait timeout) is raised. ``myisam=False`` leaves out the
    write to app.myi, for tests whose own long statement holds that table's lock."""
    conn = server.connect(read_timeout=20)
    try:
        with conn.cursor() as cur:
            cur.execute("SET SESSION lock_wait_timeout = 0")
            cur.execute("BACKUP STAGE START")  # fails with 1205 if a backup stage is active
            cur.execute("BACKUP STAGE END")
            cur.execute("INSERT INTO app.inno (v) VALUES (42)")  # blocked by FTWRL
            if myisam:
                cur.execute("INSERT INTO app.myi (v) VALUES (42)")
    finally:
        conn.close()


def unlocked(server: Any, *, myisam: bool = True) -> bool:
    """:func:`nothing_locked` as a condition."""
    try:
        nothing_locked(server, myisam=myisam)
    except Exception:
        return False
    return True


def write_error(server: Any, value: int = 7) -> int | None:
    """The error code of an InnoDB insert into app.inno with lock_wait_timeout = 0 (None: it
    went through). Held by a lock it fails at once with 1205; a write stuck on a frozen
    filesystem would end in a read timeout (2013) instead."""
    return statement_error(server, ("INSERT INTO app.inno (v) VALUES (%s)", (value,)))


def ddl_error(server: Any) -> int | None:
    """:func:`statement_error` of a CREATE and DROP TABLE in ``app``: 1205 while DDL is
    blocked (e.g. BACKUP STAGE BLOCK_DDL), None when it went through."""
    return statement_error(server,
                           ("CREATE TABLE IF NOT EXISTS app.ddl_probe (id INT) ENGINE=InnoDB",
                            None),
                           ("DROP TABLE app.ddl_probe", None))


def statement_error(server: Any, *statements: tuple[str, tuple[Any, ...] | None]) -> int | None:
    """Run ``statements`` (sql, params) in a fresh session with lock_wait_timeout = 0 and
    commit: the server's error code, or None when every one went through."""
    import pymysql

    conn = server.connect(read_timeout=20)
    try:
        with conn.cursor() as cur:
            cur.execute("SET SESSION lock_wait_timeout = 0")
            for sql, params in statements:
                cur.execute(sql, params)
        conn.commit()
    except pymysql.err.MySQLError as exc:
        return int(exc.args[0])
    finally:
        conn.close()
    return None
