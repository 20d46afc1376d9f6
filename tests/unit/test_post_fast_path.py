"""'post' reads its usual arguments without argparse, so the release request goes out before
anything else is imported (its start-up is on the application's write stall)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from quiesce.commands import post


@pytest.mark.parametrize("argv", [
    ["--runtime-dir", "/x"], ["--runtime-dir=/x"], ["--json", "--runtime-dir", "/x"],
    ["--config", "/etc/quiesce/quiesce.toml", "--runtime-dir=/x", "--json"],
])
def test_usual_arguments_take_the_fast_path(argv: list[str],
                                            monkeypatch: pytest.MonkeyPatch) -> None:
    seen: list[tuple[str | None, bool]] = []
    monkeypatch.setattr(post, "run",
                        lambda rundir, as_json, *_, **__: seen.append((rundir, as_json)) or 0)
    assert post.fast_main(argv) == 0
    assert seen == [("/x", "--json" in argv)]


@pytest.mark.parametrize("argv", [["--help"], ["--bogus"], ["--runtime-dir"],
                                  ["--runtime-dir", "--json"], ["extra"]])
def test_anything_else_goes_through_the_full_parser(argv: list[str]) -> None:
    assert post.fast_main(argv) is None


def test_post_imports_no_argparse_before_its_request(tmp_path: Path) -> None:
    code = ("import sys\nfrom quiesce.cli import main\n"
            f"rc = main(['post', '--runtime-dir', '{tmp_path / 'absent'}', '--json'])\n"
            "print(rc, 'argparse' in sys.modules)\n")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          check=False, timeout=60)
    *document, last = done.stdout.strip().splitlines()
    assert last == "2 False", done.stdout + done.stderr
    assert json.loads("\n".join(document))["error"]["type"] in ("NoActiveHold", "HolderError")
