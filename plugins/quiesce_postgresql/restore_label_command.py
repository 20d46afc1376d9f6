"""``quiesce restore-label``: write a recorded backup_label into a restored data directory.

    quiesce restore-label [--state-dir DIR | --config TOML] [--run-id ID | --record FILE]
                          [--name NAME] [--force] [--wal-from-archive] [--pg-bindir DIR]
                          [--unsafe-skip-label-check] [--unsafe-accept-inconsistent]
                          [--json] DATADIR

The run record comes from the catalog (``--state-dir``, else ``QUIESCE_STATE_DIR``, else the
``state_dir`` of quiesce.toml) or from a record file (``--record``: the run record, or the
output of ``quiesce post --json``, kept next to the snapshot). Without ``--run-id`` or
``--record`` every run of the catalog is compared with the copy's pg_control and the one whose
label belongs to it is used; none or several is a refusal. Exit 0 when the label was written,
2 when refused (with the reason and the fix).
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
    source.add_argument("--run-id", help="the run whose label to restore (default: the one "
                                         "run whose label matches the copy's pg_control)")
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
                        help="replace an existing backup_label/tablespace_map (and nothing "
                             "else)")
    parser.add_argument("--wal-from-archive", action="store_true",
                        help="do not require the WAL through stop_lsn in the copy's pg_wal: "
                             "recovery will fetch it with restore_command (set it and create "
                             "recovery.signal)")
    parser.add_argument("--pg-bindir", metavar="DIR",
                        help="where pg_waldump of the data directory's PostgreSQL version is "
                             "(default: /usr/lib/postgresql/N/bin, /usr/pgsql-N/bin, PATH)")
    parser.add_argument("--unsafe-skip-label-check", action="store_true",
                        help="DANGEROUS: install the label even if the copy's pg_control says "
                             "it belongs to another cluster, timeline or moment; recovery "
                             "then reports success and silently loses or mixes data")
    parser.add_argument("--unsafe-accept-inconsistent", "--allow-auto-released",
                        dest="unsafe_accept_inconsistent", action="store_true",
                        help="DANGEROUS: use the label of a run recorded as not consistent "
                             "(auto-released, lost, late, aborted...): right only if the "
                             "snapshot was taken while backup mode was held")
    parser.add_argument("--tablespace-mapping", action="append", default=[],
                        metavar="OLDDIR=NEWDIR",
                        help="put the tablespace recorded at OLDDIR at NEWDIR instead "
                             "(repeatable; like pg_basebackup's option of the same name)")
    parser.add_argument("--json", action="store_true", help="print the result as JSON")


def _load(args: argparse.Namespace) -> tuple[str | None, dict[str, Any] | None]:
    """(run id, record) of --record or --run-id; (None, None) when the catalog is to be
    searched."""
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
        return record.get("run_id") if isinstance(record.get("run_id"), str) else None, record
    if args.run_id:
        from quiesce.hold.records import load_record

        return args.run_id, load_record(_state_dir(args), run_id=args.run_id)
    return None, None


def _state_dir(args: argparse.Namespace) -> str:
    return (args.state_dir or os.environ.get("QUIESCE_STATE_DIR")
            or _configured_state_dir(args.config) or _default_state_dir())


def _find_run(args: argparse.Namespace) -> tuple[str, dict[str, Any]]:
    """The one run of the catalog whose label belongs to the copy in DATADIR."""
    from pathlib import Path

    from quiesce.hold.records import CatalogError, RecordNotFound, list_runs, load_record
    from quiesce_postgresql.restore import LabelMismatch, check_data_dir, match_runs

    state_dir = _state_dir(args)
    directory = Path(os.path.abspath(args.data_dir))
    check_data_dir(directory)
    runs = []
    for run_id in reversed(list_runs(state_dir)):  # newest first
        try:
            runs.append((run_id, load_record(state_dir, run_id)))
        except CatalogError:  # vanished or unreadable: it cannot be the one
            continue
    if not runs:
        raise RecordNotFound(f"no run record in {state_dir}",
                             hint="records are written by 'quiesce post'; pass --state-dir, "
                                  "or --record with the record kept next to the snapshot")
    matching, others = match_runs(directory, runs, args.name)
    if len(matching) == 1:
        return matching[0], dict(runs)[matching[0]]
    if matching:
        raise LabelMismatch(
            f"several runs have a label that fits {directory}: {', '.join(matching)}",
            hint="choose one with --run-id (the run whose hold the snapshot was taken in)")
    shown = others[:5] + ([f"... and {len(others) - 5} older runs"] if len(others) > 5 else [])
    raise LabelMismatch(
        f"no run in {state_dir} has a label that belongs to {directory}:\n  "
        + "\n  ".join(shown),
        hint="this copy was not taken during a backup-mode hold recorded here: use the state "
             "dir or record kept with its snapshot (--state-dir/--record), or restore it as "
             "crash-consistent if every disk was snapshotted at one instant (docs/restore.md)")


def _default_state_dir() -> str:
    """Where the holder wrote the records when quiesce.toml names no state_dir (it depends on
    who runs quiesce: see quiesce.hold.records.default_state_dir)."""
    from quiesce.hold.records import default_state_dir

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
    run_id, record = _load(args)
    if record is None:
        run_id, record = _find_run(args)
    name, metadata = find_label_metadata(record, args.name,
                                         accept_inconsistent=args.unsafe_accept_inconsistent)
    result = install_label(args.data_dir, metadata, force=args.force, instance=name,
                           tablespace_mapping=mapping,
                           unsafe_skip_label_check=args.unsafe_skip_label_check,
                           wal_from_archive=args.wal_from_archive, pg_bindir=args.pg_bindir)
    result.run_id = run_id
    if args.unsafe_accept_inconsistent and record.get("consistent") is not True:
        result.warnings.insert(0, "--unsafe-accept-inconsistent: run recorded as not "
                                  f"consistent ({record.get('message') or record.get('state')})")
    if args.json:
        print(json.dumps(result.as_dict(), indent=2))
    else:
        print(f"wrote {', '.join(result.written)} of run {run_id or '(record file)'} into "
              f"{result.data_dir} (start_lsn {result.start_lsn}, stop_lsn {result.stop_lsn})")
        for check in result.checks:
            print(f"checked: {check}")
        for removed in result.removed:
            print(f"removed stale {removed}")
        for warning in result.warnings:
            print(f"warning: {warning}")
        print(f"next: quiesce restore-check {result.data_dir}, and do what it says before "
              "starting the server")
    return 0
