"""The drill's MySQL/MariaDB side: InnoDB transfers plus MyISAM tables only a real lock protects.

Workload per transfer: one InnoDB transaction (two balance updates and the ledger row); once
its commit is acknowledged, two MyISAM statements: the ledger id into ``ledger_mirror`` and a
two-row ``INSERT`` into ``pairs``. MyISAM has no crash recovery: a snapshot of its files is
only trustworthy when every writer was stopped at a statement boundary and the tables were
flushed and closed - which is what the lock does. Checks after restore: the mirror never runs
ahead of InnoDB (a mirror row without its ledger row proves the MyISAM and InnoDB files come
from different instants), no pair is torn, and CHECK TABLE is clean on every table.

``mysql`` on a machine with only MariaDB installed runs the MariaDB server; the report says so.

With ``--level auto`` the mirror and pairs tables are InnoDB too: the light level is only ever
chosen for a server whose tables are all transactional (with MyISAM tables it falls back to the
full level, which the default schema exercises).
"""

from __future__ import annotations

import contextlib
import re
import time
from pathlib import Path
from typing import Any

from quiesce.errors import DrillError, EngineUnavailable
from quiesce.harness.drill.targets.base import (
    ACCOUNTS,
    DATABASE,
    INITIAL_BALANCE,
    Target,
    sql_transfer,
)
from quiesce.harness.drill.verify import Check, RestoredState
from quiesce.harness.drill.workload import Transfer
from quiesce.harness.servers.base import Server, ServerLayout

READ_TIMEOUT = 60
# A redo log that fits the small log disk.
SETTINGS = {"innodb-log-file-size": "48M"}
INSTALL_HINT = "install the MariaDB or MySQL server (Debian/Ubuntu: apt-get install mariadb-server)"


def _connect(server: Server, *, database: str | None = DATABASE, autocommit: bool = True,
             read_timeout: int = READ_TIMEOUT) -> Any:
    import pymysql

    c = server.connection
    kwargs: dict[str, Any] = {"user": c.user, "password": c.password or "",
                              "connect_timeout": 10, "read_timeout": read_timeout,
                              "write_timeout": read_timeout, "autocommit": autocommit}
    if database:
        kwargs["database"] = database
    if c.unix_socket:
        kwargs["unix_socket"] = c.unix_socket
    else:
        kwargs.update(host=c.host, port=c.port)
    return pymysql.connect(**kwargs)


class MySession:
    def __init__(self, server: Server) -> None:
        import pymysql

        self._pymysql = pymysql
        self.conn = _connect(server, autocommit=False)

    def transfer(self, t: Transfer) -> None:
        sql_transfer(self.conn, self._pymysql.Error, t)
        # Acknowledged. The MyISAM side follows, one statement each (autocommit semantics).
        with self.conn.cursor() as cur:
            cur.execute("INSERT INTO ledger_mirror (id) VALUES (%s)", (t.id,))
            cur.execute("INSERT INTO pairs (id, side) VALUES (%s, 'a'), (%s, 'b')", (t.id, t.id))
        self.conn.commit()

    def close(self) -> None:
        self.conn.close()


