"""quiesce restore-label: refusals and a byte-exact install, through the real CLI.

The data directories here are built by hand (PG_VERSION, a pg_control with its CRC, a WAL
file of zeros): no server. The WAL check is exercised for real by pg_waldump on that file
(refused) and, with real WAL, in tests/integration/test_postgresql_restore.py; the other tests
pass --wal-from-archive (restore_command would fetch the WAL) to test the rest on its own.
"""

from __future__ import annotations

import json
import os
import pwd
import subprocess
import sys
from pathlib import Path

import pytest

from helpers import private_dir
from helpers.pg_control import control_bytes
from quiesce.hold import records as catalog
from quiesce_postgresql import wal
from quiesce_postgresql.restore import (
    InconsistentRun,
    LabelMismatch,
    RestoreLabelError,
    find_label_metadata,
)
from quiesce_postgresql.restore import install_label as _install_label

LABEL = (
    "START WAL LOCATION: 0/2000028 (file 000000010000000000000002)\n"
    "CHECKPOINT LOCATION: 0/2000060\n"
    "BACKUP METHOD: streamed\n"
    "BACKUP FROM: primary\n"
    "START TIME: 2026-11-26 12:30:52 UTC\n"
    "LABEL: quiesce main 2026-11-26T12:30:52Z\n"
    "START TIMELINE: 1\n"
)
SPCMAP = "16385 /srv/tablespaces/fast\n"
SYSTEM_ID = "7712460687430259114"


def metadata(**overrides: object) -> dict:
    meta = {
        "mode": "backup", "start_lsn": "0/2000028", "stop_lsn": "0/2000100", "timeline": 1,
        "backup_label": LABEL, "backup_label_sha256": wal.sha256_text(LABEL),
        "tablespace_map": None, "tablespace_map_sha256": None,
        "stop_wal_file": "000000010000000000000002",
        "server_version_num": 150020, "system_identifier": SYSTEM_ID,
    }
    meta.update(overrides)
    return meta


def record(*instances: dict, run_id: str = "20261126T123052Z-abcdef",
           consistent: bool = True) -> dict:
    return {"run_id": run_id, "state": "released", "consistent": consistent,
            "instances": list(instances)}


def install_label(data_dir: Path, meta: dict, **kwargs: object):
    """install_label without the WAL check (see the module doc)."""
    kwargs.setdefault("wal_from_archive", True)
    return _install_label(data_dir, meta, **kwargs)


def pg_instance(name: str = "main", status: str = "released", **meta: object) -> dict:
    return {"plugin": "postgresql", "name": name, "status": status,
            "metadata": metadata(**meta)}


@pytest.fixture
def data_dir(tmp_path: Path) -> Path:
    """A stopped, restored-looking data directory (owned by postgres when we are root)."""
    d = tmp_path / "restored"
    (d / "pg_wal").mkdir(parents=True)
    (d / "PG_VERSION").write_text("15\n")
    (d / "pg_wal" / "000000010000000000000002").write_bytes(b"\0" * 16)
    write_pg_control(d, SYSTEM_ID)
    d.chmod(0o700)
    if os.geteuid() == 0:
        entry = pwd.getpwnam("postgres") if _has_user("postgres") else None
        if entry:
            os.chown(d, entry.pw_uid, entry.pw_gid)
    return d


def write_pg_control(data_dir: Path, system_identifier: str, **fields: int) -> None:
    """A pg_control whose latest checkpoint is the label's own (0/2000060) unless told."""
    (data_dir / "global").mkdir(exist_ok=True)
    (data_dir / "global" / "pg_control").write_bytes(
        control_bytes(int(system_identifier), **fields))


def _has_user(name: str) -> bool:
    try:
        pwd.getpwnam(name)
    except KeyError:
        return False
    return True


def run_cli(*args: str, wal_check: bool = False) -> subprocess.CompletedProcess[str]:
    extra = [] if wal_check else ["--wal-from-archive"]
    return subprocess.run([sys.executable, "-m", "quiesce", "restore-label", *extra, *args],
                          capture_output=True, text=True, timeout=60, check=False)


def write_record(tmp_path: Path, doc: dict) -> Path:
    path = tmp_path / "record.json"
    path.write_text(json.dumps(doc))
    return path


