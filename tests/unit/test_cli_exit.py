"""The quiesce program skips the interpreter's last garbage collection (gc.freeze) once its
command is done; main() called with arguments (tests, embedders) leaves the collector alone."""

from __future__ import annotations

import gc
import subprocess
import sys

import pytest

from quiesce import cli


@pytest.mark.parametrize(("argv", "frozen"), [(None, True), (["status"], False)])
def test_only_a_program_run_freezes(monkeypatch: pytest.MonkeyPatch, argv: list[str] | None,
                                    frozen: bool) -> None:
    calls: list[bool] = []
    monkeypatch.setattr(gc, "freeze", lambda: calls.append(True))
    monkeypatch.setattr(cli, "_main", lambda _argv: 7)
    monkeypatch.setattr(sys, "argv", ["quiesce", "status"])
    assert cli.main(argv) == 7
    assert calls == ([True] if frozen else [])


def test_output_is_complete_after_the_skipped_collection() -> None:
    proc = subprocess.run([sys.executable, "-m", "quiesce", "--help"], capture_output=True,
                          text=True, check=False, timeout=60)
    assert proc.returncode == 0 and "usage: quiesce" in proc.stdout


def test_version_loads_no_plugin() -> None:
    code = ("import sys\nfrom quiesce.cli import main\nassert main(['--version']) == 0\n"
            "print(sorted(m for m in sys.modules if m.startswith(('quiesce_', 'pluggy',"
            " 'quiesce.plugins'))))\n")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          check=True, timeout=60)
    from quiesce import __version__

    assert proc.stdout.splitlines() == [f"quiesce {__version__}", "[]"]
