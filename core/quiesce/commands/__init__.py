"""One module per subcommand: ``configure(parser)`` and ``main(args) -> int``."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:  # 'post' imports this package: no argparse on its start-up path
    import argparse


def add_runtime_dir_option(parser: argparse.ArgumentParser) -> None:
    """--runtime-dir, shared by pre, post and status: they must agree on where the hold is."""
    parser.add_argument("--runtime-dir", metavar="DIR",
                        help="where the holder's socket lives (default: $QUIESCE_RUNTIME_DIR, "
                             "else /run/quiesce as root, $XDG_RUNTIME_DIR/quiesce otherwise)")
