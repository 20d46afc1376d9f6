"""A cached Debian root filesystem, built with mmdebstrap from the distribution's own packages.

No container registry is needed: the packages come from the same apt sources the host uses
(its ``/etc/apt/sources.list`` and ``sources.list.d``), for the host's own release unless told
otherwise. The result is a **tarball** (``<cache_dir>/rootfs-<key>.tar``), ready for
``docker import`` or for unpacking into a chroot directory (:func:`unpack_rootfs`).

    tar = ensure_rootfs(["python3"], Path("/var/cache/quiesce/rootfs"))

``key`` is a hash of every input: the package list (sorted, deduplicated), the release, the
mmdebstrap variant, the hooks, the apt sources' text and the architecture. The same inputs give
the same file, built once; a changed input builds a new one (old ones stay until
:func:`prune_rootfs` or a manual delete). A build writes ``<name>.partial-<pid>`` first and
renames it into place, so an interrupted build never leaves a file that looks finished, and a
file lock per key lets two processes ask for the same rootfs at once (the second waits).

Hooks are mmdebstrap's: ``("essential", "cmd")`` runs ``cmd`` (a shell command, mmdebstrap's own
convention; ``"$1"`` is the chroot directory) after the essential packages are installed,
``("customize", "cmd")`` at the end; ``setup`` and ``extract`` are accepted too.

Building needs root (mmdebstrap's root mode: chroot, mounts of /proc and /dev inside the
target); as root, a missing mmdebstrap is installed from the distribution with apt-get.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import shutil
import subprocess
import tarfile
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from quiesce.errors import HarnessError

#: Bumped when the way a rootfs is built changes, so old cache entries are not reused.
FORMAT = 1
HOOK_KINDS = ("setup", "extract", "essential", "customize")
APT_SOURCES = (Path("/etc/apt/sources.list"), Path("/etc/apt/sources.list.d"))
BUILD_TIMEOUT = 1800.0

Progress = Callable[[str], None]


class RootfsError(HarnessError):
    """A root filesystem could not be built (mmdebstrap missing or failing, not root, ...)."""


@dataclass(frozen=True)
class RootfsSpec:
    """Everything that decides what a rootfs contains; :attr:`key` hashes all of it."""

    packages: tuple[str, ...]
    distro: str
    variant: str = "minbase"
    hooks: tuple[tuple[str, str], ...] = ()
    #: apt sources: (name, text) of each file or mirror URI given to mmdebstrap
    sources: tuple[tuple[str, str], ...] = ()
    arch: str = ""
    extra: tuple[str, ...] = field(default=())  # mmdebstrap options, e.g. ("--aptopt=...",)

    @property
    def key(self) -> str:
        doc = {"format": FORMAT, "packages": list(self.packages), "distro": self.distro,
               "variant": self.variant, "hooks": [list(h) for h in self.hooks],
               "sources": [list(s) for s in self.sources], "arch": self.arch,
               "extra": list(self.extra)}
        blob = json.dumps(doc, sort_keys=True).encode()
        return hashlib.sha256(blob).hexdigest()[:16]


def host_distro() -> str:
    """The host's release codename (``bookworm``), from /etc/os-release."""
    try:
        text = Path("/etc/os-release").read_text(encoding="utf-8")
    except OSError as exc:
        raise RootfsError(f"cannot read /etc/os-release to find this host's release: {exc}",
                          hint="pass the release explicitly (distro='bookworm')") from exc
    values = {}
    for line in text.splitlines():
        name, sep, value = line.partition("=")
        if sep:
            values[name.strip()] = value.strip().strip('"')
    codename = values.get("VERSION_CODENAME") or ""
    if not codename:
        raise RootfsError("/etc/os-release names no VERSION_CODENAME",
                          hint="pass the release explicitly (distro='bookworm')")
    return codename


def host_sources() -> list[Path]:
    """The host's apt source files that mmdebstrap can take as they are (sorted by name)."""
    found: list[Path] = []
    main, directory = APT_SOURCES
    if main.is_file() and any(line.strip() and not line.lstrip().startswith("#")
                              for line in main.read_text(encoding="utf-8").splitlines()):
        found.append(main)
    if directory.is_dir():
        found += sorted(p for p in directory.iterdir()
                        if p.is_file() and p.suffix in (".list", ".sources"))
    return found


