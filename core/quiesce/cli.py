"""The ``quiesce`` command line: parsing and dispatch only, no logic.

Each subcommand lives in ``quiesce.commands.<module>`` with ``configure(parser)`` and
``main(args) -> int``. Command modules import their heavy dependencies inside ``main`` so that
``quiesce post`` reaches the holder without paying for imports it does not need.

Plugins add commands of their own through the ``quiesce_register_commands`` hook
(:class:`quiesce.plugins.Command`). Plugins are loaded only when the command given is not one
of :data:`COMMANDS` (or none is given, for ``--help``): ``pre``, ``post`` and ``status`` never
import a plugin here.
"""

from __future__ import annotations

import importlib
import sys
from collections.abc import Sequence
from typing import TYPE_CHECKING

from quiesce import __version__

if TYPE_CHECKING:
    import argparse

    from quiesce.errors import QuiesceError
    from quiesce.plugins import Command

# name -> (module, one-line help). Order is the order shown in --help.
COMMANDS: dict[str, tuple[str, str]] = {
    "run": ("quiesce.commands.run", "run one whole backup cycle of the Azure pre/post contract"),
    "check": ("quiesce.commands.check",
              "validate the installed agent hooks (Azure: config, scripts and mounts)"),
    "pre": ("quiesce.commands.pre", "quiesce the configured databases and hold them"),
    "post": ("quiesce.commands.post", "release what 'pre' holds and report it"),
    "status": ("quiesce.commands.status", "show what is held, by whom, until when"),
    "install": ("quiesce.commands.install",
                "install quiesce as a snapshot agent's hook (azure, qemu-ga, vmware, gce, aws)"),
    "uninstall": ("quiesce.commands.uninstall", "remove exactly what 'install' wrote"),
    "prune": ("quiesce.commands.prune", "remove run records older than keep_days"),
    "drill": ("quiesce.commands.drill", "restore snapshots into throwaway servers and verify"),
    "images": ("quiesce.commands.images", "build the drill's container images from packages"),
}


