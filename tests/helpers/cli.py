"""One test's quiesce.toml, runtime dir and state dir in a private directory, and the real
``python -m quiesce`` pointed at them; a hold the test leaves is released before the directory
goes."""

from __future__ import annotations

import contextlib
import json
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

from helpers import private_dir


class QuiesceCli:
    """quiesce.toml, runtime dir and state dir in ``root``, and the CLI pointed at them."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.config = root / "quiesce.toml"
        self.rundir = root / "rt"
        self.state = root / "state"

    def write_sections(self, sections: list[tuple[str, dict[str, Any]]], *,
                       max_hold: int = 120) -> None:
        """quiesce.toml (0600) with ``max_hold_seconds``, this ``state_dir`` and one
        ``[[engine]]`` table per (engine, keys) in ``sections``, values written as JSON."""
        lines = [f"max_hold_seconds = {max_hold}", f'state_dir = "{self.state}"']
        for engine, section in sections:
            lines += ["", f"[[{engine}]]"]
            lines += [f"{key} = {json.dumps(value)}" for key, value in section.items()]
        self.config.write_text("\n".join(lines) + "\n")
        self.config.chmod(0o600)

    def secret(self, name: str, text: str, mode: int = 0o600) -> str:
        path = self.root / name
        path.write_text(text)
        path.chmod(mode)
        return str(path)

    def run(self, command: str, *extra: str, timeout: float = 120) -> subprocess.CompletedProcess:
        """``quiesce <command>``: pre and post with ``--config``, every command but
        restore-label with ``--runtime-dir``."""
        argv = [sys.executable, "-m", "quiesce", command]
        if command in ("pre", "post"):
            argv += ["--config", str(self.config)]
        if command != "restore-label":
            argv += ["--runtime-dir", str(self.rundir)]
        argv += extra
        return subprocess.run(argv, capture_output=True, text=True, timeout=timeout,
                              check=False)

    def post_json(self) -> dict[str, Any]:
        out = self.run("post", "--json")
        assert out.returncode in (0, 1), out.stdout + out.stderr
        return json.loads(out.stdout)

    def status(self) -> dict[str, Any]:
        out = self.run("status", "--json")
        return json.loads(out.stdout) if out.stdout.strip() else {}


C = TypeVar("C", bound=QuiesceCli)


@contextlib.contextmanager
def cli_workspace(make: Callable[[Path], C], prefix: str) -> Iterator[C]:
    """``make(root)`` on a fresh :func:`private_dir`; a holder still running at the end is
    released with ``post`` before the directory is removed."""
    with private_dir(prefix) as root:
        cli = make(root)
        try:
            yield cli
        finally:
            if cli.rundir.exists() and cli.status().get("holder_pid"):
                cli.run("post", "--json")
