"""The drill from start to end: pick a backend, build disks and a server, run the cycles.

Without root the drill runs ``--disks dir`` (the default then) in ``quiesced`` or
``unsafe-staggered`` mode: the local servers run as the invoking user, and ``quiesce run``
runs the cycle as that user with ``fsFreezeEnabled`` false and the drill's own user-owned
config, scripts and quiesce.toml. Loop disks (losetup, mount, FIFREEZE) and therefore
``crash`` mode need root.

Every resource (work dir, disks, servers, the workload, a running ``quiesce run``, a hold left
by an interrupted cycle) is registered on one ExitStack the moment it exists, and released in
reverse order - each release in its own try, so one failing teardown never skips another -
on success, on a failed step, on Ctrl-C (SIGINT) and on SIGTERM. ``--keep`` keeps the files
(snapshot and restored images, configs, logs) but still stops servers and detaches disks.
"""

from __future__ import annotations

import contextlib
import os
import signal
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from types import FrameType

from quiesce.errors import DrillError, EngineUnavailable, QuiesceError
from quiesce.harness.drill.cycle import DISKS, Cycle, CycleFiles, DiskSet
from quiesce.harness.drill.report import DrillResult
from quiesce.harness.drill.targets import Backend, Target, target_for
from quiesce.harness.drill.targets.docker import docker_image, docker_status
from quiesce.harness.drill.workload import Workload
from quiesce.harness.drill.workspace import DISK_SIZE_MB, Workspace

MODES = ("quiesced", "crash", "unsafe-staggered", "unsafe-light-staggered")
LEVELS = ("full", "auto")
WARMUP_ACKS = 200


class DrillInterrupted(KeyboardInterrupt):
    """SIGINT or SIGTERM arrived; everything is being cleaned up."""


@dataclass
class DrillOptions:
    engine: str = "postgresql"
    backend: str = "auto"
    disks: str | None = None  # None: loop when root, dir otherwise
    cycles: int = 3
    mode: str = "quiesced"
    image: str | None = None
    keep: bool = False
    fstype: str = "ext4"
    workers: int = 3
    base_dir: Path | None = None
    fail_at: str | None = None  # tests: "snapshot" | "restore" | "setup"
    level: str = "full"  # "auto": level = "auto" in the drill's quiesce.toml (loop disks)


def resolve_backend(opts: DrillOptions) -> tuple[Backend, Target]:
    """The backend and target to use, or EngineUnavailable with one line naming the fix.

    ``auto`` takes Docker only when an engine answers and it has the image the target needs
    (built here, present, or really pulled); otherwise the local binaries, and
    :attr:`Backend.reason` says why. ``docker`` with no engine or no image is
    EngineUnavailable (exit 3), naming how to start one or build or pull the image.
    """
    if opts.backend not in ("auto", "docker", "local"):
        raise DrillError(f"unknown backend {opts.backend!r}", hint="use auto, docker or local")
    if opts.backend in ("auto", "docker"):
        ok, reason = docker_status()
        if ok:
            try:
                image = docker_image(opts.engine, opts.image)
            except EngineUnavailable as exc:
                if opts.backend == "docker" or opts.image:
                    flag = "--backend docker" if opts.backend == "docker" else "--image"
                    raise EngineUnavailable(f"{flag}: {exc}", hint=exc.hint) from exc
                reason = f"the {reason} has no {opts.engine} image ({exc}; {exc.hint})"
            except QuiesceError as exc:  # e.g. the engine's plugin has no Docker profile
                if opts.backend == "docker" or opts.image:
                    raise EngineUnavailable(f"--backend docker: {exc}", hint=exc.hint) from exc
                reason = f"{opts.engine} cannot run on Docker: {exc}"
            else:
                backend = Backend("docker", image, reason=f"{reason}, image {image}")
                target = target_for(opts.engine, backend)
                return backend, target
        elif opts.backend == "docker":
            raise EngineUnavailable(f"--backend docker: {reason}",
                                    hint="start a Docker engine or use --backend local")
        elif opts.image:  # the local binaries are not the version asked for
            raise EngineUnavailable(f"--image {opts.image} needs the Docker backend: {reason}",
                                    hint="start a Docker engine, or leave out --image to use "
                                         "the server binaries installed here")
        reason = " ".join(reason.split())
    else:
        reason = ""
        if opts.image:
            raise DrillError(f"--image {opts.image} applies to the Docker backend only",
                             hint="leave out --image, or use --backend docker")
    backend = Backend("local", None,
                      reason=f"local binaries: {reason}" if reason else "--backend local")
    target = target_for(opts.engine, backend)
    try:
        target.check_available()
    except EngineUnavailable as exc:
        message = str(exc).rstrip(".")
        if reason:
            message += f", and {reason}"
        hint = exc.hint or ""
        if reason and "docker" not in hint.lower():
            hint += ("; " if hint else "") + "or start a Docker engine for the Docker backend"
        raise EngineUnavailable(" ".join(message.split()), hint=" ".join(hint.split())) from exc
    return backend, target