def build_parser(only: str | None = None,
                 plugin_commands: Sequence[Command] = ()) -> argparse.ArgumentParser:
    import argparse
    """The parser; only the ``only`` command (every command when None) is configured.

    ``plugin_commands`` follow the built-in commands, in the order given.
    """
    parser = argparse.ArgumentParser(
        prog="quiesce",
        description="Application-consistent snapshots for PostgreSQL, MySQL/MariaDB, MongoDB.",
    )
    parser.add_argument("--version", action="version", version=f"quiesce {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, (module_name, help_text) in COMMANDS.items():
        p = sub.add_parser(name, help=help_text, description=help_text)
        if only is not None and name != only:
            continue
        try:
            module = importlib.import_module(module_name)
        except ModuleNotFoundError as exc:
            if exc.name != module_name:
                raise
            p.set_defaults(_unavailable=name)
            continue
        module.configure(p)
        p.set_defaults(_main=module.main)
    for command in plugin_commands:
        p = sub.add_parser(command.name, help=command.help, description=command.help)
        if only is not None and command.name != only:
            continue
        command.configure(p)
        p.set_defaults(_main=command.main)
    return parser


def plugin_commands(chosen: str | None) -> list[Command]:
    """The commands of the installed plugins (loaded here, so only for a command that is not
    built in). A plugin that fails to load hides only its own commands; its error is printed
    when the command asked for is not found, as that may be why."""
    from quiesce.errors import PluginError
    from quiesce.plugins import Plugins

    errors: list[PluginError] = []
    plugins = Plugins()
    plugins.load_entry_points(errors=errors)
    registry = plugins.commands(reserved=COMMANDS, errors=errors)
    if chosen is not None and chosen not in registry:
        for exc in errors:
            print(f"quiesce: {exc}", file=sys.stderr)
            if exc.hint:
                print(f"  fix: {exc.hint}", file=sys.stderr)
    return list(registry)


def error_document(exc: BaseException) -> dict[str, object]:
    """A QuiesceError as JSON: type, message, fix, Azure code and every problem found."""
    from quiesce.errors import ValidationError

    code = getattr(exc, "code", None)
    doc: dict[str, object] = {
        "type": type(exc).__name__,
        "message": str(exc),
        "hint": getattr(exc, "hint", "") or None,
        "code": code.text if code is not None else None,
        "number": code.number if code is not None else None,
    }
    if isinstance(exc, ValidationError):
        doc["problems"] = [
            {"where": p.where, "message": p.message, "hint": p.hint or None}
            for p in exc.problems
        ]
    return doc


def main(argv: list[str] | None = None) -> int:
    exiting = argv is None  # run as a program (console script, python -m): exits after this
    argv = sys.argv[1:] if argv is None else argv
    try:
        return _run(argv)
    finally:
        if exiting:
            _skip_the_last_collection()


def _skip_the_last_collection() -> None:
    """The interpreter's garbage collection at exit walks every object the imported modules
    made (5-7 ms for 'pre' and 'post', after their answer is out) to free memory the kernel
    frees anyway: freeze them so it skips them. Every file is closed where it is used, so no
    cycle holds output that only a collection would flush."""
    import gc

    gc.freeze()


def _run(argv: list[str]) -> int:
    try:
        return _main(argv)
    except BrokenPipeError:
        # `quiesce post | head`: the reader left. The command itself has done its work (a
        # release is never undone by its output); say nothing more and exit like a shell's
        # SIGPIPE (128 + 13), with stdout on /dev/null so the final flush cannot raise again.
        import os

        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
        return 141


def _main(argv: list[str]) -> int:
    if argv == ["--version"]:  # without loading every plugin for the commands they add
        print(f"quiesce {__version__}")
        return 0
    if argv[:1] == ["post"]:
        # 'post' runs while the locks are held: its usual arguments are read without argparse,
        # so the release request goes out before anything else is imported.
        from quiesce.commands.post import fast_main

        code = fast_main(argv[1:])
        if code is not None:
            return code
    # Only the chosen subcommand's module is imported: start-up time matters for 'post'.
    chosen = next((a for a in argv if not a.startswith("-")), None)
    if chosen in COMMANDS:
        parser = build_parser(only=chosen)
    else:
        parser = build_parser(only=chosen, plugin_commands=plugin_commands(chosen))
    args = parser.parse_args(argv)
    if getattr(args, "_unavailable", None):
        print(f"quiesce: '{args._unavailable}' is not available in this build", file=sys.stderr)
        return 2
    if not getattr(args, "_main", None):
        parser.print_help()
        return 2
    return _dispatch(args)


def _dispatch(args: argparse.Namespace) -> int:
    from quiesce.errors import QuiesceError

    try:
        return int(args._main(args))
    except QuiesceError as exc:
        return report_error(args.command, exc, bool(getattr(args, "json", False)))
    except KeyboardInterrupt:
        print(f"quiesce {args.command}: interrupted", file=sys.stderr)
        return 130


def report_error(command: str, exc: QuiesceError, as_json: bool) -> int:
    """A command's QuiesceError: the message and its fix on stderr (and as JSON on stdout when
    the command was asked for JSON); exit status 2."""
    print(f"quiesce {command}: {exc}", file=sys.stderr)
    if exc.hint:
        print(f"  fix: {exc.hint}", file=sys.stderr)
    if as_json:
        # Automation that asked for JSON gets JSON on stdout for failures too.
        import json

        print(json.dumps({"command": command, "error": error_document(exc)}, indent=2))
    from quiesce import journal  # a wrapper's stderr may go nowhere: the journal keeps it

    journal.log_event(command, "error", str(exc), priority=journal.ERR,
                      error=type(exc).__name__, hint=exc.hint or None)
    return 2


if __name__ == "__main__":
    sys.exit(main())
