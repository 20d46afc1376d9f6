"""Run records: one JSON file per hold under the state dir, written after the release.

Layout (``state_dir`` defaults to /var/lib/quiesce as root and to ``$XDG_STATE_HOME/quiesce``
or ``~/.local/state/quiesce`` as any other user, see :func:`default_state_dir`; created 0700,
owned by the user quiesce runs as)::

    <state_dir>/runs/<run_id>.json   one record per hold
    <state_dir>/latest               the run id of the newest record (one line)

A record holds everything ``post`` reported (per instance: plugin, name, status, held_seconds,
metadata, error, note), the hold's times, and the holder's log lines. Engine metadata is stored
as the plugin returned it; JSON strings round-trip exactly, so PostgreSQL's ``backup_label``
text comes back byte for byte (the plugin also records its sha256).

Records are written with tmp + fsync + rename, so a reader sees a whole record or none. The
holder writes them only after releasing, never while a filesystem may be frozen.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import secrets
import stat
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from quiesce.atomic import write_atomic
from quiesce.errors import QuiesceError

DEFAULT_STATE_DIR = "/var/lib/quiesce"
RUNS_DIR = "runs"
LATEST = "latest"
RECORD_VERSION = 1

# One format for every run id (a hold's, a 'quiesce run' cycle's): UTC time to the microsecond,
# then random hex; ids before the microseconds were added (no ".ffffff") still load. A retried
# pre-script of one run gets "_N" (its attempt number) after the run's id.
_RUN_ID_RE = re.compile(r"^[0-9]{8}T[0-9]{6}(\.[0-9]{6})?Z-[0-9a-f]{6,32}(_[0-9]{1,4})?$")


class CatalogError(QuiesceError):
    """The state dir or a run record is missing, unsafe or malformed."""


class RecordNotFound(CatalogError):
    """No run record matches."""


def default_state_dir(euid: int | None = None,
                      environ: Mapping[str, str] | None = None) -> str:
    """Where run records go when quiesce.toml sets no ``state_dir``.

    /var/lib/quiesce as root. A non-root user cannot write there, so as any other user it is
    the XDG base directory for state: ``$XDG_STATE_HOME/quiesce`` when that is an absolute
    path, else ``~/.local/state/quiesce`` (``~`` from $HOME, else the password database).
    """
    uid = os.geteuid() if euid is None else euid
    if uid == 0:
        return DEFAULT_STATE_DIR
    env = os.environ if environ is None else environ
    xdg = env.get("XDG_STATE_HOME", "")
    if os.path.isabs(xdg):  # the XDG spec: a relative value is invalid and ignored
        return os.path.join(xdg, "quiesce")
    home = env.get("HOME", "")
    if not os.path.isabs(home):
        import pwd

        try:
            home = pwd.getpwuid(uid).pw_dir
        except KeyError:
            raise CatalogError(f"uid {uid} has no home directory to keep run records in",
                               hint="set state_dir in quiesce.toml") from None
    return os.path.join(home, ".local", "state", "quiesce")


def new_run_id(now: float | None = None) -> str:
    """A unique id that sorts by time: ``20260131T235959.123456Z-1a2b3c4d``."""
    when = now if now is not None else time.time()
    stamp = time.strftime("%Y%m%dT%H%M%S", time.gmtime(when))
    micros = min(999_999, int((when % 1) * 1_000_000))
    return f"{stamp}.{micros:06d}Z-{secrets.token_hex(4)}"


def valid_run_id(run_id: str) -> bool:
    return bool(_RUN_ID_RE.match(run_id))


def base_run_id(run_id: str) -> str:
    """The run an attempt belongs to: ``X_2`` -> ``X``."""
    head, sep, tail = run_id.rpartition("_")
    return head if sep and tail.isdigit() else run_id


def next_attempt_id(state_dir: str, run_id: str) -> str:
    """``run_id`` when no record has it yet, else the first free ``run_id_N`` (N >= 2)."""
    base = base_run_id(run_id)
    runs = os.path.join(state_dir, RUNS_DIR)
    if not os.path.exists(os.path.join(runs, f"{base}.json")):
        return base
    attempt = 2
    while os.path.exists(os.path.join(runs, f"{base}_{attempt}.json")):
        attempt += 1
    return f"{base}_{attempt}"


def ensure_dir(path: str, mode: int = 0o700) -> None:
    """Create ``path`` (and parents: 0755 as root, 0700 as another user, as the XDG base
    directory spec asks) owned by us with ``mode``; refuse an unsafe one."""
    parent = os.path.dirname(path.rstrip("/"))
    if parent and not os.path.isdir(parent):
        os.makedirs(parent, mode=0o755 if os.geteuid() == 0 else 0o700, exist_ok=True)
    with contextlib.suppress(FileExistsError):
        os.mkdir(path, mode)
    st = os.stat(path, follow_symlinks=False)
    if not stat.S_ISDIR(st.st_mode):
        raise CatalogError(f"{path} exists and is not a directory",
                           hint=f"remove {path} or choose another state_dir")
    if st.st_uid not in (0, os.geteuid()):
        if os.geteuid() == 0:
            raise CatalogError(f"{path} is owned by uid {st.st_uid}, not root",
                               hint=f"chown root:root {path} && chmod {mode:o} {path}")
        raise CatalogError(f"{path} is owned by uid {st.st_uid}, not root or uid "
                           f"{os.geteuid()} (quiesce's user)",
                           hint="set state_dir in quiesce.toml to a directory of your own")
    if stat.S_IMODE(st.st_mode) & 0o022:
        raise CatalogError(f"{path} is writable by group/other "
                           f"(mode {stat.S_IMODE(st.st_mode):04o})",
                           hint=f"chmod {mode:o} {path}")
    os.chmod(path, mode)




def check_writable(state_dir: str) -> None:
    """Refuse a state dir where the run record could not be written (read-only, full, not
    ours), before anything is held: the record is the only durable copy of the label."""
    runs = os.path.join(state_dir, RUNS_DIR)
    try:
        ensure_dir(state_dir)
        ensure_dir(runs)
        write_atomic(os.path.join(runs, ".write-check"), b"x" * 4096)
        os.unlink(os.path.join(runs, ".write-check"))
    except OSError as exc:
        raise CatalogError(f"cannot write run records to {state_dir}: {exc.strerror or exc}",
                           hint="free space there, remount it read-write, or set state_dir in "
                                "quiesce.toml to a writable directory") from exc


def record_path(state_dir: str, run_id: str) -> str:
    if not valid_run_id(run_id):
        raise RecordNotFound(f"{run_id!r} is not a run id",
                             hint="run ids look like 20260131T235959Z-1a2b3c; see "
                                  f"{os.path.join(state_dir, RUNS_DIR)}")
    return os.path.join(state_dir, RUNS_DIR, f"{run_id}.json")


@dataclass
class RunRecord:
    """One hold's record, whoever writes it: the holder after its release, the guardian after
    a recovery, or 'post' from the trace of a holder that left nothing. Serialised here only
    (:meth:`to_dict`, :func:`write_record`), so every writer produces the same fields."""

    run_id: str
    state: str | None
    consistent: bool
    message: str | None
    config: str | None = None
    holder_pid: int | None = None
    started_at: str | None = None
    since: str | None = None
    until: str | None = None
    released_at: str | None = None
    deadline: str | None = None
    max_hold_seconds: float | None = None
    instances: list[dict[str, Any]] = field(default_factory=list)
    log: list[str] = field(default_factory=list)
    #: Fields only some writers know (e.g. ``recovered_by``), kept as they are.
    extra: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        document = {k: v for k, v in vars(self).items() if k != "extra"}
        document["consistent"] = bool(self.consistent)
        return {**self.extra, **document}


def write_record(state_dir: str, record: RunRecord | dict[str, Any]) -> str:
    """Store ``record`` (must carry ``run_id``) and point ``latest`` at it; return its path."""
    if isinstance(record, RunRecord):
        record = record.to_dict()
    run_id = record.get("run_id")
    if not isinstance(run_id, str):
        raise CatalogError("a run record needs a run_id")
    ensure_dir(state_dir)
    ensure_dir(os.path.join(state_dir, RUNS_DIR))
    path = record_path(state_dir, run_id)
    document = {"record_version": RECORD_VERSION, **record}
    data = json.dumps(document, indent=2, sort_keys=True, default=str).encode() + b"\n"
    write_atomic(path, data)
    write_atomic(os.path.join(state_dir, LATEST), run_id.encode() + b"\n")
    return path


def list_runs(state_dir: str = DEFAULT_STATE_DIR) -> list[str]:
    """Every stored run id, oldest first."""
    try:
        names = os.listdir(os.path.join(state_dir, RUNS_DIR))
    except FileNotFoundError:
        return []
    ids = [n[:-5] for n in names if n.endswith(".json") and valid_run_id(n[:-5])]
    return sorted(ids)


def latest_run_id(state_dir: str = DEFAULT_STATE_DIR) -> str:
    try:
        with open(os.path.join(state_dir, LATEST), encoding="ascii") as handle:
            run_id = handle.read().strip()
    except FileNotFoundError:
        runs = list_runs(state_dir)
        if not runs:
            raise RecordNotFound(f"no run record in {state_dir}",
                                 hint="records are written by 'quiesce post' (or the holder "
                                      "after an automatic release); check state_dir") from None
        return runs[-1]
    if not valid_run_id(run_id):
        raise CatalogError(f"{os.path.join(state_dir, LATEST)} does not hold a run id",
                           hint="pass --run-id explicitly")
    return run_id


def load_record(state_dir: str = DEFAULT_STATE_DIR, run_id: str | None = None) -> dict[str, Any]:
    """The record of ``run_id``, or the latest one when ``run_id`` is None."""
    _check_state_dir(state_dir)
    chosen = run_id if run_id is not None else latest_run_id(state_dir)
    path = record_path(state_dir, chosen)
    return load_record_file(path)


def load_record_file(path: str) -> dict[str, Any]:
    """A record from an explicit file (e.g. a copy kept next to a snapshot)."""
    try:
        with open(path, "rb") as handle:
            data = handle.read()
    except FileNotFoundError:
        raise RecordNotFound(f"no run record at {path}",
                             hint="list the runs under <state_dir>/runs") from None
    except OSError as exc:
        raise CatalogError(f"cannot read {path}: {exc.strerror}") from exc
    try:
        record = json.loads(data)
    except ValueError as exc:
        raise CatalogError(f"{path} is not valid JSON: {exc}") from exc
    if not isinstance(record, dict) or "run_id" not in record:
        raise CatalogError(f"{path} is not a quiesce run record")
    return record


def _check_state_dir(state_dir: str) -> None:
    try:
        st = os.stat(state_dir)
    except FileNotFoundError:
        raise RecordNotFound(f"state dir {state_dir} does not exist",
                             hint="no hold was ever released with this state_dir") from None
    if st.st_uid not in (0, os.geteuid()) or stat.S_IMODE(st.st_mode) & 0o022:
        fix = (f"chown root:root {state_dir} && chmod 700 {state_dir}" if os.geteuid() == 0
               else f"use a state dir owned by you or root, mode 700 (chmod 700 {state_dir} "
                    "if it is yours)")
        raise CatalogError(f"state dir {state_dir} is not safe (owner uid {st.st_uid}, mode "
                           f"{stat.S_IMODE(st.st_mode):04o}); its records cannot be trusted",
                           hint=fix)


# -- retention -----------------------------------------------------------------------------------


def run_id_time(run_id: str) -> float | None:
    """When a run started, from its id (``20260131T235959.123456Z-...``): UTC seconds."""
    import calendar

    if not valid_run_id(run_id):
        return None
    try:
        return float(calendar.timegm(time.strptime(run_id[:15], "%Y%m%dT%H%M%S")))
    except ValueError:
        return None


def prune(state_dir: str, keep_days: float, *, now: float | None = None,
          dry_run: bool = False) -> tuple[list[str], list[str]]:
    """Remove the run records that started more than ``keep_days`` days ago; return (removed,
    kept) run ids. The newest record (the one ``latest`` names) is always kept, and nothing but
    ``runs/<run id>.json`` files is ever removed.

    Keep records at least as long as the snapshots they describe: a record is the only copy of
    its snapshot's metadata (PostgreSQL's backup_label), and no snapshot contains its own.
    """
    if not keep_days > 0:
        raise CatalogError(f"keep_days {keep_days!r} must be a positive number of days",
                           hint="set keep_days to at least your snapshots' retention")
    _check_state_dir(state_dir)
    now = time.time() if now is None else now
    cutoff = now - keep_days * 86400
    runs = list_runs(state_dir)
    try:
        newest: str | None = latest_run_id(state_dir)
    except CatalogError:
        newest = runs[-1] if runs else None
    removed: list[str] = []
    kept: list[str] = []
    for run_id in runs:
        started = run_id_time(run_id)
        if run_id == newest or started is None or started >= cutoff:
            kept.append(run_id)
            continue
        if not dry_run:
            try:
                os.unlink(record_path(state_dir, run_id))
            except FileNotFoundError:
                pass
            except OSError as exc:
                raise CatalogError(f"cannot remove {record_path(state_dir, run_id)}: "
                                   f"{exc.strerror or exc} (removed so far: {len(removed)})",
                                   hint="run 'quiesce prune' as the owner of the state dir "
                                        "(root)") from exc
        removed.append(run_id)
    return removed, kept


# -- handing a record over -----------------------------------------------------------------------


def ship_record(command: list[str] | tuple[str, ...], timeout: float, record: str,
                run_id: str) -> dict[str, Any]:
    """Run ``command`` (an argv list, never a shell; ``{record}`` and ``{run_id}`` in any
    argument are replaced) to hand the record over, e.g. to store it next to the snapshot.

    Bounded by ``timeout`` (the command and everything it started are killed then); its
    output is kept (at most 64 KiB) for the report. The program must pass the same trust
    check as a script's interpreter (root-owned, not writable by others). Never raises: the
    outcome says what happened.
    """
    import signal
    import subprocess

    from quiesce.security import executable_problems

    argv = [arg.replace("{record}", record).replace("{run_id}", run_id) for arg in command]
    outcome: dict[str, Any] = {"command": argv, "ok": False, "exit_status": None,
                               "error": None, "output": ""}
    problems = executable_problems(argv[0])
    if problems:
        outcome["error"] = "; ".join(str(p) for p in problems)
        return outcome
    try:
        proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                stderr=subprocess.STDOUT, start_new_session=True, cwd="/")
    except OSError as exc:
        outcome["error"] = f"cannot start {argv[0]}: {exc.strerror or exc}"
        return outcome
    try:
        output, _ = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        try:
            output, _ = proc.communicate(timeout=5)
        except subprocess.TimeoutExpired:  # something left the group and keeps the pipe open
            assert proc.stdout is not None
            proc.stdout.close()
            proc.wait()
            output = b""
        outcome["error"] = f"did not finish within {timeout:g} s and was killed"
    outcome["output"] = output[-65536:].decode("utf-8", "replace")
    outcome["exit_status"] = proc.returncode
    if outcome["error"] is None and proc.returncode != 0:
        outcome["error"] = f"exited with status {proc.returncode}"
    outcome["ok"] = outcome["error"] is None
    return outcome