class Drill:
    def __init__(self, opts: DrillOptions,
                 progress: Callable[[str], None] | None = None) -> None:
        if opts.mode not in MODES:
            raise DrillError(f"unknown mode {opts.mode!r}", hint=f"use one of {', '.join(MODES)}")
        if opts.cycles < 1:
            raise DrillError("--cycles must be at least 1")
        self.opts = opts
        self.progress = progress or (lambda line: print(f"drill: {line}", file=sys.stderr,
                                                        flush=True))
        self.disks_kind = opts.disks or ("loop" if os.geteuid() == 0 else "dir")
        if self.disks_kind not in ("loop", "dir"):
            raise DrillError(f"unknown disks {self.disks_kind!r}", hint="use loop or dir")
        root = os.geteuid() == 0
        if opts.mode == "crash" and self.disks_kind == "dir":
            # Nothing can be frozen on plain directories: "crash" would be an unprotected
            # copy of a live server, and a lucky restore would be reported as verified.
            raise DrillError("--mode crash freezes the disks, and --disks dir cannot be "
                             "frozen: it would copy a live server with no protection at all",
                             hint="use --disks loop (as root), or --mode unsafe-staggered for "
                                  "a copy that must fail" + ("" if root else
                                  "; without root, --mode quiesced --disks dir is the drill "
                                  "that can verify"))
        if self.disks_kind == "loop" and not root:
            # Without root: the quiesced mode on plain directories (no freeze; the databases'
            # own backup bracketing, with the cycle run by `quiesce run` as this user).
            raise DrillError("--disks loop needs root (loop devices, mount, FIFREEZE)",
                             hint="run as root, or use --disks dir (the default without root)")
        self.level = _level(opts, self.disks_kind)
        self._cleaning = False
        self._pending_signal: int | None = None
        self._cycle: Cycle | None = None

    # ---------------------------------------------------------------- signals
    @contextlib.contextmanager
    def _signals(self) -> Iterator[None]:
        """SIGINT/SIGTERM raise DrillInterrupted once; during cleanup they are noted only."""
        def handler(signum: int, frame: FrameType | None) -> None:
            if self._cleaning or self._pending_signal is not None:
                self._pending_signal = signum
                return
            self._pending_signal = signum
            raise DrillInterrupted(f"interrupted by {signal.Signals(signum).name}")

        try:
            old = {s: signal.signal(s, handler) for s in (signal.SIGINT, signal.SIGTERM)}
        except ValueError:  # not the main thread: the caller handles signals
            yield
            return
        try:
            yield
        finally:
            for s, h in old.items():
                signal.signal(s, h)

    # ---------------------------------------------------------------- the drill
    def run(self) -> DrillResult:
        opts = self.opts
        backend, target = resolve_backend(opts)
        if self.level != "full":
            if not hasattr(target, "level"):
                raise DrillError(f"{opts.engine} has no light quiesce level",
                                 hint="use --level full (the default) with this engine")
            target.level = self.level
        result = DrillResult(engine=opts.engine, backend=backend.name, disks=self.disks_kind,
                             mode=opts.mode, backend_reason=backend.reason,
                             fstype=opts.fstype if self.disks_kind == "loop" else None)
        stack = contextlib.ExitStack()
        with self._signals():
            try:
                self._run(stack, target, result)
            finally:
                self._cleaning = True
                self.progress("cleaning up")
                problems = _close_all(stack)
                if problems:
                    result.notes += [f"cleanup: {p}" for p in problems]
                    self.progress("cleanup problems: " + "; ".join(problems))
        result.notes = list(dict.fromkeys(target.notes + result.notes))
        return result

    def _run(self, stack: contextlib.ExitStack, target: Target, result: DrillResult) -> None:
        opts = self.opts
        ws = Workspace(opts.base_dir)
        if opts.keep:
            result.kept_dir = str(ws.root)
            stack.callback(self.progress, f"kept: {ws.root}")
            stack.callback(ws.remove_runtime)
        else:
            stack.callback(_raise_problems, ws.remove)
        self.progress(f"{opts.engine} on {target.backend.name} backend, {self.disks_kind} "
                      f"disks, mode {opts.mode}, {opts.cycles} cycle(s); work dir {ws.root}")
        self.progress(f"backend {target.backend.name}: {target.backend.reason}")
        if opts.mode != "unsafe-staggered":
            _check_config_dir_trusted(ws.cfg)
        disks = self._make_disks(stack, ws)
        layout = target.layout(disks.roots["data"], disks.roots["log"], ws.srv / "live")
        self.progress("starting the throwaway server (data on disk 1, log on disk 2)")
        server = target.new_server(layout)
        stack.callback(server.stop)
        result.version = server.version
        target.setup_schema(server)
        empty = disks_without_files(disks.roots)
        if empty:
            raise DrillError(
                "the server wrote no file on the " + " and ".join(
                    f"{name} disk ({disks.roots[name]})" for name in empty)
                + ": it is not using the drill's disks, so freezing and copying them would "
                "prove nothing",
                hint="when quiesce itself runs in a container with the Docker backend, the "
                     "loop disks it mounts must reach the host's Docker engine: bind-mount the "
                     "work directory with ':rshared' propagation (see docker/README.md), or "
                     "use --disks dir")
        # initdb --no-sync and friends leave files only in the page cache; a real server has
        # long since written them. Sync once so every snapshot starts from durable basics
        # and a failure can only come from how the snapshot itself was taken.
        os.sync()
        if opts.fail_at == "setup":
            raise DrillError("failure injected after setup (QUIESCE_DRILL_FAIL_AT)")
        workload = Workload(lambda: target.session(server), accounts=_accounts(),
                            workers=opts.workers)
        workload.start()
        stack.callback(workload.stop)
        self.progress(f"workload: {opts.workers} writers (transfers + ledger)")
        if not workload.wait_for_acks(WARMUP_ACKS, timeout=120):
            raise DrillError(f"the workload could not commit {WARMUP_ACKS} transfers in 120s: "
                             f"{'; '.join(workload.worker_errors[:3]) or workload.log.errors}")
        files = None
        if opts.mode == "crash":
            result.notes.append("crash mode: the pre/post scripts are no-ops, so `quiesce run` "
                                "reports its own status for them; the snapshot is only as good "
                                "as a simultaneous freeze of every disk")
        if opts.mode != "unsafe-staggered":
            files = CycleFiles(ws, target, server, opts.mode, freeze=self.disks_kind == "loop",
                               level=self.level)
            if self.level != "full":
                result.notes.append(f'level = "{self.level}" in the drill\'s quiesce.toml')
            stack.callback(self._release_hold, files)
        for n in range(1, opts.cycles + 1):
            cycle = Cycle(number=n, total=opts.cycles, mode=opts.mode, target=target,
                          server=server, workload=workload, disks=disks, ws=ws, files=files,
                          progress=self.progress, keep=opts.keep, fail_at=opts.fail_at,
                          level=self.level)
            self._cycle = cycle
            try:
                result.cycles.append(cycle.run())
            finally:
                cycle.stop_run()
                self._cycle = None
            c = result.cycles[-1]
            self.progress(f"cycle {n}/{opts.cycles}: " + (
                "verified" if c.verified else
                "NOT verified: " + (c.error or ", ".join(x.name for x in c.failed_checks()))))
            # Let the workload run between cycles so each snapshot sees new writes.
            workload.wait_for_acks(workload.log.count() + 50, timeout=20)
        workload.stop()
        result.workload_errors = dict(workload.log.errors)

    def _release_hold(self, files: CycleFiles) -> None:
        note = files.release_leftover_hold()
        if note:
            self.progress(note)

    def _make_disks(self, stack: contextlib.ExitStack, ws: Workspace) -> DiskSet:
        from quiesce.harness.disks import DirDisk, LoopDisk

        roots: dict[str, Path] = {}
        images: dict[str, Path | None] = {}
        for name in DISKS:
            disk: LoopDisk | DirDisk
            if self.disks_kind == "loop":
                self.progress(f"disk {name}: {self.opts.fstype} loop device")
                disk = LoopDisk.create(ws.disks, name, DISK_SIZE_MB[name], self.opts.fstype,
                                       image_dir=ws.images)
                stack.callback(disk.teardown)
                if self.opts.keep:  # runs before the teardown above, which deletes the image
                    stack.callback(_keep_image, disk.image, ws.images / f"{name}.live.img")
                images[name] = disk.image
            else:
                disk = DirDisk.create(ws.disks, name)
                if not self.opts.keep:
                    stack.callback(disk.teardown)
                images[name] = None
            roots[name] = disk.mount_point
            os.chmod(disk.mount_point, 0o755)  # noqa: S103 - service users traverse it
        return DiskSet(roots=roots, images=images, kind=self.disks_kind,
                       fstype=self.opts.fstype if self.disks_kind == "loop" else None)