def test_writes_label_byte_for_byte(tmp_path: Path, data_dir: Path) -> None:
    rec = write_record(tmp_path, record(pg_instance()))
    out = run_cli("--record", str(rec), "--json", str(data_dir))
    assert out.returncode == 0, out.stderr
    result = json.loads(out.stdout)
    assert result["written"] == ["backup_label"]
    assert [w.split(":")[0] for w in result["warnings"]] == ["--wal-from-archive"]
    assert any("matches the copy's pg_control" in c for c in result["checks"])
    label = data_dir / "backup_label"
    assert label.read_bytes() == LABEL.encode()
    st = label.stat()
    assert st.st_mode & 0o777 == 0o600
    assert (st.st_uid, st.st_gid) == (data_dir.stat().st_uid, data_dir.stat().st_gid)
    assert not (data_dir / "tablespace_map").exists()
    assert [p.name for p in data_dir.iterdir() if p.name.startswith(".")] == []


def test_tablespace_map_written_too(tmp_path: Path, data_dir: Path) -> None:
    meta = metadata(tablespace_map=SPCMAP, tablespace_map_sha256=wal.sha256_text(SPCMAP))
    result = install_label(data_dir, meta)
    assert result.written == ["backup_label", "tablespace_map"]
    assert (data_dir / "tablespace_map").read_bytes() == SPCMAP.encode()
    assert (data_dir / "tablespace_map").stat().st_mode & 0o777 == 0o600


def test_existing_label_needs_force(tmp_path: Path, data_dir: Path) -> None:
    (data_dir / "backup_label").write_text("old label\n")
    rec = write_record(tmp_path, record(pg_instance()))
    out = run_cli("--record", str(rec), str(data_dir))
    assert out.returncode == 2
    assert "already has backup_label" in out.stderr and "--force" in out.stderr
    assert (data_dir / "backup_label").read_text() == "old label\n"
    out = run_cli("--record", str(rec), "--force", str(data_dir))
    assert out.returncode == 0, out.stderr
    assert (data_dir / "backup_label").read_bytes() == LABEL.encode()


def test_stale_tablespace_map_removed_with_force(data_dir: Path) -> None:
    (data_dir / "tablespace_map").write_text("16385 /old\n")
    with pytest.raises(RestoreLabelError, match="already has tablespace_map"):
        install_label(data_dir, metadata())
    result = install_label(data_dir, metadata(), force=True)
    assert result.removed == ["tablespace_map"]
    assert not (data_dir / "tablespace_map").exists()


def test_refuses_a_live_cluster(tmp_path: Path, data_dir: Path) -> None:
    # A real process whose cwd is the data dir, named in postmaster.pid: what a live
    # postmaster looks like from outside.
    proc = subprocess.Popen(["sleep", "120"], cwd=data_dir)
    try:
        (data_dir / "postmaster.pid").write_text(f"{proc.pid}\n{data_dir}\n")
        rec = write_record(tmp_path, record(pg_instance()))
        out = run_cli("--record", str(rec), "--force", str(data_dir))
        assert out.returncode == 2
        assert f"running PostgreSQL server (postmaster pid {proc.pid})" in out.stderr
        assert not (data_dir / "backup_label").exists()
    finally:
        proc.kill()
        proc.wait()


def test_copied_pid_file_of_another_process_is_not_live(tmp_path: Path,
                                                        data_dir: Path) -> None:
    # The pid is alive but runs elsewhere (a restored copy of a live server's directory).
    proc = subprocess.Popen(["sleep", "120"], cwd=tmp_path)
    try:
        (data_dir / "postmaster.pid").write_text(f"{proc.pid}\n/var/lib/postgresql/15/main\n")
        result = install_label(data_dir, metadata())
        assert result.written == ["backup_label"]
        assert any("remove" in w and "postmaster.pid before starting" in w
                   for w in result.warnings)
    finally:
        proc.kill()
        proc.wait()


def test_refuses_a_tampered_record(data_dir: Path) -> None:
    meta = metadata(backup_label=LABEL.replace("0/2000060", "0/2000061"))
    with pytest.raises(RestoreLabelError, match="does not match its sha256"):
        install_label(data_dir, meta)
    assert not (data_dir / "backup_label").exists()


def test_refuses_what_is_not_a_data_dir(tmp_path: Path) -> None:
    with pytest.raises(RestoreLabelError, match="no PG_VERSION"):
        install_label(tmp_path, metadata())
    with pytest.raises(RestoreLabelError, match="does not exist"):
        install_label(tmp_path / "nope", metadata())
    link = tmp_path / "link"
    (tmp_path / "real").mkdir()
    (tmp_path / "real" / "PG_VERSION").write_text("15\n")
    link.symlink_to(tmp_path / "real")
    with pytest.raises(RestoreLabelError, match="not a directory"):
        install_label(link, metadata())


