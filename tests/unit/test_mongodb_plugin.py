"""The mongodb plugin as the core sees it, and the engine's bounds against real sockets.

No MongoDB server exists here; these tests use real pymongo against real sockets that refuse
or never answer, to prove every call is bounded and errors say what to do.
"""

from __future__ import annotations

import socket
import subprocess
import sys
import threading
from collections.abc import Iterator

import pytest

from quiesce.deadline import Deadline
from quiesce.engine import InstanceSettings
from quiesce.errors import ConfigError, EngineError
from quiesce.harness.servers.base import free_port
from quiesce.plugins import Plugins
from quiesce_mongodb.engine import MongoQuiescer


def settings(**options: object) -> InstanceSettings:
    return InstanceSettings(engine="mongodb", name="main", options=options)


def test_plugin_registers_through_the_entry_point_without_importing_pymongo() -> None:
    code = ("import sys\n"
            "from quiesce.plugins import Plugins\n"
            "p = Plugins(); p.load_entry_points(only=['mongodb'])\n"
            "e = p.engines.get('mongodb')\n"
            "print(e.name, e.secret_file_keys, e.recover is not None, 'pymongo' in sys.modules)\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True, timeout=60).stdout.split()
    assert out == ["mongodb", "('uri_file',)", "True", "False"]


def test_factory_builds_a_quiescer_with_the_schema_defaults() -> None:
    plugins = Plugins()
    plugins.load_entry_points(only=["mongodb"])
    engine = plugins.engines.get("mongodb")
    assert "name" not in engine.schema.fields  # the core adds it
    quiescer = engine.factory(settings(uri="mongodb://127.0.0.1:1/"))
    assert isinstance(quiescer, MongoQuiescer)
    assert quiescer.recovery_token() is None  # nothing held yet
    quiescer.abort()  # before prepare: nothing to do, never raises
    quiescer.close()


def test_inline_password_is_refused_before_connecting() -> None:
    quiescer = MongoQuiescer(settings(uri="mongodb://u:secret@127.0.0.1:1/"))
    with pytest.raises(ConfigError, match="password") as info:
        quiescer.prepare(Deadline(5))
    assert "secret" not in str(info.value)
    assert quiescer.session is None


def test_unreachable_server_is_a_bounded_engine_error() -> None:
    port = free_port()  # nothing listens there
    quiescer = MongoQuiescer(settings(uri=f"mongodb://127.0.0.1:{port}/",
                                      connect_timeout=0.5))
    try:
        with pytest.raises(EngineError) as info:
            quiescer.prepare(Deadline(10))
        assert info.value.hint  # says what to check
        assert quiescer.recovery_token() is None
        with pytest.raises(EngineError, match="without a held lock"):
            quiescer.release(Deadline(1))
        quiescer.abort()
    finally:
        quiescer.close()


@pytest.fixture
def silent_server() -> Iterator[int]:
    """A TCP port that accepts connections and never answers (a hung server)."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(8)
    accepted: list[socket.socket] = []
    stop = threading.Event()

    def accept() -> None:
        listener.settimeout(0.2)
        while not stop.is_set():
            try:
                conn, _ = listener.accept()
                accepted.append(conn)
            except OSError:
                continue

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    yield listener.getsockname()[1]
    stop.set()
    thread.join(timeout=5)
    for conn in accepted:
        conn.close()
    listener.close()


@pytest.mark.timeout(60)
def test_a_server_that_never_answers_cannot_stall_prepare(silent_server: int) -> None:
    quiescer = MongoQuiescer(settings(uri=f"mongodb://127.0.0.1:{silent_server}/",
                                      connect_timeout=1))
    try:
        with pytest.raises(EngineError, match="timed out"):
            quiescer.prepare(Deadline(3))
    finally:
        quiescer.close()
