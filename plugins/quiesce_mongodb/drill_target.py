"""The drill's MongoDB side: transfers in multi-document transactions, validate after restore.

The live server runs as a one-member replica set (transactions need one); a restored copy
starts standalone, since its stored replica-set config names the old host and port. The
journal lives on the second disk (the provider links ``dbpath/journal`` there).
"""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Any

from quiesce.harness.drill.targets.base import ACCOUNTS, DATABASE, INITIAL_BALANCE, Target
from quiesce.harness.drill.verify import Check, RestoredState
from quiesce.harness.drill.workload import OutcomeUnknown, Transfer
from quiesce.harness.servers.base import Server, ServerLayout

TIMEOUT_MS = 30000


def _client(server: Server) -> Any:
    import pymongo

    c = server.connection
    uri = c.extra.get("uri") or f"mongodb://{c.host}:{c.port}/?directConnection=true"
    kwargs: dict[str, Any] = {"serverSelectionTimeoutMS": 10000, "connectTimeoutMS": 10000,
                              "socketTimeoutMS": TIMEOUT_MS}
    if c.user:
        kwargs.update(username=c.user, password=c.password)
    return pymongo.MongoClient(uri, **kwargs)


class MongoSession:
    def __init__(self, server: Server) -> None:
        import pymongo.errors

        self._errors = pymongo.errors
        self.client = _client(server)
        self.db = self.client[DATABASE]

    def transfer(self, t: Transfer) -> None:
        from pymongo.write_concern import WriteConcern

        wc = WriteConcern(w=1, j=True)
        with self.client.start_session() as session:
            session.start_transaction(write_concern=wc)
            try:
                accounts = self.db.get_collection("accounts")
                for account, delta in sorted(((t.src, -t.amount), (t.dst, t.amount))):
                    accounts.update_one({"_id": account}, {"$inc": {"balance": delta}},
                                        session=session)
                self.db.ledger.insert_one({"_id": t.id, "src": t.src, "dst": t.dst,
                                           "amount": t.amount}, session=session)
            except self._errors.PyMongoError:
                with contextlib.suppress(self._errors.PyMongoError):
                    session.abort_transaction()
                raise
            try:
                session.commit_transaction()
            except self._errors.PyMongoError as exc:
                raise OutcomeUnknown(str(exc)) from exc

    def close(self) -> None:
        self.client.close()


class MongoTarget(Target):
    engine = "mongodb"
    section = "mongodb"
    docker_profile = "quiesce_mongodb.image:profile"
    docker_replset = "rs0"

    def check_available(self) -> None:
        if self.backend.name == "docker":
            return
        from quiesce_mongodb.server import find_mongod

        find_mongod()

    def new_server(self, layout: ServerLayout) -> Server:
        if self.backend.name == "docker":
            return self.docker_server(layout, fresh=True)
        from quiesce_mongodb.server import LocalMongod

        server = LocalMongod(layout, replset="rs0")
        server.start()
        return server

    def open_restored(self, layout: ServerLayout, original: Server) -> Server:
        if self.backend.name == "docker":
            return self.docker_server(layout, fresh=False, original=original)
        from quiesce_mongodb.server import LocalMongod

        server = LocalMongod.open_existing(layout)
        server.start()
        return server

    def toml_section(self, server: Server, config_dir: Path) -> str:
        c = server.connection
        uri = c.extra.get("uri") or f"mongodb://{c.host}:{c.port}/?directConnection=true"
        if c.password:
            import os
            from urllib.parse import quote

            secret = config_dir / "mongodb-uri"
            fd = os.open(secret, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
            with open(fd, "w", encoding="utf-8") as fh:
                fh.write(uri.replace("mongodb://",
                                     f"mongodb://{quote(c.user)}:{quote(c.password)}@", 1))
            return f'[[mongodb]]\nname = "drill"\nuri_file = "{secret}"\n'
        return f'[[mongodb]]\nname = "drill"\nuri = "{uri}"\n'

    def setup_schema(self, server: Server) -> None:
        client = _client(server)
        try:
            db = client[DATABASE]
            db.accounts.insert_many([{"_id": i, "balance": INITIAL_BALANCE}
                                     for i in range(ACCOUNTS)])
            db.create_collection("ledger")
        finally:
            client.close()

    def session(self, server: Server) -> MongoSession:
        return MongoSession(server)

    def checkpoint(self, server: Server) -> str:
        client = _client(server)
        try:
            client.admin.command("fsync", 1)
        finally:
            client.close()
        return "fsync (WiredTiger checkpoint)"

    def read_state(self, server: Server) -> RestoredState:
        client = _client(server)
        try:
            db = client[DATABASE]
            balances = {int(d["_id"]): int(d["balance"]) for d in db.accounts.find()}
            ledger = {int(d["_id"]): (int(d["src"]), int(d["dst"]), int(d["amount"]))
                      for d in db.ledger.find()}
        finally:
            client.close()
        return RestoredState(balances=balances, ledger=ledger)

    def integrity_checks(self, server: Server) -> list[Check]:
        import pymongo.errors

        client = _client(server)
        problems: list[str] = []
        names: list[str] = []
        try:
            db = client[DATABASE]
            names = db.list_collection_names()
            for name in names:
                result = db.command("validate", name, full=True)
                if not result.get("valid", False):
                    problems.append(f"{name}: {result.get('errors') or result}")
        except pymongo.errors.PyMongoError as exc:
            return [Check("validate", False, f"validate could not run: {exc}")]
        finally:
            client.close()
        return [Check("validate", not problems,
                      f"validate(full) clean on {len(names)} collections" if not problems else
                      "; ".join(problems[:3]))]
