"""The client side of the session holder: where it lives and how to talk to it.

``quiesce post`` and ``quiesce status`` import only this module (and the standard library) so
they reach the holder fast: no plugin, no driver, no config parsing before the request is sent.

Layout of the runtime dir (``--runtime-dir``, else ``QUIESCE_RUNTIME_DIR``, else
``/run/quiesce`` as root and ``$XDG_RUNTIME_DIR/quiesce`` as any other user), owned by the user
quiesce runs as, mode 0700, meant to be on tmpfs (never frozen):

- ``holder.sock``: the holder's Unix socket (0600). Protocol: the client sends one JSON object
  on one line (``{"op": "status"}``, ``{"op": "release"}``, ``{"op": "block"}``...), the holder
  answers with one JSON object on one line and closes the connection (a request marked
  ``linger``, :class:`LingeringRequest`, stays open until the client closes it, and the client
  may send further requests on it, each answered in turn).
- ``holder.lock``: flock()ed by the holder (and its guardian) for as long as a hold or its
  recovery is in progress; the kernel drops the lock when they die, so it cannot go stale.
- ``result.json``: the outcome of a hold nobody has collected yet (auto-released by the
  deadline, or recovered by the guardian after the holder died); ``post`` reads and removes it.

Who may have made or changed the runtime dir (issue 12, item 1). Whoever can rename or replace
the runtime dir can plant a fake holder that tells ``post`` "application-consistent" while the
real hold is still on, or hide the real holder so the databases stay locked. So
:func:`open_runtime_dir` walks the path from ``/`` one component at a time with
``O_PATH|O_NOFOLLOW`` descriptors (symlinks are resolved by the walk and their targets
checked) and applies the rules quiesce applies to the directories above a config file:

- every directory on the way is owned by root or by the user quiesce runs as, and is not
  writable by group/other;
- one exception: a sticky directory (``/tmp``, mode 1777) owned by root or by us, when the
  entry we pass through in it is owned by root or by us. In a sticky directory only an
  entry's owner, the directory's owner or root may rename or remove it (RENAME_EXCHANGE
  included), so nobody else can swap it; a name someone else made there is refused. This
  keeps ``/tmp/x/rt`` (root's ``/tmp/x``, 0700) usable, and refuses a root:group 0775 parent;
- the runtime dir itself is owned by root or by us and is not accessible to group/other.

The dir is then used through that one descriptor: the lock and the result file with
``dir_fd``, and the socket through ``/proc/self/fd/N/holder.sock`` (``connect`` has no
``dir_fd``; the ``/proc`` magic link reaches exactly the directory that was checked, with no
``chdir`` that would change the whole process's working directory). Without ``/proc`` the
plain path is used: every directory on it was just checked, so only root or we could have
swapped it. The client then checks who answers (``SO_PEERCRED``): the listener must run as
root or as us, and when the hold trace (``hold.json``) names the holder's pid, it must be that
process. A refusal never suggests ``chown``: a directory someone else made is inspected and
removed, never adopted.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import os
import pwd
import socket
import stat
import struct
from collections.abc import Mapping
from typing import Any

from quiesce.atomic import write_atomic
from quiesce.errors import HolderError, NoActiveHold
from quiesce.hold.states import Status

DEFAULT_RUNTIME_DIR = "/run/quiesce"
RUNTIME_DIR_ENV = "QUIESCE_RUNTIME_DIR"
XDG_RUNTIME_DIR_ENV = "XDG_RUNTIME_DIR"
SOCKET_NAME = "holder.sock"
LOCK_NAME = "holder.lock"
RESULT_NAME = "result.json"
MAX_MESSAGE = 16 * 1024 * 1024
# Set by 'quiesce run' (to its run id) for its pre-script: the holder of that run may leave the
# part of the hold that stops writes for a 'block' request the runner sends just before its
# first FIFREEZE (engines that cannot split their hold take it all in 'pre', as always).
DEFER_BLOCK_ENV = "QUIESCE_DEFER_BLOCK"


def defer_block_value(run_id: str, rundir: str) -> str:
    """DEFER_BLOCK_ENV's value: the run id and the runtime dir whose holder the runner will
    send 'block' to (a second 'quiesce pre' on another dir must not defer: nobody would)."""
    return f"{run_id} {os.path.realpath(rundir)}"


def defer_block_for(value: str, run_id: str, rundir: str) -> bool:
    """Whether DEFER_BLOCK_ENV = ``value`` asks the holder of ``run_id`` in ``rundir``."""
    wanted_id, _, wanted_dir = value.partition(" ")
    return bool(wanted_id) and wanted_id == run_id \
        and wanted_dir == os.path.realpath(rundir)
# The version of the request/answer protocol, sent in every request and answer as "protocol".
# A peer that sends none is an older quiesce (before versions): it is served as version 1, so
# an upgrade between 'pre' and 'post' never strands a hold. Every change keeps the ops and
# fields older peers use; a field a peer does not know is ignored.
PROTOCOL_VERSION = 1

# Instance statuses (one definition: quiesce.hold.states).
HELD = Status.HELD
RELEASED = Status.RELEASED
AUTO_RELEASED = Status.AUTO_RELEASED
LOST = Status.LOST
FAILED = Status.FAILED


def default_runtime_dir(euid: int | None = None,
                        environ: Mapping[str, str] | None = None) -> str:
    """The runtime dir when none is given: /run/quiesce as root; as any other user
    ``$XDG_RUNTIME_DIR/quiesce`` (the per-user tmpfs a login session gets, e.g.
    /run/user/1000), because /run itself is writable only by root.

    Raises HolderError naming the settings to use when a non-root user has no
    XDG_RUNTIME_DIR (e.g. under su or cron, which start no login session).
    """
    uid = os.geteuid() if euid is None else euid
    if uid == 0:
        return DEFAULT_RUNTIME_DIR
    env = os.environ if environ is None else environ
    base = env.get(XDG_RUNTIME_DIR_ENV, "")
    if not base:
        raise HolderError(
            f"quiesce runs as uid {uid}, not root, so it cannot use {DEFAULT_RUNTIME_DIR}, and "
            f"{XDG_RUNTIME_DIR_ENV} is not set to give a per-user runtime dir",
            hint=f"pass --runtime-dir DIR or set {RUNTIME_DIR_ENV}=DIR (a directory of yours, "
                 "ideally on tmpfs; the same one for pre, status and post)")
    if not os.path.isabs(base):
        raise HolderError(f"{XDG_RUNTIME_DIR_ENV}={base!r} is not an absolute path",
                          hint=f"fix {XDG_RUNTIME_DIR_ENV}, or pass --runtime-dir DIR or set "
                               f"{RUNTIME_DIR_ENV}=DIR")
    return os.path.join(base, "quiesce")


def runtime_dir(explicit: str | None = None) -> str:
    """The runtime dir: ``--runtime-dir``, else ``$QUIESCE_RUNTIME_DIR``, else
    :func:`default_runtime_dir`."""
    chosen = explicit or os.environ.get(RUNTIME_DIR_ENV) or default_runtime_dir()
    return os.path.abspath(chosen)


def socket_path(rundir: str) -> str:
    return os.path.join(rundir, SOCKET_NAME)


_DIR_FLAGS = os.O_PATH | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
_MAX_SYMLINKS = 40  # the kernel's own limit for path resolution
_RECREATE_HINT = ("choose a runtime dir under directories only root (or you) can write: the "
                  "default /run/quiesce as root, $XDG_RUNTIME_DIR/quiesce as another user")


def _who(uid: int) -> str:
    try:
        return f"uid {uid} ({pwd.getpwuid(uid).pw_name})"
    except KeyError:
        return f"uid {uid}"


def _trusted(uid: int, euid: int) -> bool:
    """Root, or the user quiesce runs as (the rule for config paths, see security.py)."""
    return uid in (0, euid)


def _trusted_owners(euid: int) -> str:
    return "root" if euid == 0 else f"root or {_who(euid)} (quiesce's user)"


def parent_problems(path: str, st: os.stat_result, entry: os.stat_result | None, *,
                    euid: int | None = None) -> list[str]:
    """Why the directory ``path`` (stat ``st``) may not lead to a runtime dir (pure).

    ``entry`` is the stat of the name looked up in it (None when it does not exist yet): in
    a sticky directory only that entry's owner, the directory's owner or root may rename or
    remove it, so a group/other-writable sticky directory is fine when both it and the entry
    are owned by root or by ``euid`` (default: this process's effective uid).
    """
    me = os.geteuid() if euid is None else euid
    problems: list[str] = []
    mode = stat.S_IMODE(st.st_mode)
    if not _trusted(st.st_uid, me):
        problems.append(f"{path} is owned by {_who(st.st_uid)}, not {_trusted_owners(me)}: "
                        "its owner could replace the runtime dir")
    if mode & 0o022:
        sticky = bool(mode & stat.S_ISVTX)
        if not sticky:
            problems.append(f"{path} has mode {mode:04o}: writable by group/other, so someone "
                            "other than root could replace the runtime dir")
        elif entry is not None and not _trusted(entry.st_uid, me):
            problems.append(f"{path} has mode {mode:04o} (sticky, writable by others) and the "
                            f"entry in it is owned by {_who(entry.st_uid)}, not "
                            f"{_trusted_owners(me)}: its owner made it and can replace it")
    return problems


def runtime_dir_problems(path: str, st: os.stat_result, *,
                         euid: int | None = None) -> tuple[str, str] | None:
    """(message, hint) when ``path`` (stat ``st``) may not be used as the runtime dir by a
    client (pure); None when it may. The hint never adopts a directory someone else made."""
    me = os.geteuid() if euid is None else euid
    mode = stat.S_IMODE(st.st_mode)
    if not stat.S_ISDIR(st.st_mode):
        return (f"runtime dir {path} is not a directory",
                f"inspect it (ls -la {path}), then remove it or choose another --runtime-dir")
    if _trusted(st.st_uid, me) and not mode & 0o077:
        return None
    whose = "root's" if me == 0 else f"root's or uid {me}'s (yours)"
    message = (f"runtime dir {path} is owned by uid {st.st_uid} with mode {mode:04o}; it must "
               f"be {whose} and not accessible to others")
    if _trusted(st.st_uid, me) and not mode & 0o022:
        return message, f"chmod 700 {path}"
    return message, (f"someone else may have made or filled it: do not adopt it (no chown); "
                     f"inspect it (ls -la {path}), stop any process still using it, then "
                     f"remove it (rm -r {path}) and run 'quiesce pre' again, or choose "
                     "another --runtime-dir")


class RuntimeDir:
    """The runtime dir, opened once (``O_PATH``) after every directory on its path and the
    dir itself were checked; use its files through :attr:`fd`, never through the path."""

    def __init__(self, fd: int, path: str, st: os.stat_result, created: bool = False) -> None:
        self.fd = fd
        self.path = path
        self.stat = st
        self.created = created  # made by this open (create=True), not found there

    @property
    def via_fd(self) -> str:
        """A path that reaches exactly this directory (``/proc/self/fd/N``), or the checked
        path when /proc is not mounted."""
        magic = f"/proc/self/fd/{self.fd}"
        return magic if os.path.isdir(magic) else self.path

    def shown(self, text: str) -> str:
        """``text`` with the /proc path of this directory replaced by its real path."""
        return text.replace(f"/proc/self/fd/{self.fd}", self.path)

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1

    def __enter__(self) -> RuntimeDir:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _unsafe(path: str, problems: list[str]) -> HolderError:
    return HolderError(f"the runtime dir {path} cannot be trusted: " + "; ".join(problems),
                       hint=f"{_RECREATE_HINT}; never chown a directory someone else made")


def open_runtime_dir(rundir: str, *, create: bool = False) -> RuntimeDir:
    """Check and open the runtime dir (see the module docstring for the rules).

    ``create``: make missing directories (0755 on the way, 0700 for the runtime dir itself)
    after their parent passed the checks; the holder's :func:`quiesce.hold.holder.
    prepare_runtime_dir` uses it. Without it a missing dir is :class:`NoActiveHold`.
    Raises :class:`HolderError` for every refusal; the caller closes the result.
    """
    return _Walk(os.path.abspath(rundir), create).run()


class _Walk:
    """One walk from ``/`` to the runtime dir, a directory descriptor per step: each parent
    is checked before anything below it is looked at (or created), symlinks are followed by
    the walk itself so their targets are checked too, and every directory opened is the one
    that was checked (same device and inode)."""

    def __init__(self, path: str, create: bool) -> None:
        self.path = path
        self.create = create
        self.me = os.geteuid()
        self.stack: list[tuple[int, str]] = []  # (descriptor, path) of each directory walked
        self.links = 0
        self.made = 0
        self.created = False

    def run(self) -> RuntimeDir:
        parts = [p for p in self.path.split("/") if p and p != "."]
        if not parts:
            raise HolderError("the runtime dir cannot be /", hint="pass --runtime-dir DIR")
        try:
            self._reset()
            while parts:
                name = parts.pop(0)
                if name == "..":
                    if len(self.stack) > 1:
                        os.close(self.stack.pop()[0])
                    continue
                parts[:0] = self._step(name, last=not parts)
            if len(self.stack) < 2:  # e.g. through a symlink to "/": never use the root
                raise HolderError(f"the runtime dir {self.path} resolves to /",
                                  hint="pass --runtime-dir DIR naming a directory of its own")
            fd, _ = self.stack.pop()
            return RuntimeDir(fd, self.path, os.fstat(fd), self.created)
        finally:
            for fd, _ in self.stack:
                os.close(fd)

    def _reset(self) -> None:
        for fd, _ in self.stack:
            os.close(fd)
        self.stack.clear()
        self.stack.append((os.open("/", _DIR_FLAGS), "/"))

    def _step(self, name: str, *, last: bool) -> list[str]:
        """Check ``name`` below the current directory and go into it; the path components
        to walk before the rest (a symlink's target, or ``name`` again once created)."""
        cur_fd, cur_path = self.stack[-1]
        where = f"/{name}" if cur_path == "/" else f"{cur_path}/{name}"
        entry = self._lookup(cur_fd, name, where)
        problems = parent_problems(cur_path, os.fstat(cur_fd), entry, euid=self.me)
        if problems:  # nothing below an untrusted directory is looked at, or created
            raise _unsafe(self.path, problems)
        if entry is None:
            self._create(cur_fd, name, where, last=last)
            return [name]  # look at what is there now, like any existing entry
        if stat.S_ISLNK(entry.st_mode) and not last:
            return self._follow(cur_fd, name)
        if not stat.S_ISDIR(entry.st_mode):
            if last:
                message, hint = runtime_dir_problems(self.path, entry, euid=self.me) or ("", "")
                raise HolderError(message, hint=hint)
            raise HolderError(f"cannot reach the runtime dir {self.path}: {where} is not a "
                              "directory", hint="check the path, or choose another "
                                                "--runtime-dir")
        self._descend(cur_fd, name, where, entry)
        return []

    def _lookup(self, cur_fd: int, name: str, where: str) -> os.stat_result | None:
        try:
            return os.stat(name, dir_fd=cur_fd, follow_symlinks=False)
        except FileNotFoundError:
            return None
        except OSError as exc:  # as a non-root user: a directory we may not search
            raise HolderError(f"cannot reach the runtime dir {self.path}: {where}: "
                              f"{exc.strerror}",
                              hint=f"pass --runtime-dir DIR (or set {RUNTIME_DIR_ENV}) to a "
                                   "directory of yours, ideally on tmpfs") from exc

    def _create(self, cur_fd: int, name: str, where: str, *, last: bool) -> None:
        if not self.create:
            raise NoActiveHold(
                f"no hold is active: the runtime dir {self.path} does not exist",
                hint="run 'quiesce pre' first, or pass the --runtime-dir that 'pre' used")
        self.made += 1
        if self.made > len(self.path):  # a name that keeps vanishing after mkdir: give up
            raise HolderError(f"{where} keeps disappearing while the runtime dir "
                              f"{self.path} is being created", hint="find out who removes it")
        try:
            os.mkdir(name, 0o700 if last else 0o755, dir_fd=cur_fd)
            self.created = last
        except FileExistsError:
            pass
        except OSError as exc:  # e.g. not root and the directory above is not ours
            raise HolderError(
                f"cannot create the runtime dir {self.path}: {exc.strerror}",
                hint=f"pass --runtime-dir DIR (or set {RUNTIME_DIR_ENV}) to a directory you "
                     "may create, ideally on tmpfs") from exc

    def _follow(self, cur_fd: int, name: str) -> list[str]:
        self.links += 1
        if self.links > _MAX_SYMLINKS:
            raise HolderError(f"cannot reach the runtime dir {self.path}: too many levels of "
                              "symbolic links", hint="pass the real path")
        target = os.readlink(name, dir_fd=cur_fd)
        if target.startswith("/"):
            self._reset()
        return [p for p in target.split("/") if p and p != "."]

    def _descend(self, cur_fd: int, name: str, where: str, entry: os.stat_result) -> None:
        try:
            fd = os.open(name, _DIR_FLAGS, dir_fd=cur_fd)
        except OSError as exc:  # replaced (by a symlink, or removed) since the stat
            raise HolderError(f"{where} changed while the runtime dir {self.path} was being "
                              f"checked ({exc.strerror})",
                              hint="retry; if it persists, find out who changes it") from exc
        opened = os.fstat(fd)
        self.stack.append((fd, where))
        if (opened.st_dev, opened.st_ino) != (entry.st_dev, entry.st_ino):
            raise HolderError(f"{where} changed while the runtime dir {self.path} was being "
                              "checked", hint="retry; if it persists, find out who changes it")


def check_runtime_dir(rundir: str) -> None:
    """Refuse a runtime dir another user could have planted a fake holder in: see
    :func:`open_runtime_dir` (NoActiveHold when it does not exist, HolderError otherwise)."""
    with client_runtime_dir(rundir):
        pass


def client_runtime_dir(rundir: str) -> RuntimeDir:
    """The runtime dir for ``post``/``status``: :func:`open_runtime_dir`, and the dir itself
    owned by root or us and not accessible to others."""
    rd = open_runtime_dir(rundir)
    refusal = runtime_dir_problems(rd.path, rd.stat)
    if refusal is not None:
        rd.close()
        raise HolderError(refusal[0], hint=refusal[1])
    return rd


def peer_credentials(sock: socket.socket) -> tuple[int, int, int]:
    """(pid, uid, gid) of the process at the other end of a connected Unix socket: for the
    client, the process that called ``listen()`` on the socket it reached."""
    creds = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
    pid, uid, gid = struct.unpack("3i", creds)
    return pid, uid, gid


def _check_listener(rd: RuntimeDir, sock: socket.socket) -> None:
    """Refuse an answer from anyone but the holder: root or us, and the pid in the trace."""
    from quiesce.hold.trace import read_trace

    path = socket_path(rd.path)
    pid, uid, _gid = peer_credentials(sock)
    untouched = ("nothing was sent to it; a real hold, if there is one, stays in place until "
                 "'quiesce post' reaches its holder or its max_hold_seconds run out")
    look = (f"find that process (ss -xlp | grep {path}; ps -o user,pid,cmd -p {pid}) and who "
            f"started it; then remove the runtime dir (rm -r {rd.path}) and, if a hold is "
            "still active, wait for its max_hold_seconds before the next 'quiesce pre'")
    me = os.geteuid()
    if not _trusted(uid, me):
        raise HolderError(f"the process listening on {path} (pid {pid}) runs as {_who(uid)}, "
                          f"not {_trusted_owners(me)}: it is not quiesce's holder; {untouched}",
                          hint=look)
    try:
        trace = read_trace(rd)
    except HolderError as exc:
        raise HolderError(rd.shown(str(exc)), hint=rd.shown(exc.hint)) from exc
    holder_pid = trace.get("holder_pid") if trace else None
    # A trace naming this very process was written by it (a new holder asking whether an
    # older one is finishing): it says nothing about who listens.
    if isinstance(holder_pid, int) and holder_pid not in (pid, os.getpid()):
        raise HolderError(f"the process listening on {path} is pid {pid}, but the hold trace "
                          f"{os.path.join(rd.path, 'hold.json')} names the holder pid "
                          f"{holder_pid}: it is not that hold's holder; {untouched}",
                          hint=look)


def request(rundir: str, op: str, timeout: float = 30.0, **fields: Any) -> dict[str, Any]:
    """Send one request to the holder and return its answer.

    The runtime dir is checked and opened once (:func:`client_runtime_dir`), the socket is
    reached through that descriptor, and the listener must pass :func:`_check_listener`
    before anything is sent. Raises NoActiveHold when no holder listens there, HolderError
    when the dir or the listener is not trusted or the holder answers badly.
    """
    with client_runtime_dir(rundir) as rd:
        return _request(rd, op, timeout, fields)


def _request(rd: RuntimeDir, op: str, timeout: float, fields: dict[str, Any]) -> dict[str, Any]:
    sock = _connect(rd, timeout)
    try:
        return _exchange(rd, sock, op, timeout, fields)
    finally:
        sock.close()


def _connect(rd: RuntimeDir, timeout: float) -> socket.socket:
    """A connected socket to the holder whose listener passed :func:`_check_listener`."""
    path = socket_path(rd.path)
    address = socket_path(rd.via_fd)
    if len(os.fsencode(address)) >= 108:  # sizeof(sun_path): only the plain path can be long
        raise HolderError(f"the socket path {path} is longer than a Unix socket allows",
                          hint="choose a shorter --runtime-dir (e.g. under /run)")
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
    try:
        sock.settimeout(timeout)
        try:
            sock.connect(address)
        except (FileNotFoundError, ConnectionRefusedError) as exc:
            raise NoActiveHold(f"no hold is active (nothing listens on {path})",
                               hint="run 'quiesce pre' first, or pass the --runtime-dir "
                                    "that 'pre' used") from exc
        except TimeoutError as exc:
            raise HolderError(f"the holder at {path} did not accept within {timeout:g} s"
                              ) from exc
        except OSError as exc:
            raise HolderError(f"cannot talk to the holder at {path}: "
                              f"{rd.shown(str(exc))}") from exc
        _check_listener(rd, sock)
    except BaseException:
        sock.close()
        raise
    return sock


def _exchange(rd: RuntimeDir, sock: socket.socket, op: str, timeout: float,
              fields: dict[str, Any]) -> dict[str, Any]:
    """Send one request on ``sock`` and read its answer (the socket stays open)."""
    _send(rd, sock, op, timeout, fields)
    return _receive(rd, sock, timeout)


def _send(rd: RuntimeDir, sock: socket.socket, op: str, timeout: float,
          fields: dict[str, Any]) -> None:
    path = socket_path(rd.path)
    try:
        sock.settimeout(timeout)
        line = json.dumps({"op": op, "protocol": PROTOCOL_VERSION, **fields}).encode() + b"\n"
        sock.sendall(line)
    except TimeoutError as exc:
        raise HolderError(f"the holder at {path} did not take a request within {timeout:g} s"
                          ) from exc
    except OSError as exc:
        raise _socket_error(rd, exc) from exc


def _receive(rd: RuntimeDir, sock: socket.socket, timeout: float) -> dict[str, Any]:
    path = socket_path(rd.path)
    try:
        sock.settimeout(timeout)
        data = _read_line(sock)
    except TimeoutError as exc:
        raise HolderError(f"the holder at {path} did not answer within {timeout:g} s") from exc
    except OSError as exc:
        raise _socket_error(rd, exc) from exc
    if not data:
        raise NoActiveHold(f"the holder at {path} closed the connection without answering",
                           hint="it was probably exiting; check 'quiesce status'")
    try:
        answer = json.loads(data)
    except ValueError as exc:
        raise HolderError(f"the holder at {path} sent a malformed answer: {exc}") from exc
    if not isinstance(answer, dict):
        raise HolderError(f"the holder at {path} sent a malformed answer")
    return answer


def _socket_error(rd: RuntimeDir, exc: OSError) -> HolderError:
    path = socket_path(rd.path)
    if exc.errno in (errno.ECONNRESET, errno.EPIPE):
        return NoActiveHold(f"the holder at {path} closed the connection (it is exiting)",
                            hint="check 'quiesce status' again in a moment")
    return HolderError(f"cannot talk to the holder at {path}: {rd.shown(str(exc))}")


class LingeringRequest:
    """One request whose connection stays open after the answer, until :meth:`close`.

    ``quiesce run`` sends 'block' between its sync and its first FIFREEZE. Closing a socket
    there (on either side), or ending the holder thread that read it, queues kernel work (RCU
    callbacks) that the FIFREEZE right after then waits for, lengthening the freeze window
    by 15-20 ms (docs/performance.md). So the runner closes this connection after the thaw,
    and the holder keeps its end (and its reader thread) until then (``linger`` field)."""

    def __init__(self, rundir: str, timeout: float) -> None:
        self.rd = client_runtime_dir(rundir)
        try:
            self.sock = _connect(self.rd, timeout)
        except BaseException:
            self.rd.close()
            raise

    def request(self, op: str, timeout: float, **fields: Any) -> dict[str, Any]:
        return _exchange(self.rd, self.sock, op, timeout, {**fields, "linger": True})

    def send(self, op: str, timeout: float, **fields: Any) -> None:
        """Send a further request on the same connection without waiting for its answer
        (:meth:`receive` reads it). ``quiesce run`` sends 'release' this way between its
        snapshot and its thaw: a socket write, nothing that touches a filesystem."""
        _send(self.rd, self.sock, op, timeout, {**fields, "linger": True})

    def receive(self, timeout: float) -> dict[str, Any]:
        return _receive(self.rd, self.sock, timeout)

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.sock.close()
        self.rd.close()


def _read_line(sock: socket.socket) -> bytes:
    chunks: list[bytes] = []
    size = 0
    while True:
        chunk = sock.recv(65536)
        if not chunk:
            break
        chunks.append(chunk)
        size += len(chunk)
        if chunk.endswith(b"\n") or size > MAX_MESSAGE:
            break
    return b"".join(chunks).strip()


def _opened(rundir: str | RuntimeDir) -> contextlib.AbstractContextManager[RuntimeDir | None]:
    """The checked runtime dir (closed at the end), or None when it does not exist."""
    if isinstance(rundir, RuntimeDir):
        return contextlib.nullcontext(rundir)
    try:
        return client_runtime_dir(rundir)
    except NoActiveHold:
        return contextlib.nullcontext(None)


def lock_held(rundir: str | RuntimeDir) -> bool:
    """True when a holder or its guardian is alive for this runtime dir (the flock is taken).

    Raises HolderError when the runtime dir cannot be trusted (see :func:`open_runtime_dir`).
    """
    with _opened(rundir) as rd:
        if rd is None:
            return False
        try:
            fd = os.open(LOCK_NAME, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK,
                         dir_fd=rd.fd)
        except OSError:
            return False
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            return True
        finally:
            os.close(fd)
        return False


def read_result(rundir: str | RuntimeDir) -> dict[str, Any] | None:
    """The uncollected result of a hold whose holder is gone, or None.

    Raises HolderError when the runtime dir cannot be trusted or the file is not one the
    holder (or its guardian) wrote.
    """
    result = read_holder_json(rundir, RESULT_NAME, MAX_MESSAGE)
    return result if isinstance(result, dict) else None


def read_holder_json(rundir: str | RuntimeDir, name: str, limit: int) -> Any:
    """The JSON document ``name`` in the checked runtime dir, or None when it is absent.

    Only a regular file the holder (or its guardian) can have written is read: ours or
    root's, readable by nobody else. Anything else (a symlink, a FIFO, another owner, not
    JSON) is a HolderError that says what to inspect, never taken as "nothing is there".
    """
    with _opened(rundir) as rd:
        if rd is None:
            return None
        path = os.path.join(rd.path, name)
        try:
            fd = os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK,
                         dir_fd=rd.fd)
        except FileNotFoundError:
            return None
        except OSError as exc:  # a symlink (ELOOP), a FIFO or socket (ENXIO), ...
            raise HolderError(f"{path} is not a file the holder wrote ({exc.strerror})",
                              hint=f"inspect and remove {path}") from exc
        try:
            st = os.fstat(fd)
            if (not stat.S_ISREG(st.st_mode) or not _trusted(st.st_uid, os.geteuid())
                    or st.st_mode & 0o077):
                raise HolderError(f"{path} is not a file the holder wrote (owner uid "
                                  f"{st.st_uid}, mode {stat.S_IMODE(st.st_mode):04o})",
                                  hint=f"inspect and remove {path}")
            with os.fdopen(fd, "rb") as handle:
                fd = -1
                data = handle.read(limit)
        finally:
            if fd >= 0:
                os.close(fd)
    try:
        return json.loads(data)
    except ValueError as exc:
        raise HolderError(f"{path} is not valid JSON: {exc}", hint=f"remove {path}") from exc


def consume_result(rundir: str | RuntimeDir) -> None:
    """Mark the uncollected result as reported (a second ``post`` finds nothing)."""
    with _opened(rundir) as rd:
        if rd is None:
            return
        with contextlib.suppress(FileNotFoundError):
            os.replace(RESULT_NAME, RESULT_NAME + ".reported", src_dir_fd=rd.fd,
                       dst_dir_fd=rd.fd)


def write_json_atomic(path: str, document: Any, mode: int = 0o600) -> None:
    """Readers see the old or the new file, never half of one."""
    data = json.dumps(document, indent=2, sort_keys=True, default=str).encode() + b"\n"
    write_atomic(path, data, mode)
