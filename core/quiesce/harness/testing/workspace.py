"""The skeleton every server fixture of quiesce.harness.testing shares (not a fixture module).

A :class:`ServerWorkspace` hands out fresh server directories (``layout()``) and started
servers on them (``server()``), and on ``close()`` - or leaving its ``with`` block - stops
every server it made, newest first, and removes every directory. An engine's fixture module
gives it a way to make an unstarted server of that engine and names the directories:

    with ServerWorkspace(_make, prefix="quiesce-pg-", log_name="wal") as workspace:
        yield workspace.server

Importing this module imports no driver and no server module.
"""

from __future__ import annotations

import contextlib
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, Generic, TypeVar

if TYPE_CHECKING:
    from quiesce.harness.servers.base import Server, ServerLayout

S = TypeVar("S", bound="Server")


class ServerWorkspace(Generic[S]):
    """Temp directories and the servers started on them, all removed at the end.

    ``make(layout, **kwargs)`` returns an unstarted server (None: the workspace only hands
    out layouts). ``mode``: the directories' root gets it (0755 lets a service account such
    as postgres or mysql reach its directories: mkdtemp makes them root-only); None leaves
    mkdtemp's 0700. ``base``: where the directories go (None: the system's temp dir).
    """

    def __init__(self, make: Callable[..., S] | None, *, prefix: str, log_name: str,
                 mode: int | None = 0o755, base: Path | None = None) -> None:
        self.make = make
        self.prefix = prefix
        self.base = base
        self.log_name = log_name
        self.mode = mode
        self.roots: list[Path] = []
        self.servers: list[S] = []

    def layout(self) -> ServerLayout:
        """Fresh ``data``, ``<log_name>`` (WAL, redo log, journal) and ``run`` directories."""
        from quiesce.harness.servers.base import ServerLayout

        root = Path(tempfile.mkdtemp(prefix=self.prefix, dir=self.base))
        if self.mode is not None:
            root.chmod(self.mode)
        self.roots.append(root)
        return ServerLayout(data_dir=root / "data", log_dir=root / self.log_name,
                            run_dir=root / "run")

    def server(self, layout: ServerLayout | None = None, **kwargs: Any) -> S:
        """A started server on ``layout`` (fresh directories by default); ``kwargs`` go to
        ``make``. One that fails to start is stopped at close() like the others."""
        if self.make is None:
            raise TypeError("this workspace only makes layouts")
        server = self.make(layout or self.layout(), **kwargs)
        self.servers.append(server)
        server.start()
        return server

    def close(self) -> None:
        for server in reversed(self.servers):
            server.stop()
        for root in self.roots:
            with contextlib.suppress(OSError):
                shutil.rmtree(root)

    def __enter__(self) -> ServerWorkspace[S]:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