def _arch() -> str:
    try:
        done = subprocess.run(["dpkg", "--print-architecture"], capture_output=True, text=True,
                              timeout=30, check=True)
    except (OSError, subprocess.SubprocessError) as exc:
        raise RootfsError(f"dpkg --print-architecture failed: {exc}",
                          hint="build root filesystems on a Debian or Ubuntu host") from exc
    return done.stdout.strip()


def make_spec(packages: Sequence[str], *, distro: str | None = None, variant: str = "minbase",
              hooks: Sequence[tuple[str, str]] = (), mirrors: Sequence[str] | None = None,
              extra_options: Sequence[str] = ()) -> RootfsSpec:
    """The spec for these inputs. ``mirrors``: URIs or source files (default: the host's apt
    sources). Bad input raises RootfsError naming what to fix."""
    pkgs = tuple(sorted({p.strip() for p in packages if p.strip()}))
    for p in pkgs:
        if p.startswith("-") or any(c.isspace() or c == "," for c in p):
            raise RootfsError(f"bad package name {p!r}", hint="give Debian package names")
    for kind, command in hooks:
        if kind not in HOOK_KINDS:
            raise RootfsError(f"unknown mmdebstrap hook kind {kind!r}",
                              hint=f"use one of {', '.join(HOOK_KINDS)}")
        if not command.strip():
            raise RootfsError(f"empty {kind} hook", hint="give a shell command")
    sources: list[tuple[str, str]] = []
    if mirrors is None:
        files = host_sources()
        if not files:
            raise RootfsError("this host has no apt sources (/etc/apt/sources.list{,.d})",
                              hint="configure apt, or pass mirrors=[...]")
        sources = [(str(p), p.read_text(encoding="utf-8")) for p in files]
    else:
        for m in mirrors:
            path = Path(m)
            sources.append((m, path.read_text(encoding="utf-8") if path.is_file() else m))
    return RootfsSpec(packages=pkgs, distro=distro or host_distro(), variant=variant,
                      hooks=tuple((k, c) for k, c in hooks), sources=tuple(sources),
                      arch=_arch(), extra=tuple(extra_options))


def rootfs_path(spec: RootfsSpec, cache_dir: Path) -> Path:
    return Path(cache_dir) / f"rootfs-{spec.key}.tar"


def mmdebstrap_argv(spec: RootfsSpec, target: Path) -> list[str]:
    """The mmdebstrap command that builds ``spec`` into the tarball ``target``."""
    argv = ["mmdebstrap", f"--variant={spec.variant}", "--mode=root", "--format=tar",
            f"--architectures={spec.arch}"]
    if spec.packages:
        argv.append("--include=" + ",".join(spec.packages))
    for kind, command in spec.hooks:
        argv.append(f"--{kind}-hook={command}")
    argv += list(spec.extra)
    argv += [spec.distro, str(target)]
    argv += [name for name, _text in spec.sources]
    return argv