class MySQLTarget(Target):
    section = "mysql"
    #: The drill's --level: "auto" writes level = "auto" and makes every table InnoDB.
    level = "full"
    docker_profile = "quiesce_mysql.image:profile"

    def __init__(self, backend: Any, engine: str) -> None:
        super().__init__(backend)
        self.engine = engine

    def check_available(self) -> None:
        if self.backend.name == "docker":
            return
        from quiesce_mysql.server import find_server_binary, server_flavour

        binary = find_server_binary()
        flavour, version = server_flavour(binary)
        if self.engine == "mysql" and flavour == "mariadb":
            self.notes.append(f"--engine mysql: no MySQL-flavour mysqld on this machine, so the "
                              f"drill runs the local MariaDB {version} server ({binary})")
        if self.engine == "mariadb" and flavour == "mysql":
            raise EngineUnavailable(f"--engine mariadb: {binary} is MySQL {version}, not MariaDB",
                                    hint="install mariadb-server, or use --engine mysql")

    def _cls(self) -> Any:
        from quiesce_mysql.server import LocalMySQL

        return LocalMySQL

    def new_server(self, layout: ServerLayout) -> Server:
        if self.backend.name == "docker":
            return self.docker_server(layout, fresh=True)
        server = self._cls()(layout, settings=SETTINGS)
        server.start()
        return server

    def open_restored(self, layout: ServerLayout, original: Server) -> Server:
        if self.backend.name == "docker":
            return self.docker_server(layout, fresh=False, original=original)
        return self._cls().open_existing(layout, settings=SETTINGS)

    def toml_section(self, server: Server, config_dir: Path) -> str:
        c = server.connection
        lines = ["[[mysql]]", 'name = "drill"', f'user = "{c.user}"']
        if c.unix_socket:
            lines.append(f'unix_socket = "{c.unix_socket}"')
        else:
            lines += [f'host = "{c.host}"', f"port = {c.port}"]
        if c.password:
            secret = config_dir / "mysql-password"
            fd = _create_secret(secret)
            with open(fd, "w", encoding="utf-8") as fh:
                fh.write(c.password)
            lines.append(f'password_file = "{secret}"')
        return "\n".join(lines) + "\n"

    def setup_schema(self, server: Server) -> None:
        with contextlib.closing(_connect(server, database=None)) as conn, conn.cursor() as cur:
            cur.execute(f"CREATE DATABASE {DATABASE}")
            cur.execute(f"USE {DATABASE}")
            cur.execute("CREATE TABLE accounts (id INT PRIMARY KEY, balance BIGINT NOT NULL) "
                        "ENGINE=InnoDB")
            cur.execute("CREATE TABLE ledger (id BIGINT PRIMARY KEY, src INT NOT NULL, "
                        "dst INT NOT NULL, amount INT NOT NULL, KEY (src)) ENGINE=InnoDB")
            side = "InnoDB" if self.level == "auto" else "MyISAM"
            cur.execute(f"CREATE TABLE ledger_mirror (id BIGINT PRIMARY KEY) ENGINE={side}")
            cur.execute("CREATE TABLE pairs (id BIGINT NOT NULL, side CHAR(1) NOT NULL, "
                        f"PRIMARY KEY (id, side)) ENGINE={side}")
            cur.executemany("INSERT INTO accounts VALUES (%s, %s)",
                            [(i, INITIAL_BALANCE) for i in range(ACCOUNTS)])

    def session(self, server: Server) -> MySession:
        return MySession(server)

    def checkpoint(self, server: Server) -> str:
        """Flush MyISAM and push InnoDB's checkpoint past the current end of the redo log."""
        with contextlib.closing(_connect(server, database=None)) as conn, conn.cursor() as cur:
            if self.level != "auto":  # InnoDB only then; FLUSH would wait for a BLOCK_DDL hold
                cur.execute("FLUSH LOCAL TABLES")
            lsn = _status(cur, "Innodb_lsn_current")
            cur.execute("SELECT @@GLOBAL.innodb_max_dirty_pages_pct")
            (saved,) = cur.fetchone()
            cur.execute("SET GLOBAL innodb_max_dirty_pages_pct = 0")
            try:
                deadline = time.monotonic() + 20
                checkpoint = _status(cur, "Innodb_lsn_last_checkpoint")
                while checkpoint is not None and lsn is not None and checkpoint < lsn:
                    if time.monotonic() > deadline:
                        break
                    time.sleep(0.05)
                    checkpoint = _status(cur, "Innodb_lsn_last_checkpoint")
            finally:
                cur.execute("SET GLOBAL innodb_max_dirty_pages_pct = %s", (saved,))
        flushed = "FLUSH LOCAL TABLES; " if self.level != "auto" else ""
        return (f"{flushed}InnoDB checkpoint LSN {checkpoint} "
                f"(redo LSN was {lsn} before)")

    def read_state(self, server: Server) -> RestoredState:
        with contextlib.closing(_connect(server)) as conn, conn.cursor() as cur:
            cur.execute("SELECT id, balance FROM accounts")
            balances = {int(i): int(b) for i, b in cur.fetchall()}
            cur.execute("SELECT id, src, dst, amount FROM ledger")
            ledger = {int(i): (int(s), int(d), int(a)) for i, s, d, a in cur.fetchall()}
            cur.execute("SELECT id FROM ledger_mirror")
            mirror = {int(r[0]) for r in cur.fetchall()}
            cur.execute("SELECT id, COUNT(*) FROM pairs GROUP BY id")
            pairs = {int(i): int(n) for i, n in cur.fetchall()}
        return RestoredState(balances=balances, ledger=ledger, mirror=mirror, pairs=pairs)

    def integrity_checks(self, server: Server) -> list[Check]:
        """CHECK TABLE ... EXTENDED on every table of the drill's database."""
        import pymysql

        problems: list[str] = []
        tables: list[str] = []
        try:
            with contextlib.closing(_connect(server, read_timeout=600)) as conn, \
                    conn.cursor() as cur:
                cur.execute("SHOW FULL TABLES WHERE Table_type = 'BASE TABLE'")
                tables = [r[0] for r in cur.fetchall()]
                for table in tables:
                    cur.execute(f"CHECK TABLE `{table}` EXTENDED")
                    rows = cur.fetchall()
                    for _, _, msg_type, msg_text in rows:
                        if msg_type.lower() in ("error", "warning") or (
                                msg_type.lower() == "status" and msg_text != "OK"):
                            problems.append(f"{table}: {msg_type} {msg_text}")
        except pymysql.Error as exc:
            return [Check("check_table", False, f"CHECK TABLE could not run: {exc}")]
        return [Check("check_table", not problems,
                      f"CHECK TABLE EXTENDED clean on {len(tables)} tables "
                      f"({', '.join(tables)})" if not problems else
                      f"{len(problems)} problem(s): " + "; ".join(problems[:3]))]

    log_clean_text = "no [ERROR] and no MyISAM table repair while recovering and verifying"

    def log_path(self, server: Server) -> Path | None:
        path = getattr(server, "log_file", None) or getattr(server, "error_log", None)
        return Path(path) if path else None

    def bad_log_lines(self, text: str) -> list[str]:
        """InnoDB/MyISAM errors (LSN in the future, crashed or repaired tables)."""
        return [line.strip() for line in text.splitlines()
                if re.search(r"\[ERROR\]|is marked as crashed|Checking table|Recovering table",
                             line)]

def _status(cur: Any, name: str) -> int | None:
    cur.execute("SHOW GLOBAL STATUS LIKE %s", (name,))
    row = cur.fetchone()
    try:
        return int(row[1]) if row else None
    except (TypeError, ValueError):
        return None


def _create_secret(path: Path) -> int:
    import os

    try:
        return os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
    except OSError as exc:
        raise DrillError(f"cannot create {path}: {exc}") from exc