def test_wal_without_the_end_of_backup_is_refused(tmp_path: Path, data_dir: Path) -> None:
    """pg_wal has the stop segment's name, but not its records (a file of zeros)."""
    from quiesce_postgresql.waldump import WalToolMissing, find_waldump

    try:
        find_waldump(15)
    except WalToolMissing as exc:
        pytest.skip(f"no pg_waldump of PostgreSQL 15 on this machine: {exc}")
    segment = data_dir / "pg_wal" / "000000010000000000000002"
    segment.write_bytes(b"\0" * 16 * 1024 * 1024)
    rec = write_record(tmp_path, record(pg_instance()))
    out = run_cli("--record", str(rec), str(data_dir), wal_check=True)
    assert out.returncode == 2
    assert "no end-of-backup record (BACKUP_END 0/2000028) before stop_lsn 0/2000100" in out.stderr
    assert ("copy WAL files 000000010000000000000002 through 000000010000000000000002"
            in out.stderr)
    assert "WAL archive" in out.stderr and "crash-consistent" in out.stderr
    assert not (data_dir / "backup_label").exists()
    out = run_cli("--record", str(rec), "--wal-from-archive", str(data_dir), wal_check=True)
    assert out.returncode == 0, out.stderr
    assert "restore_command" in out.stdout and "recovery.signal" in out.stdout


def test_choosing_the_instance() -> None:
    rec = record(pg_instance("a"), pg_instance("b"),
                 {"plugin": "mysql", "name": "m", "status": "released", "metadata": {}})
    with pytest.raises(RestoreLabelError, match=r"several PostgreSQL instances \(a, b\)"):
        find_label_metadata(rec)
    name, meta = find_label_metadata(rec, "b")
    assert name == "b" and meta["backup_label"] == LABEL
    with pytest.raises(RestoreLabelError, match="no PostgreSQL instance named 'c'"):
        find_label_metadata(rec, "c")
    # Bare metadata (e.g. a drill's copy) is accepted as is.
    assert find_label_metadata(metadata())[1]["stop_lsn"] == "0/2000100"


def test_a_lost_hold_has_no_label_and_says_why() -> None:
    lost = {"plugin": "postgresql", "name": "main", "status": "lost", "metadata": None}
    with pytest.raises(RestoreLabelError, match="recorded no backup_label") as info:
        find_label_metadata(record(lost))
    assert "crash-consistent" in info.value.hint


def test_reads_the_catalog(tmp_path: Path, data_dir: Path) -> None:
    state = tmp_path / "state"
    catalog.write_record(str(state), record(pg_instance()))
    out = run_cli("--state-dir", str(state), str(data_dir))
    assert out.returncode == 0, out.stderr
    assert "wrote backup_label" in out.stdout
    assert (data_dir / "backup_label").read_bytes() == LABEL.encode()
    out = run_cli("--state-dir", str(state), "--run-id", "20990101T000000Z-ffffff", "--force",
                  str(data_dir))
    assert out.returncode == 2
    assert "no run record at" in out.stderr and "20990101T000000Z-ffffff" in out.stderr


def test_tablespace_mapping_rewrites_only_the_named_paths(tmp_path: Path, data_dir: Path) -> None:
    spcmap = "16385 /srv/ts/fast\n16386 /srv/ts/with\\\\backslash\n"
    meta = metadata(tablespace_map=spcmap, tablespace_map_sha256=wal.sha256_text(spcmap))
    new = tmp_path / "fast-restored"
    new.mkdir()
    rec = write_record(tmp_path, record({"plugin": "postgresql", "name": "main",
                                         "status": "released", "metadata": meta}))
    out = run_cli("--record", str(rec), "--tablespace-mapping", f"/srv/ts/fast/={new}",
                  "--json", str(data_dir))
    assert out.returncode == 0, out.stderr
    written = (data_dir / "tablespace_map").read_text()
    assert written == f"16385 {new}\n16386 /srv/ts/with\\\\backslash\n"
    warnings = json.loads(out.stdout)["warnings"][1:]  # after the --wal-from-archive one
    assert len(warnings) == 1
    assert "16386 stays at its original location /srv/ts/with\\backslash" in warnings[0]


def test_tablespace_mapping_must_match_something(data_dir: Path) -> None:
    spcmap = "16385 /srv/ts/fast\n"
    meta = metadata(tablespace_map=spcmap, tablespace_map_sha256=wal.sha256_text(spcmap))
    with pytest.raises(RestoreLabelError, match="names no recorded tablespace: /srv/other"):
        install_label(data_dir, meta, tablespace_mapping={"/srv/other": "/x"})
    assert not (data_dir / "backup_label").exists()
    with pytest.raises(RestoreLabelError, match="recorded no tablespace_map"):
        install_label(data_dir, metadata(), tablespace_mapping={"/srv/ts/fast": "/x"})
    out = run_cli("--record", "/nonexistent.json", "--tablespace-mapping", "relative=/x",
                  str(data_dir))
    assert out.returncode == 2 and "is not OLDDIR=NEWDIR" in out.stderr