def _level(opts: DrillOptions, disks_kind: str) -> str:
    """The quiesce level the drill's quiesce.toml allows; refuses combinations that prove
    nothing (the light level needs a freeze set, so loop disks)."""
    if opts.level not in LEVELS:
        raise DrillError(f"unknown level {opts.level!r}", hint=f"use one of {', '.join(LEVELS)}")
    level = "auto" if opts.mode == "unsafe-light-staggered" else opts.level
    if opts.level == "auto" and opts.mode in ("crash", "unsafe-staggered"):
        raise DrillError(f"--level auto has no meaning with --mode {opts.mode}: nothing is "
                         "quiesced", hint="use --mode quiesced, or unsafe-light-staggered for "
                                          "the light level's negative control")
    if level == "auto" and disks_kind != "loop":
        raise DrillError("the light level (--level auto, --mode unsafe-light-staggered) needs "
                         "--disks loop: it is chosen only for files on filesystems frozen "
                         "together, and plain directories cannot be frozen",
                         hint="run as root with --disks loop (the default as root)")
    return level


def _check_config_dir_trusted(cfg: Path) -> None:
    """``quiesce run`` refuses a config in a directory someone else could write to, which
    would fail every cycle after the server, disks and workload were set up: say so first."""
    from quiesce.security import check_trusted

    probe = cfg / "probe.json"
    fd = os.open(probe, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
    os.close(fd)
    try:
        problems = check_trusted(probe, "config")
    finally:
        probe.unlink()
    if problems:
        raise DrillError(
            f"the drill's config dir {cfg} would be refused by `quiesce run`: "
            + "; ".join(f"{p.where}: {p.message}" for p in problems),
            hint="point QUIESCE_DRILL_DIR at a directory whose parents are all root-owned and "
                 "not writable by group/other (the default is /var/lib/quiesce-drill)"
            if os.geteuid() == 0 else
            "point QUIESCE_DRILL_DIR at a directory whose parents are all owned by you or root "
            "and not writable by group/other (the default is ~/.cache/quiesce-drill)")


def disks_without_files(roots: dict[str, Path]) -> list[str]:
    """The disks on which no regular file exists (``lost+found`` aside), in ``roots`` order.

    A server started on the drill's disks always leaves files on both (data files; WAL, redo
    log or journal). None means its bind mounts missed the disks: a Docker engine resolving
    host paths whose mounts it cannot see writes into the directories underneath.
    """
    empty = []
    for name, root in roots.items():
        found = False
        for dirpath, dirnames, filenames in os.walk(root):
            if Path(dirpath) == Path(root) and "lost+found" in dirnames:
                dirnames.remove("lost+found")
            if any(os.path.isfile(os.path.join(dirpath, f)) for f in filenames):
                found = True
                break
        if not found:
            empty.append(name)
    return empty


def _accounts() -> int:
    from quiesce.harness.drill.targets.base import ACCOUNTS

    return ACCOUNTS


def _keep_image(image: Path, kept: Path) -> None:
    with contextlib.suppress(OSError):
        os.link(image, kept)


def _raise_problems(fn: Callable[[], list[str]]) -> None:
    problems = fn()
    if problems:
        raise DrillError("; ".join(problems))


def _close_all(stack: contextlib.ExitStack) -> list[str]:
    """Unwind the stack; a failing callback is reported and the rest still runs.

    ExitStack runs every callback even when some raise, re-raising the last error with the
    earlier ones chained as its context: walk that chain to report each of them.
    """
    problems: list[str] = []
    try:
        stack.close()
    except BaseException as exc:
        seen: BaseException | None = exc
        while seen is not None and len(problems) < 10:
            problems.append(f"{type(seen).__name__}: {seen}")
            seen = seen.__context__
    return problems
