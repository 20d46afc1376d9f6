"""A small TCP proxy on loopback that delays every new connection, for tests of slow servers.

:class:`DelayProxy` listens on 127.0.0.1 (a free port), accepts a client at once, waits
``delay`` seconds, then connects to the target (which must be a loopback address) and pipes
bytes both ways until either side closes. To the client the server looks slow to answer its
first packet, exactly as a server behind a congested network or a stalled load balancer does:
the TCP connect succeeds, the greeting comes late.

Bounded in every direction: at most ``max_connections`` clients are accepted (later ones are
closed at once), and the proxy stops by itself ``lifetime`` seconds after it started, closing
every socket, so a test that forgets to stop it cannot leave a thread piping forever. Use it
as a context manager; :meth:`DelayProxy.stop` is idempotent.
"""

from __future__ import annotations

import contextlib
import ipaddress
import select
import socket
import threading
import time

CHUNK = 65536


class DelayProxyError(Exception):
    """The proxy was asked to do something it refuses (a target that is not loopback)."""


class DelayProxy:
    """Delay each new connection ``delay`` seconds, then pipe it to ``target_host:target_port``."""

    def __init__(self, target_host: str, target_port: int, delay: float, *,
                 lifetime: float = 120.0, max_connections: int = 16) -> None:
        try:
            loopback = ipaddress.ip_address(target_host).is_loopback
        except ValueError:
            loopback = False
        if not loopback:
            raise DelayProxyError(f"target {target_host!r} is not a loopback IP address; "
                                  "the proxy only forwards to 127.0.0.0/8 or ::1")
        if delay < 0 or lifetime <= 0 or max_connections < 1:
            raise DelayProxyError("delay must be >= 0, lifetime > 0, max_connections >= 1")
        self.target = (target_host, target_port)
        self.delay = delay
        self.lifetime = lifetime
        self.max_connections = max_connections
        self.accepted = 0  # clients accepted (and delayed)
        self.refused = 0  # clients closed at once: over max_connections, or proxy stopping
        self.forwarded = 0  # delayed clients whose upstream connection was made
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._sockets: set[socket.socket] = set()
        self._threads: list[threading.Thread] = []
        self._listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._listener.bind(("127.0.0.1", 0))
        self._listener.listen(max_connections)
        self.port: int = self._listener.getsockname()[1]
        self._deadline = time.monotonic() + lifetime
        self._acceptor = threading.Thread(target=self._accept_loop, daemon=True,
                                          name=f"delay-proxy-{self.port}")

    # ------------------------------------------------------------------ lifecycle
    def start(self) -> DelayProxy:
        self._acceptor.start()
        return self

    def __enter__(self) -> DelayProxy:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def stopped(self) -> bool:
        return self._stop.is_set()

    def stop(self, timeout: float = 10.0) -> None:
        """Stop accepting, close every socket and join every thread (bounded by ``timeout``)."""
        self._stop.set()
        with contextlib.suppress(OSError):
            self._listener.close()
        with self._lock:
            sockets = list(self._sockets)
        for sock in sockets:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
            with contextlib.suppress(OSError):
                sock.close()
        give_up = time.monotonic() + timeout
        for thread in [self._acceptor, *self._threads]:
            if thread.is_alive() and thread is not threading.current_thread():
                thread.join(max(0.0, give_up - time.monotonic()))

    def alive(self) -> bool:
        """True while any of the proxy's threads still runs."""
        return any(t.is_alive() for t in [self._acceptor, *self._threads])

    # ------------------------------------------------------------------ internals
    def _remaining(self) -> float:
        return self._deadline - time.monotonic()

    def _track(self, sock: socket.socket) -> bool:
        with self._lock:
            if self._stop.is_set():
                return False
            self._sockets.add(sock)
            return True

    def _close(self, sock: socket.socket) -> None:
        with self._lock:
            self._sockets.discard(sock)
        with contextlib.suppress(OSError):
            sock.close()

    def _accept_loop(self) -> None:
        try:
            while not self._stop.is_set():
                remaining = self._remaining()
                if remaining <= 0:
                    break
                try:
                    ready, _, _ = select.select([self._listener], [], [], min(0.2, remaining))
                except (OSError, ValueError):
                    break  # closed by stop()
                if not ready:
                    continue
                try:
                    client, _ = self._listener.accept()
                except OSError:
                    break
                if self.accepted >= self.max_connections or not self._track(client):
                    self.refused += 1
                    with contextlib.suppress(OSError):
                        client.close()
                    continue
                self.accepted += 1
                thread = threading.Thread(target=self._serve, args=(client,), daemon=True,
                                          name=f"delay-proxy-{self.port}-{self.accepted}")
                self._threads.append(thread)
                thread.start()
        finally:
            # Stopping by itself: the lifetime is over (or stop() was called).
            self._stop.set()
            with contextlib.suppress(OSError):
                self._listener.close()
            with self._lock:
                sockets = list(self._sockets)
            for sock in sockets:
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)

    def _serve(self, client: socket.socket) -> None:
        upstream: socket.socket | None = None
        try:
            # The delay: interrupted by stop() or the end of the proxy's lifetime.
            if self._stop.wait(min(self.delay, max(0.0, self._remaining()))):
                return
            if self._remaining() <= 0:
                return
            upstream = socket.create_connection(self.target, timeout=min(10.0,
                                                                          self._remaining()))
            if not self._track(upstream):
                return
            self.forwarded += 1
            self._pipe(client, upstream)
        except OSError:
            return
        finally:
            self._close(client)
            if upstream is not None:
                self._close(upstream)

    def _pipe(self, client: socket.socket, upstream: socket.socket) -> None:
        peers = {client: upstream, upstream: client}
        for sock in peers:
            sock.setblocking(True)
            sock.settimeout(None)
        while not self._stop.is_set():
            remaining = self._remaining()
            if remaining <= 0:
                return
            ready, _, _ = select.select(list(peers), [], [], min(0.5, remaining))
            for sock in ready:
                data = sock.recv(CHUNK)
                if not data:
                    return  # one side closed: close both
                peers[sock].sendall(data)