def test_refuses_the_data_directory_of_another_cluster(tmp_path: Path, data_dir: Path) -> None:
    """A label only fits the cluster it was taken from (same system identifier)."""
    write_pg_control(data_dir, "7712461136917788014")
    rec = write_record(tmp_path, record(pg_instance()))
    out = run_cli("--record", str(rec), str(data_dir))
    assert out.returncode == 2
    assert ("the copy is of another cluster: system identifier 7712461136917788014 in its "
            f"pg_control, {SYSTEM_ID} in the record") in out.stderr
    assert not (data_dir / "backup_label").exists()


def test_refuses_another_major_version(data_dir: Path) -> None:
    (data_dir / "PG_VERSION").write_text("16\n")
    with pytest.raises(RestoreLabelError, match="PostgreSQL 16 data directory, but the label "
                                                "was recorded on PostgreSQL 15"):
        install_label(data_dir, metadata())
    assert not (data_dir / "backup_label").exists()


def test_missing_pg_control_is_refused_when_the_identity_was_recorded(data_dir: Path) -> None:
    (data_dir / "global" / "pg_control").unlink()
    with pytest.raises(LabelMismatch, match=r"global/pg_control does not exist"):
        install_label(data_dir, metadata())


def test_a_record_without_identity_still_installs_with_a_warning(data_dir: Path) -> None:
    result = install_label(data_dir, metadata(system_identifier=None))
    assert result.written == ["backup_label"]
    assert any("no system_identifier" in w for w in result.warnings)


def test_an_auto_released_hold_needs_explicit_consent(tmp_path: Path, data_dir: Path) -> None:
    """After an automatic release the snapshot may postdate the backup's end."""
    auto = pg_instance(status="auto-released", stopped_at="2026-11-26T12:47:00.254+00:00")
    with pytest.raises(InconsistentRun, match="'auto-released', not released") as info:
        find_label_metadata(record(auto, consistent=False))
    assert "--unsafe-accept-inconsistent" in info.value.hint
    rec = write_record(tmp_path, record(auto, consistent=False))
    out = run_cli("--record", str(rec), str(data_dir))
    assert out.returncode == 2 and "2026-11-26T12:47:00.254" in out.stderr
    assert not (data_dir / "backup_label").exists()
    out = run_cli("--record", str(rec), "--allow-auto-released", str(data_dir))
    assert out.returncode == 0, out.stderr
    assert (data_dir / "backup_label").read_bytes() == LABEL.encode()


def test_state_dir_comes_from_quiesce_toml(data_dir: Path, require_root: None) -> None:
    """A DBA who moved state_dir should not have to repeat it to restore."""
    from quiesce.hold.records import write_record as store

    with private_dir("qrl-") as base:
        state = base / "elsewhere"
        store(str(state), record(pg_instance()))
        config = base / "quiesce.toml"
        config.write_text(f'state_dir = "{state}"\n[[postgresql]]\nconninfo = "host=/x"\n')
        config.chmod(0o600)
        out = run_cli("--config", str(config), str(data_dir))
        assert out.returncode == 0, out.stderr
        assert (data_dir / "backup_label").read_bytes() == LABEL.encode()
        config.chmod(0o644)  # checked like pre checks it
        out = run_cli("--config", str(config), "--force", str(data_dir))
        assert out.returncode == 2 and str(config) in out.stderr



# ------------------------------------------------------- a label must belong to the copy
NEWER_LABEL = LABEL.replace("0/2000028 (file 000000010000000000000002)",
                            "0/4000028 (file 000000010000000000000004)").replace(
                                "CHECKPOINT LOCATION: 0/2000060", "CHECKPOINT LOCATION: 0/4000060")


def newer_instance(**meta: object) -> dict:
    fields = {"backup_label": NEWER_LABEL, "backup_label_sha256": wal.sha256_text(NEWER_LABEL),
              "start_lsn": "0/4000028", "stop_lsn": "0/4000100",
              "stop_wal_file": "000000010000000000000004", **meta}
    return pg_instance(**fields)


