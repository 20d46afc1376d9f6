"""``quiesce restore-label``: write a recorded backup_label into a restored data directory.

    quiesce restore-label [--state-dir DIR | --config TOML] [--run-id ID | --record FILE]
                          [--name NAME] [--force] [--allow-auto-released] [--json] DATADIR

The run record comes from the catalog (``--state-dir``, else ``QUIESCE_STATE_DIR``, else the
``state_dir`` of quiesce.toml; newest run unless ``--run-id``) or from a record file
(``--record``, e.g. a copy kept next to the snapshot). Exit 0 when the label was written, 2
when refused (with the reason and the fix).
"""

from __future__ import annotations

import argparse
import json
import os
from typing import Any

DEFAULT_STATE_DIR = "/var/lib/quiesce"
DEFAULT_CONFIG = "/etc/quiesce/quiesce.toml"


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("data_dir", metavar="DATADIR",
                        help="the RESTORED PostgreSQL data directory (never a live one)")
    source = parser.add_mutually_exclusive_group()
    source.add_argument("--run-id", help="the run whose label to restore (default: newest)")
    source.add_argument("--record", metavar="FILE",
                        help="read the run record (or one instance's metadata) from this JSON "
                             "file instead of the state directory")
    parser.add_argument("--state-dir", default=None,
                        help="where run records are kept (default: QUIESCE_STATE_DIR, else "
                             f"state_dir of --config, else {DEFAULT_STATE_DIR} as root and "
                             "~/.local/state/quiesce otherwise, as pre/post use)")
    parser.add_argument("--config", default=DEFAULT_CONFIG,
                        help="the quiesce.toml whose state_dir to use (default %(default)s, "
                             "when it exists)")
    parser.add_argument("--name", help="the [[postgresql]] instance, when the run has several")
    parser.add_argument("--force", action="store_true",
                        help="replace an existing backup_label/tablespace_map")
    parser.add_argument("--allow-auto-released", action="store_true",
                        help="use the label of a hold that max_hold_seconds ended before "
                             "'post' came (right only if the snapshot was taken before it "
                             "ended)")
    parser.add_argument("--tablespace-mapping", action="append", default=[],
                        metavar="OLDDIR=NEWDIR",
                        help="put the tablespace recorded at OLDDIR at NEWDIR instead "
                             "(repeatable; like pg_basebackup's option of the same name)")
    parser.add_argument("--json", action="store_true", help="print the result as JSON")


def _load(args: argparse.Namespace) -> dict[str, Any]:
    from quiesce_postgresql.restore import RestoreLabelError

    if args.record:
        try:
            with open(args.record, encoding="utf-8") as f:
                record = json.load(f)
        except OSError as exc:
            raise RestoreLabelError(f"cannot read {args.record}: {exc.strerror}") from exc
        except json.JSONDecodeError as exc:
            raise RestoreLabelError(f"{args.record} is not JSON: {exc}") from exc
        if not isinstance(record, dict):
            raise RestoreLabelError(f"{args.record} does not hold a JSON object")
        return record
    state_dir = (args.state_dir or os.environ.get("QUIESCE_STATE_DIR")
                 or _configured_state_dir(args.config) or _default_state_dir())
    try:
        from quiesce.catalog import load_record
    except ImportError as exc:
        raise RestoreLabelError("this build has no run catalog",
                                hint="pass the record file with --record") from exc
    return load_record(state_dir, run_id=args.run_id)


def _default_state_dir() -> str:
    """Where the holder wrote the records when quiesce.toml names no state_dir (it depends on
    who runs quiesce: see quiesce.catalog.default_state_dir)."""
    from quiesce.catalog import default_state_dir

    return default_state_dir()


def _configured_state_dir(config: str) -> str | None:
    """``state_dir`` of quiesce.toml (checked like every config), or None without one.

    Only that key is read: restoring must not depend on the databases being reachable or the
    plugins of the other engines being installed.
    """
    import tomllib

    from quiesce.security import TrustedFileNotFound, open_trusted

    try:
        with open_trusted(config, "secret") as trusted:  # as pre reads it
            raw = trusted.read_bytes()
    except TrustedFileNotFound:
        if config != DEFAULT_CONFIG:
            raise
        return None
    try:
        document = tomllib.loads(raw.decode("utf-8"))
    except (ValueError, RecursionError) as exc:  # undecodable, not TOML, too deep
        from quiesce_postgresql.restore import RestoreLabelError

        raise RestoreLabelError(f"{config} cannot be read as TOML: {exc}",
                                hint="fix it, or pass --state-dir") from exc
    value = document.get("state_dir")
    return value if isinstance(value, str) and os.path.isabs(value) else None


def main(args: argparse.Namespace) -> int:
    from quiesce_postgresql.restore import RestoreLabelError, find_label_metadata, install_label

    mapping: dict[str, str] = {}
    for item in args.tablespace_mapping:
        old, sep, new = item.partition("=")
        if not sep or not os.path.isabs(old) or not os.path.isabs(new):
            raise RestoreLabelError(f"--tablespace-mapping {item!r} is not OLDDIR=NEWDIR",
                                    hint="both directories must be absolute paths")
        mapping[os.path.normpath(old)] = os.path.normpath(new)
    record = _load(args)
    name, metadata = find_label_metadata(record, args.name,
                                         allow_auto_released=args.allow_auto_released)
    result = install_label(args.data_dir, metadata, force=args.force, instance=name,
                           tablespace_mapping=mapping)
    if args.json:
        print(json.dumps(result.as_dict(), indent=2))
    else:
        print(f"wrote {', '.join(result.written)} into {result.data_dir}"
              f" (start_lsn {result.start_lsn}, stop_lsn {result.stop_lsn})")
        for removed in result.removed:
            print(f"removed stale {removed}")
        for warning in result.warnings:
            print(f"warning: {warning}")
    return 0
