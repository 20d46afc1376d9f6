"""One drill cycle: take a snapshot the way the mode says, restore it, verify it.

Snapshot per mode:
- ``quiesced``: ``quiesce run`` with the drill's own Azure config whose pre/post scripts exec
  ``quiesce pre`` / ``quiesce post``: pre -> sync -> freeze both disks -> the snapshot command
  copies the disk images one at a time -> thaw -> post. With ``dir`` disks nothing is frozen;
  the copy happens while the database is held (PostgreSQL: the WAL directory is copied after
  ``post`` and the recorded backup_label installed at restore, see targets/postgresql.py).
- ``crash``: the same ``quiesce run`` with no-op scripts: freeze and snapshot only.
- ``unsafe-staggered``: the negative control: no quiesce, no freeze; the log disk is copied
  first, a checkpoint is forced, then the data disk is copied, with the workload running.
  (Data first, then WAL is how pg_basebackup works and is safe; log first is not.)
- ``unsafe-light-staggered``: the light level's negative control: ``quiesce pre`` runs with
  ``level = "auto"`` and is told (falsely) that the caller freezes both disks together, so it
  chooses the light level (checked: the cycle fails with an error otherwise); then the disks
  are copied one by one as in ``unsafe-staggered``, with no freeze, and ``quiesce post``
  releases. Commits went on during the hold, so this copy must NOT verify: the light level is
  safe only under a real simultaneous freeze.

``level`` (``--level``): ``auto`` writes ``level = "auto"`` into the drill's quiesce.toml
section; in ``quiesced`` mode a ``level`` check then requires the run record to show the light
level chosen (``quiesce run`` tells ``pre`` what it freezes), with every condition and its
evidence in the check's detail.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shlex
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from quiesce.errors import DrillError, HarnessError
from quiesce.harness.drill.report import CycleResult
from quiesce.harness.drill.targets.base import ACCOUNTS, INITIAL_BALANCE, Target
from quiesce.harness.drill.verify import Check, check_balances, check_ledger, check_mirror
from quiesce.harness.drill.workload import Workload, longest_gap_ms
from quiesce.harness.drill.workspace import Workspace, attach_image, copy_image, copy_tree
from quiesce.harness.servers.base import Server

RUN_TIMEOUT = 300.0
SCRIPT_TIMEOUT = 60
MAX_HOLD_SECONDS = 60
FREEZE_TIMEOUT = 60
DISKS = ("data", "log")


@dataclass
class DiskSet:
    """The live disks: name -> (mount point or directory, image file or None)."""

    roots: dict[str, Path]
    images: dict[str, Path | None]
    kind: str  # "loop" | "dir"
    fstype: str | None


class CycleFiles:
    """The Azure config, wrapper scripts and quiesce.toml of the drill (written once)."""

    def __init__(self, ws: Workspace, target: Target, server: Server, mode: str,
                 freeze: bool, *, level: str = "full") -> None:
        self.ws = ws
        self.mode = mode
        self.toml = ws.cfg / "quiesce.toml"
        self.state_dir = ws.cfg / "state"
        self.state_dir.mkdir(mode=0o700)
        self.runtime = ws.runtime_dir()
        self.azure = ws.cfg / "VMSnapshotScriptPluginConfig.json"
        self.pre = ws.cfg / "pre-script.sh"
        self.post = ws.cfg / "post-script.sh"
        py = shlex.quote(sys.executable)
        self.level = level
        if mode in ("quiesced", "unsafe-light-staggered"):
            toml = (f"max_hold_seconds = {MAX_HOLD_SECONDS}\n"
                    f'state_dir = "{self.state_dir}"\n\n'
                    + target.toml_section(server, ws.cfg)
                    + (f'level = "{level}"\n' if level != "full" else ""))
            _write(self.toml, toml, 0o600)
            common = (f"--config {shlex.quote(str(self.toml))} "
                      f"--runtime-dir {shlex.quote(str(self.runtime))}")
            _write(self.pre, f"#!/bin/sh\nexec {py} -m quiesce pre {common}\n", 0o700)
            _write(self.post, f"#!/bin/sh\nexec {py} -m quiesce post {common}\n", 0o700)
        else:  # crash: freeze and snapshot only, no database plugin
            _write(self.pre, "#!/bin/sh\nexit 0\n", 0o700)
            _write(self.post, "#!/bin/sh\nexit 0\n", 0o700)
        config = {
            "pluginName": "ScriptRunner",
            "preScriptLocation": str(self.pre),
            "postScriptLocation": str(self.post),
            "preScriptParams": [],
            "postScriptParams": [],
            "preScriptNoOfRetries": 0,
            "postScriptNoOfRetries": 0,
            "timeoutInSeconds": SCRIPT_TIMEOUT,
            "continueBackupOnFailure": False,
            "fsFreezeEnabled": freeze,
        }
        _write(self.azure, json.dumps(config, indent=2) + "\n", 0o600)

    def release_leftover_hold(self) -> str | None:
        """After an interrupted cycle: make a holder still running release and exit."""
        if self.mode not in ("quiesced", "unsafe-light-staggered") or not self.runtime.exists():
            return None
        argv = [sys.executable, "-m", "quiesce", "post", "--config", str(self.toml),
                "--runtime-dir", str(self.runtime), "--json"]
        try:
            done = subprocess.run(argv, capture_output=True, text=True, timeout=60,
                                  stdin=subprocess.DEVNULL, check=False)
        except (OSError, subprocess.SubprocessError) as exc:
            # Say so: the databases stay locked until max_hold_seconds.
            return (f"could not release a hold left by an interrupted cycle ({exc}); it "
                    f"ends by itself within max_hold_seconds = {MAX_HOLD_SECONDS}")
        if done.returncode == 0:
            return "released a hold left by an interrupted cycle"
        return None


def _write(path: Path, text: str, mode: int) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, mode)
    with open(fd, "w", encoding="utf-8") as fh:
        fh.write(text)
    os.chmod(path, mode)


class Cycle:
    """Runs cycle ``number`` against a live server with its workload running."""

    def __init__(self, *, number: int, total: int, mode: str, target: Target, server: Server,
                 workload: Workload, disks: DiskSet, ws: Workspace, files: CycleFiles | None,
                 progress: Callable[[str], None], keep: bool,
                 fail_at: str | None = None, level: str = "full") -> None:
        self.n = number
        self.level = level
        self.total = total
        self.mode = mode
        self.target = target
        self.server = server
        self.workload = workload
        self.disks = disks
        self.ws = ws
        self.files = files
        self.progress = progress
        self.keep = keep
        self.fail_at = fail_at
        self.result = CycleResult(number=number)
        self.snap = ws.snap / f"cycle-{number}"
        self.proc: subprocess.Popen[str] | None = None

    def say(self, phase: str) -> None:
        self.progress(f"cycle {self.n}/{self.total}: {phase}")

    # ---------------------------------------------------------------- snapshot
    def run(self) -> CycleResult:
        r = self.result
        try:
            quiesced = (" (quiesce run: pre, freeze, copy, thaw, post)"
                        if self.disks.kind == "loop" else
                        " (quiesce run: pre, copy, post; dir disks cannot be frozen)")
            self.say("snapshot" + {"quiesced": quiesced,
                                   "crash": " (quiesce run: freeze, copy, thaw; no plugin)",
                                   "unsafe-staggered": " (negative control: log disk, "
                                   "checkpoint, data disk)",
                                   "unsafe-light-staggered": " (negative control: pre at the "
                                   "light level, log disk, checkpoint, data disk, post; no "
                                   "freeze)"}[self.mode])
            began = time.monotonic()
            if self.mode == "unsafe-staggered":
                pre_began, ended = self._staggered()
            elif self.mode == "unsafe-light-staggered":
                pre_began, ended = self._light_staggered()
            else:
                pre_began, ended = self._quiesce_run()
                if self.level == "auto":
                    self._check_level()
            r.snapshot_seconds = time.monotonic() - began
            r.write_stall_ms = longest_gap_ms((a.acked for a in self.workload.log.acks()),
                                              pre_began, ended)
            r.acked_before_pre = len(self.workload.log.acked_before(pre_began))
            r.acked_total = self.workload.log.count()
            self._restore_and_verify(pre_began)
        except (DrillError, HarnessError) as exc:
            r.error = str(exc)
        finally:
            if not self.keep:
                import shutil

                shutil.rmtree(self.snap, ignore_errors=True)
            else:
                r.kept["snapshot"] = str(self.snap)
        return r

    def _sources(self, names: tuple[str, ...]) -> list[Path]:
        if self.disks.kind == "loop":
            return [p for p in (self.disks.images[n] for n in names) if p is not None]
        return [self.disks.roots[n] for n in names]

    def _quiesce_run(self) -> tuple[float, float]:
        assert self.files is not None
        f = self.files
        log_later = self.disks.kind == "dir" and self.target.copy_log_after_post
        names = ("data",) if log_later else DISKS
        cmd = [sys.executable, "-m", "quiesce.harness.drill.snapshot_images", str(self.snap),
               *map(str, self._sources(names))]
        if self.fail_at == "snapshot":
            cmd += ["--fail-after", "1"]
        status_file = self.ws.cfg / f"status-{self.n}.json"
        argv = [sys.executable, "-m", "quiesce", "run", "--config", str(f.azure), "--json",
                "--status-file", str(status_file), "--snapshot-command", shlex.join(cmd),
                "--freeze-timeout", str(FREEZE_TIMEOUT)]
        if self.disks.kind == "loop":
            for name in DISKS:
                argv += ["--freeze-mount", str(self.disks.roots[name])]
        pre_began = time.monotonic()
        self.proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                     stderr=subprocess.PIPE, text=True, cwd="/",
                                     start_new_session=True)
        try:
            out, err = self.proc.communicate(timeout=RUN_TIMEOUT)
        except subprocess.TimeoutExpired as exc:
            self.stop_run()
            raise DrillError(f"quiesce run did not finish in {RUN_TIMEOUT:g}s") from exc
        ended = time.monotonic()
        code = self.proc.returncode
        self.proc = None
        try:
            status: dict[str, Any] = json.loads(out)
        except json.JSONDecodeError as exc:
            raise DrillError(f"quiesce run exited {code} without a JSON status: "
                             f"{(err or out).strip()[-800:]}") from exc
        r = self.result
        r.consistency = status.get("consistency")
        r.freeze_window_ms = (status.get("freeze") or {}).get("window_ms")
        errors = status.get("errors") or []
        summary = "; ".join(f"{e.get('code') or e.get('phase')}: {e.get('message')}"
                            for e in errors)[:800]
        if code == 2 or not status.get("snapshot_taken"):
            raise DrillError(f"quiesce run took no snapshot (exit {code}): "
                             f"{summary or err.strip()[-800:]}")
        want = "application" if self.mode == "quiesced" else None
        ok = code == 0 and (want is None or r.consistency == want)
        block = (status.get("hold") or {}).get("block") or {}
        self.result.checks.append(Check(
            "snapshot_cycle", ok,
            f"quiesce run exit {code}, consistency {r.consistency}"
            + (f", window {r.freeze_window_ms} ms" if r.freeze_window_ms is not None else "")
            + (f", commit block taken at the freeze ({block.get('ms')} ms)"
               if block.get("blocked") else "")
            + (f"; errors: {summary}" if summary else "")))
        if log_later:
            # PostgreSQL with plain directories: WAL copied after pg_backup_stop, as
            # pg_basebackup does, so it holds the end-of-backup record the label requires.
            self.say("copying the WAL directory after post")
            copy_tree(self.disks.roots["log"], self.snap / "log")
        return pre_began, ended

    def stop_run(self) -> None:
        """Stop a running ``quiesce run`` (interrupt): SIGTERM its group, then SIGKILL."""
        proc, self.proc = self.proc, None
        if proc is None or proc.poll() is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=FREEZE_TIMEOUT + 15)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=10)

    def _staggered(self) -> tuple[float, float]:
        pre_began = time.monotonic()
        self._copy_staggered("")
        if self.fail_at == "snapshot":
            raise DrillError("failure injected after the snapshot (QUIESCE_DRILL_FAIL_AT)")
        return pre_began, time.monotonic()

    def _check_level(self) -> None:
        """The run record must show the light level, every condition with its evidence."""
        assert self.files is not None
        from quiesce.errors import QuiesceError
        from quiesce.hold.records import load_record

        try:
            record = load_record(str(self.files.state_dir))
        except QuiesceError as exc:
            self.result.checks.append(Check("level", False, f"no run record to read: {exc}"))
            return
        level = _level_of(record)
        self.result.checks.append(Check("level", level.get("chosen") == "light",
                                        _describe_level(level)))

    def _light_staggered(self) -> tuple[float, float]:
        """pre at the light level (a freeze claimed, none done), disks copied one by one."""
        assert self.files is not None
        from quiesce.freezing.freeze_set import (
            FREEZE_MOUNTS_ENV,
            RUN_ID_ENV,
            freeze_mounts_value,
        )
        from quiesce.hold.records import new_run_id

        f = self.files
        run_id = new_run_id()
        env = {**os.environ, RUN_ID_ENV: run_id,
               FREEZE_MOUNTS_ENV: freeze_mounts_value(
                   run_id, [str(self.disks.roots[name]) for name in DISKS])}
        common = ["--config", str(f.toml), "--runtime-dir", str(f.runtime), "--json"]
        pre_began = time.monotonic()
        pre = _quiesce(["pre", *common], env)
        if pre.returncode != 0:
            raise DrillError(f"quiesce pre failed (exit {pre.returncode}): "
                             f"{(pre.stderr or pre.stdout).strip()[-800:]}")
        try:
            self._copy_staggered(", with no freeze")
        finally:
            post = _quiesce(["post", *common], env)
        ended = time.monotonic()
        try:
            level = _level_of(json.loads(post.stdout))
        except json.JSONDecodeError as exc:
            raise DrillError(f"quiesce post exited {post.returncode} without JSON: "
                             f"{(post.stderr or post.stdout).strip()[-800:]}") from exc
        self.result.notes.append(f"quiesce: {_describe_level(level)}")
        if level.get("chosen") != "light":
            raise DrillError("the light level was not chosen, so this negative control proves "
                             f"nothing: {_describe_level(level)}")
        return pre_began, ended

    def _copy_staggered(self, how: str) -> None:
        """The negative controls' copy: the log disk, then (the workload moving on, then a
        checkpoint, then moving on again) the data disk: disks copied one by one."""
        from quiesce.harness.drill.snapshot_images import copy_source

        self.snap.mkdir(mode=0o700, parents=True)
        log_src, data_src = self._sources(("log",))[0], self._sources(("data",))[0]
        copy_source(log_src, self.snap)
        count = self.workload.log.count()
        self.workload.wait_for_acks(count + 20, timeout=10)
        what = self.target.checkpoint(self.server)
        count = self.workload.log.count()
        self.workload.wait_for_acks(count + 20, timeout=10)
        copy_source(data_src, self.snap)
        self.result.notes.append(f"log disk copied first, then {what}, then the data disk{how}")

    # ---------------------------------------------------------------- restore
    def _restore_and_verify(self, pre_began: float) -> None:
        r = self.result
        restore = self.ws.restore / f"cycle-{self.n}"
        restore.mkdir(mode=0o711)
        with contextlib.ExitStack() as stack:
            if not self.keep:
                stack.callback(_rmtree, restore)
            else:
                r.kept["restore"] = str(restore)
            self.say("restore (copies of the snapshot as new disks)")
            roots: dict[str, Path] = {}
            for name in DISKS:
                if self.disks.kind == "loop":
                    src = self.snap / self.disks.images[name].name  # type: ignore[union-attr]
                    image = restore / f"{name}.img"
                    copy_image(src, image)
                    if self.keep:
                        os.link(image, restore / f"{name}.kept.img")
                    disk = attach_image(image, restore / name, self.disks.fstype or "ext4")
                    stack.callback(disk.teardown)
                    roots[name] = disk.mount_point
                else:
                    copy_tree(self.snap / name, restore / name)
                    roots[name] = restore / name
            layout = self.target.layout(roots["data"], roots["log"],
                                        self.ws.srv / f"restore-{self.n}")
            if self.disks.kind == "dir" and self.mode == "quiesced" and self.files:
                label = self.target.install_label(self.files.state_dir, layout.data_dir)
                if label is not None:
                    r.backup_label_installed = True
                    r.notes.append(f"backup_label installed: {label.splitlines()[0][:200]}")
            if self.fail_at == "restore":
                raise DrillError("failure injected at restore (QUIESCE_DRILL_FAIL_AT)")
            self.say("recovery (fresh server on the restored disks)")
            started = time.monotonic()
            try:
                restored = self.target.open_restored(layout, self.server)
            except (DrillError, HarnessError) as exc:
                r.checks.append(Check("server_started", False, _startup_failure(exc)))
                return
            stack.callback(restored.stop)
            r.recovery_seconds = (getattr(restored, "recovery_seconds", None)
                                  or time.monotonic() - started)
            r.checks.append(Check("server_started", True,
                                  f"recovered and accepting queries in "
                                  f"{r.recovery_seconds:.2f}s"))
            self.say("verify (invariants, acknowledged writes, integrity check)")
            self._verify(restored, pre_began)

    def _verify(self, restored: Server, pre_began: float) -> None:
        r = self.result
        try:
            state = self.target.read_state(restored)
        except Exception as exc:  # a restore that cannot even be read is not verified
            r.checks.append(Check("read_restored_data", False, f"{type(exc).__name__}: {exc}"))
            return
        r.checks += check_balances(state, ACCOUNTS, INITIAL_BALANCE)
        r.checks += check_ledger(state, self.workload.log, pre_began)
        r.checks += check_mirror(state)
        try:
            r.checks += self.target.integrity_checks(restored)
        except Exception as exc:
            r.checks.append(Check("integrity_check", False, f"{type(exc).__name__}: {exc}"))
        r.checks += self.target.log_checks(restored)


def _quiesce(args: list[str], env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    try:
        return subprocess.run([sys.executable, "-m", "quiesce", *args], env=env, cwd="/",
                              stdin=subprocess.DEVNULL, capture_output=True, text=True,
                              timeout=SCRIPT_TIMEOUT + 30, check=False)
    except subprocess.TimeoutExpired as exc:
        raise DrillError(f"quiesce {args[0]} did not finish in {SCRIPT_TIMEOUT + 30}s") from exc


def _level_of(document: dict[str, Any]) -> dict[str, Any]:
    """The level record of the drill's one instance in a run record or post's JSON."""
    for instance in document.get("instances") or []:
        metadata = instance.get("metadata") or {}
        if isinstance(metadata.get("level"), dict):
            return dict(metadata["level"])
    return {}


def _describe_level(level: dict[str, Any]) -> str:
    if not level:
        return "no level recorded"
    failed = [c for c in level.get("conditions", []) if not c.get("ok")]
    text = f"level {level.get('chosen')} ({level.get('setting')}): {level.get('reason')}"
    if level.get("chosen") == "light":
        text += "; " + "; ".join(f"{c['condition']}: {c['evidence']}"
                                 for c in level.get("conditions", []))[:600]
    elif failed:
        text += f" [{len(failed)} condition(s) not met]"
    return text


def _startup_failure(exc: BaseException) -> str:
    """The first line of a failed start plus the server's own error lines (PANIC, FATAL...)."""
    lines = str(exc).splitlines()
    head = lines[0].split("; log tail:")[0] if lines else type(exc).__name__
    errors = []
    for line in lines[1:]:
        match = re.search(r"(?:\[(ERROR)\]|\b(PANIC|FATAL|ERROR):)\s+(.*)", line)
        if match and "starting up" not in line:
            errors.append(f"{match.group(1) or match.group(2)}: {match.group(3).strip()}")
    detail = head + (": " + " | ".join(dict.fromkeys(errors)) if errors else "")
    return " ".join(detail.split())[:700]


def _rmtree(path: Path) -> None:
    import shutil

    shutil.rmtree(path, ignore_errors=True)