def ensure_mmdebstrap(progress: Progress = print) -> str:
    """The path of mmdebstrap; installs Debian's package when missing (root only)."""
    found = shutil.which("mmdebstrap")
    if found:
        return found
    if os.geteuid() != 0 or not shutil.which("apt-get"):
        raise RootfsError("mmdebstrap is not installed",
                          hint="install it (Debian/Ubuntu: apt-get install mmdebstrap) and "
                               "build as root")
    progress("installing mmdebstrap (apt-get install mmdebstrap)")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    for argv in (["apt-get", "update", "-qq"],
                 ["apt-get", "install", "-y", "-qq", "--no-install-recommends", "mmdebstrap"]):
        done = subprocess.run(argv, capture_output=True, text=True, env=env, timeout=900,
                              check=False, stdin=subprocess.DEVNULL)
        if done.returncode != 0:
            raise RootfsError(f"{' '.join(argv)} failed (exit {done.returncode}): "
                              f"{(done.stderr or done.stdout).strip()[-800:]}",
                              hint="install mmdebstrap by hand")
    found = shutil.which("mmdebstrap")
    if not found:
        raise RootfsError("apt-get installed mmdebstrap but it is not on PATH",
                          hint="check PATH (mmdebstrap lives in /usr/bin)")
    return found


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def ensure_rootfs(packages: Sequence[str], cache_dir: Path, *, progress: Progress = print,
                  distro: str | None = None, variant: str = "minbase",
                  hooks: Sequence[tuple[str, str]] = (), mirrors: Sequence[str] | None = None,
                  extra_options: Sequence[str] = (), rebuild: bool = False,
                  timeout: float = BUILD_TIMEOUT) -> Path:
    """A tarball of a ``variant`` root filesystem of ``distro`` with ``packages`` installed.

    Cached in ``cache_dir`` under a key of all inputs; built with mmdebstrap only when missing
    (or ``rebuild``). Returns the tarball's path. ``progress`` gets one line per step.
    """
    spec = make_spec(packages, distro=distro, variant=variant, hooks=hooks, mirrors=mirrors,
                     extra_options=extra_options)
    cache_dir = Path(cache_dir)
    cache_dir.mkdir(parents=True, exist_ok=True, mode=0o755)
    final = rootfs_path(spec, cache_dir)
    with _locked(cache_dir / f".rootfs-{spec.key}.lock"):
        if final.is_file() and not rebuild:
            progress(f"rootfs {spec.key}: cached ({final})")
            return final
        if os.geteuid() != 0:
            raise RootfsError(f"building a root filesystem needs root (mmdebstrap's root mode); "
                              f"{final} is not built yet",
                              hint="run the build as root once; later runs use the cache")
        ensure_mmdebstrap(progress)
        partial = final.with_name(f"{final.name}.partial-{os.getpid()}")
        argv = mmdebstrap_argv(spec, partial)
        progress(f"rootfs {spec.key}: mmdebstrap --variant={spec.variant} {spec.distro} with "
                 f"{len(spec.packages)} package(s): {' '.join(spec.packages) or '(none)'}")
        started = time.monotonic()
        try:
            done = subprocess.run(argv, capture_output=True, text=True, timeout=timeout,
                                  check=False, stdin=subprocess.DEVNULL)
        except subprocess.TimeoutExpired as exc:
            partial.unlink(missing_ok=True)
            raise RootfsError(f"mmdebstrap did not finish in {timeout:g}s",
                              hint="check the apt sources and the network") from exc
        except BaseException:
            partial.unlink(missing_ok=True)
            raise
        if done.returncode != 0:
            partial.unlink(missing_ok=True)
            tail = "\n".join((done.stderr or done.stdout).strip().splitlines()[-15:])
            raise RootfsError(f"mmdebstrap failed (exit {done.returncode}):\n{tail}",
                              hint="check that the packages exist in the release and that "
                                   "apt can reach its sources")
        os.replace(partial, final)
        seconds = time.monotonic() - started
        manifest = {"key": spec.key, "packages": list(spec.packages), "distro": spec.distro,
                    "variant": spec.variant, "hooks": [list(h) for h in spec.hooks],
                    "sources": [name for name, _ in spec.sources], "arch": spec.arch,
                    "build_seconds": round(seconds, 1), "size": final.stat().st_size}
        final.with_suffix(".json").write_text(json.dumps(manifest, indent=2) + "\n",
                                              encoding="utf-8")
        progress(f"rootfs {spec.key}: built in {seconds:.0f}s "
                 f"({final.stat().st_size // (1 << 20)} MiB, {final})")
        return final


def unpack_rootfs(tarball: Path, target: Path) -> Path:
    """Unpack a rootfs tarball into the empty (or new) directory ``target``, as root, keeping
    owners, modes and device nodes; returns ``target``. For a chroot."""
    target = Path(target)
    target.mkdir(parents=True, exist_ok=True)
    if any(target.iterdir()):
        raise RootfsError(f"{target} is not empty", hint="unpack into a new directory")
    done = subprocess.run(["tar", "-C", str(target), "--numeric-owner", "-xpf", str(tarball)],
                          capture_output=True, text=True, timeout=600, check=False,
                          stdin=subprocess.DEVNULL)
    if done.returncode != 0:
        raise RootfsError(f"tar could not unpack {tarball}: {done.stderr.strip()[-500:]}",
                          hint="unpack as root, on a filesystem with room for it")
    return target


def rootfs_members(tarball: Path) -> list[str]:
    """The names in a rootfs tarball (tests and inspection)."""
    with tarfile.open(tarball) as tar:
        return tar.getnames()


def prune_rootfs(cache_dir: Path, keep: Sequence[Path] = ()) -> list[Path]:
    """Delete cached rootfs tarballs (and their manifests) other than ``keep``; returns them."""
    kept = {Path(p).resolve() for p in keep}
    removed = []
    for path in sorted(Path(cache_dir).glob("rootfs-*.tar")):
        if path.resolve() in kept:
            continue
        path.unlink(missing_ok=True)
        path.with_suffix(".json").unlink(missing_ok=True)
        removed.append(path)
    return removed