def test_the_label_of_a_later_run_is_refused_and_can_be_forced_only_by_name(
        tmp_path: Path, data_dir: Path) -> None:
    rec = write_record(tmp_path, record(newer_instance()))
    out = run_cli("--record", str(rec), str(data_dir))
    assert out.returncode == 2
    assert "does not belong to" in out.stderr and "taken before this backup began" in out.stderr
    assert not (data_dir / "backup_label").exists()
    out = run_cli("--record", str(rec), "--force", str(data_dir))  # --force is not an override
    assert out.returncode == 2 and not (data_dir / "backup_label").exists()
    out = run_cli("--record", str(rec), "--unsafe-skip-label-check", str(data_dir))
    assert out.returncode == 0, out.stderr
    assert "warning: --unsafe-skip-label-check: installed although" in out.stdout
    assert (data_dir / "backup_label").read_text() == NEWER_LABEL


def test_a_copy_newer_than_the_backup_end_is_refused(data_dir: Path) -> None:
    write_pg_control(data_dir, SYSTEM_ID, checkpoint=0x3000060, redo=0x3000028)
    with pytest.raises(LabelMismatch, match="taken after this backup ended"):
        install_label(data_dir, metadata())
    write_pg_control(data_dir, SYSTEM_ID, timeline=2)
    with pytest.raises(LabelMismatch, match="timeline 1, the copy's checkpoint is on timeline 2"):
        install_label(data_dir, metadata())
    assert not (data_dir / "backup_label").exists()


@pytest.mark.parametrize("status", ["late", "aborted", "lost", "failed", "auto-released"])
def test_any_status_but_released_is_inconsistent(status: str) -> None:
    with pytest.raises(InconsistentRun, match=f"was '{status}', not released"):
        find_label_metadata(record(pg_instance(status=status), consistent=False))
    assert find_label_metadata(record(pg_instance(status=status), consistent=False),
                               accept_inconsistent=True)[0] == "main"


def test_a_record_marked_inconsistent_is_refused_even_if_the_instance_was_released(
        tmp_path: Path, data_dir: Path) -> None:
    doc = record(pg_instance(), consistent=False)
    doc["state"], doc["message"] = "late", "the hold was complete only after the deadline"
    rec = write_record(tmp_path, doc)
    out = run_cli("--record", str(rec), str(data_dir))
    assert out.returncode == 2
    assert "recorded as not consistent (state 'late': the hold was complete only" in out.stderr
    assert "--unsafe-accept-inconsistent" in out.stderr
    out = run_cli("--record", str(rec), "--unsafe-accept-inconsistent", str(data_dir))
    assert out.returncode == 0, out.stderr
    assert "warning: --unsafe-accept-inconsistent" in out.stdout


def test_without_run_id_the_run_that_fits_is_chosen_not_the_newest(tmp_path: Path,
                                                                   data_dir: Path) -> None:
    state = tmp_path / "state"
    catalog.write_record(str(state), record(pg_instance(), run_id="20261126T120000Z-aaaaaa"))
    catalog.write_record(str(state), record(newer_instance(), run_id="20261126T130000Z-bbbbbb"))
    out = run_cli("--state-dir", str(state), "--json", str(data_dir))
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout)["run_id"] == "20261126T120000Z-aaaaaa"
    assert (data_dir / "backup_label").read_text() == LABEL
    # The newer copy fits the newer run only.
    (data_dir / "backup_label").unlink()
    write_pg_control(data_dir, SYSTEM_ID, checkpoint=0x4000060, redo=0x4000028)
    out = run_cli("--state-dir", str(state), "--json", str(data_dir))
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout)["run_id"] == "20261126T130000Z-bbbbbb"
    assert (data_dir / "backup_label").read_text() == NEWER_LABEL


def test_without_run_id_none_or_several_fitting_runs_are_refused(tmp_path: Path,
                                                                 data_dir: Path) -> None:
    state = tmp_path / "state"
    catalog.write_record(str(state), record(newer_instance(), run_id="20261126T130000Z-bbbbbb"))
    out = run_cli("--state-dir", str(state), str(data_dir))
    assert out.returncode == 2
    assert "no run in" in out.stderr and "20261126T130000Z-bbbbbb: " in out.stderr
    catalog.write_record(str(state), record(pg_instance(), run_id="20261126T120000Z-aaaaaa"))
    catalog.write_record(str(state), record(pg_instance(), run_id="20261126T140000Z-cccccc"))
    out = run_cli("--state-dir", str(state), str(data_dir))
    assert out.returncode == 2
    assert ("several runs have a label that fits" in out.stderr
            and "20261126T140000Z-cccccc, 20261126T120000Z-aaaaaa" in out.stderr)
    assert not (data_dir / "backup_label").exists()
