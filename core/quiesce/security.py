"""Decide whether a file is safe to trust, on the file descriptor that will be used.

quiesce reads configs, secrets and scripts that decide what it executes, with the privileges of
the process that reads them. A file is trusted only if nobody but a *trusted owner* could have
written it. The trusted owners (:func:`trusted_uids`) are root, and the effective uid of the
process that acts on the file: a non-root user's own files are exactly as trustworthy as that
user, who could run anything as themselves anyway. Running as root, only uid 0 is trusted (a
file owned by any other user would let that user make root run anything). So:

* the file itself is a regular file owned by a trusted owner with no group/other permission
  bits (configs must not be owner-executable, scripts must be owner-executable);
* every directory on its *resolved* path, from ``/`` down, is owned by a trusted owner and not
  writable by group or other (a sticky world-writable directory such as ``/tmp`` is refused
  too: anyone can create names in it, and a rename race is one ``mv`` away).

The path is walked one component at a time from ``/`` with ``O_PATH|O_DIRECTORY|O_NOFOLLOW``
directory descriptors, each opened relative to the previous one, so a symlinked directory
component is resolved by this code (its target is walked and checked like any other
directory) rather than followed blindly by the kernel. The final component is opened with
``O_NOFOLLOW`` relative to the checked parent descriptor, and the checks run on ``fstat`` of
that very descriptor, which is then the one read (configs, secrets) or executed (scripts).
There is no time-of-check/time-of-use gap: what was checked is what is used.

Scripts are executed through ``/proc/self/fd/<fd>`` with the descriptor passed to the child
(``pass_fds``). Python has no ``fexecve``; execve on the ``/proc`` magic link is the same
thing: the kernel executes the inode behind the descriptor, never a path that could have been
swapped since the check. A shebang interpreter then receives ``/proc/self/fd/<fd>`` as the
script path and opens it in its own process, which works because the descriptor is inherited
(not close-on-exec). ``$0`` inside such a script is ``/proc/self/fd/<fd>``; this is the
documented cost of closing the gap.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import pwd
import stat
from dataclasses import dataclass
from typing import Literal

from quiesce.errors import AzureCode, PermissionProblem, Problem, QuiesceError

Kind = Literal["config", "script", "secret"]
KINDS: tuple[str, ...] = ("config", "script", "secret")

_MAX_SYMLINKS = 40  # the kernel's own limit for path resolution
_DIR_FLAGS = os.O_PATH | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
_FILE_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK
_WANTED_MODE = {"config": "600", "script": "700", "secret": "600"}


class TrustedFileNotFound(QuiesceError, FileNotFoundError):
    """There is no file at the path (or a directory on the way to it does not exist).

    Kept apart from :class:`PermissionProblem` because the Azure contract reports a missing
    script (Pre-/Post-ScriptNotFound) differently from an unsafe one.
    """

    def __init__(self, path: str, message: str, *, hint: str = "",
                 code: AzureCode | None = None) -> None:
        super().__init__(f"{path}: {message}", hint=hint, code=code)
        self.path = path
        self.problems = [Problem(path, message, hint, code)]


@dataclass
class TrustedFile:
    """An open, checked descriptor. Use it (read or execute), then close it."""

    fd: int
    path: str
    kind: str
    stat: os.stat_result

    @property
    def fd_path(self) -> str:
        """The path that refers to exactly this descriptor's file (for exec with pass_fds)."""
        return f"/proc/self/fd/{self.fd}"

    def read_bytes(self, max_bytes: int = 16 * 1024 * 1024) -> bytes:
        """The whole content from offset 0 (pread: independent of any file offset)."""
        chunks: list[bytes] = []
        offset = 0
        while True:
            chunk = os.pread(self.fd, 65536, offset)
            if not chunk:
                return b"".join(chunks)
            chunks.append(chunk)
            offset += len(chunk)
            if offset > max_bytes:
                raise QuiesceError(
                    f"{self.path}: larger than {max_bytes} bytes",
                    hint="point the setting at the right file; this one is far too big",
                )

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1

    def __enter__(self) -> TrustedFile:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __del__(self) -> None:  # a forgotten close must not leak descriptors into children
        with contextlib.suppress(OSError):
            self.close()


def owner_name(uid: int) -> str:
    try:
        return f"uid {uid} ({pwd.getpwuid(uid).pw_name})"
    except KeyError:
        return f"uid {uid}"


def user_name(uid: int) -> str:
    """What ``chown`` accepts for ``uid``: the login name, or the number."""
    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return str(uid)


def trusted_uids(euid: int | None = None) -> frozenset[int]:
    """The owners whose files and directories quiesce trusts when it acts as ``euid``
    (default: this process's effective uid): root always, and ``euid`` itself.

    As root that is ``{0}`` and nothing else. As a non-root user it is ``{0, euid}``: the
    user's own files are as trustworthy as the user, and root's files are beyond the user's
    reach. Another non-root user's files are never trusted.
    """
    uid = os.geteuid() if euid is None else euid
    return frozenset({0, uid})


def _acting_uid(euid: int | None) -> int:
    return os.geteuid() if euid is None else euid


def _not_trusted(uid: int, euid: int) -> str:
    """The ownership complaint: ", not root" as root; ", not root or <user>" otherwise."""
    if euid == 0:
        return f"is owned by {owner_name(uid)}, not root"
    return f"is owned by {owner_name(uid)}, not root or {owner_name(euid)} (quiesce's user)"


def file_type_name(mode: int) -> str:
    for test, name in (
        (stat.S_ISDIR, "a directory"),
        (stat.S_ISFIFO, "a named pipe (FIFO)"),
        (stat.S_ISSOCK, "a socket"),
        (stat.S_ISCHR, "a character device"),
        (stat.S_ISBLK, "a block device"),
        (stat.S_ISLNK, "a symbolic link"),
    ):
        if test(mode):
            return name
    return "not a regular file"


def file_mode_problems(path: str, st: os.stat_result, kind: str,
                       code: AzureCode | None = None, *,
                       euid: int | None = None) -> list[Problem]:
    """The rules for the file itself, on a stat result (pure: unit-testable).

    ``euid`` is the effective uid of the process that will act on the file (default: this
    one); see :func:`trusted_uids`.
    """
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {KINDS}, not {kind!r}")
    me = _acting_uid(euid)
    want = _WANTED_MODE[kind]
    if not stat.S_ISREG(st.st_mode):
        owner = "root" if me == 0 else f"you ({user_name(me)}) or root"
        return [Problem(path, f"is {file_type_name(st.st_mode)}, not a regular file",
                        f"point the setting at a regular file (a {kind} owned by {owner}, "
                        f"mode {want})", code)]
    problems: list[Problem] = []
    mode = stat.S_IMODE(st.st_mode)
    if st.st_uid not in trusted_uids(me):
        if me == 0:
            hint = f"chown root:root {path}"
        else:
            hint = (f"use a copy you own (cp {path} <your file> && chmod {want} <your file>), "
                    f"or have root run chown {user_name(me)} {path}")
        problems.append(Problem(path, _not_trusted(st.st_uid, me)
                                + ("" if me == 0 else ": its owner could change it"),
                                hint, code))
    if mode & 0o077:
        problems.append(Problem(path, f"mode {mode:04o} gives permissions to group/other",
                                f"chmod {want} {path}", code))
    if kind == "config" and mode & stat.S_IXUSR:
        problems.append(Problem(path, f"mode {mode:04o}: a config must not be executable",
                                f"chmod {want} {path}", code))
    if kind == "script" and not mode & stat.S_IXUSR:
        problems.append(Problem(path, f"mode {mode:04o}: a script must be executable by its "
                                "owner", f"chmod {want} {path}", code))
    return problems


def directory_problems(path: str, st: os.stat_result,
                       code: AzureCode | None = None, *,
                       euid: int | None = None) -> list[Problem]:
    """The rules for one directory on the way to a trusted file (pure: unit-testable).

    ``euid`` as in :func:`file_mode_problems`.
    """
    me = _acting_uid(euid)
    problems: list[Problem] = []
    mode = stat.S_IMODE(st.st_mode)
    if st.st_uid not in trusted_uids(me):
        if me == 0:
            problems.append(Problem(path, f"directory is owned by {owner_name(st.st_uid)}, "
                                    "not root: its owner could replace the file",
                                    f"chown root:root {path} (or move the file to a "
                                    "root-owned directory)", code))
        else:
            problems.append(Problem(path, "directory " + _not_trusted(st.st_uid, me)
                                    + ": its owner could replace the file",
                                    "move the file to a directory of your own (e.g. under "
                                    "your home directory), not writable by group/other",
                                    code))
    if mode & 0o022:
        sticky = " (sticky, but anyone can still create names in it)" if mode & 0o1000 else ""
        if me == 0:
            who = "someone other than root"
            elsewhere = "a root-owned directory such as /etc/azure"
        else:
            who = f"someone other than root and {user_name(me)}"
            elsewhere = "a directory of your own, e.g. under your home directory"
        problems.append(Problem(path, f"directory mode {mode:04o} is writable by group/other"
                                f"{sticky}: {who} could replace the file",
                                f"chmod go-w {path} (or move the file to {elsewhere})", code))
    return problems


def _join(parent: str, name: str) -> str:
    return f"/{name}" if parent == "/" else f"{parent}/{name}"


class _Walk:
    """Resolves a path component by component, checking every directory it passes through."""

    def __init__(self, path: str, code: AzureCode | None) -> None:
        self.path = path
        self.code = code
        self.problems: list[Problem] = []
        self.checked: set[str] = set()
        self.stack: list[tuple[int, str]] = []

    def _check_dir(self, fd: int, where: str) -> None:
        if where in self.checked:
            return
        self.checked.add(where)
        self.problems.extend(directory_problems(where, os.fstat(fd), self.code))

    def _reset_to_root(self) -> None:
        self.close()
        fd = os.open("/", _DIR_FLAGS)
        self.stack = [(fd, "/")]
        self._check_dir(fd, "/")

    def close(self) -> None:
        for fd, _ in self.stack:
            os.close(fd)
        self.stack = []

    def not_found(self, where: str, what: str = "no such file") -> TrustedFileNotFound:
        return TrustedFileNotFound(self.path, what if where == self.path else f"{what} "
                                   f"({where} does not exist)",
                                   hint="check the path, or create the file", code=self.code)

    def parent_of_last(self) -> tuple[int, str, str]:
        """Walk all but the last component; return (parent fd, parent path, last name)."""
        path = self.path if self.path.startswith("/") else os.path.join(os.getcwd(), self.path)
        parts = [p for p in path.split("/") if p and p != "."]
        if not parts:
            raise TrustedFileNotFound(self.path, "is the root directory, not a file",
                                      code=self.code)
        self._reset_to_root()
        links = 0
        while True:
            name = parts.pop(0)
            if name == "..":
                if len(self.stack) > 1:
                    os.close(self.stack.pop()[0])
                if not parts:
                    raise TrustedFileNotFound(self.path, "names a directory, not a file",
                                              code=self.code)
                continue
            cur_fd, cur_path = self.stack[-1]
            if not parts:
                return cur_fd, cur_path, name
            where = _join(cur_path, name)
            try:
                st = os.stat(name, dir_fd=cur_fd, follow_symlinks=False)
            except FileNotFoundError:
                raise self.not_found(where) from None
            except NotADirectoryError:
                raise self.not_found(cur_path, f"{cur_path} is not a directory") from None
            except PermissionError as exc:  # only as non-root: a directory we cannot search
                self.problems.append(Problem(
                    cur_path, f"directory cannot be searched by uid {os.geteuid()} "
                    f"({exc.strerror}), so {where} cannot be checked",
                    "move the file to a directory of your own", self.code))
                raise PermissionProblem(self.path, self.problems, code=self.code) from exc
            if stat.S_ISLNK(st.st_mode):
                links += 1
                if links > _MAX_SYMLINKS:
                    raise PermissionProblem(self.path, [Problem(
                        where, "too many levels of symbolic links",
                        "point the setting at the real file", self.code)], code=self.code)
                target = os.readlink(name, dir_fd=cur_fd)
                if target.startswith("/"):
                    self._reset_to_root()
                parts = [p for p in target.split("/") if p and p != "."] + parts
                continue
            if not stat.S_ISDIR(st.st_mode):
                raise self.not_found(where, f"{where} is not a directory")
            try:
                fd = os.open(name, _DIR_FLAGS, dir_fd=cur_fd)
            except FileNotFoundError:
                raise self.not_found(where) from None
            except OSError as exc:  # replaced by a symlink between stat and open: refuse
                raise PermissionProblem(self.path, [Problem(
                    where, f"changed while being checked ({exc.strerror})",
                    "retry; if it persists, find out who is modifying it", self.code)],
                    code=self.code) from exc
            self.stack.append((fd, where))
            self._check_dir(fd, where)


def open_trusted(path: str | os.PathLike[str], kind: Kind, *,
                 code: AzureCode | None = None) -> TrustedFile:
    """Open ``path`` for ``kind`` ("config", "script", "secret") and prove it trustworthy.

    Returns an open :class:`TrustedFile` whose descriptor is the one that was checked.
    Raises :class:`TrustedFileNotFound` when there is no such file and
    :class:`PermissionProblem` listing every problem (file and directories) otherwise.
    ``code`` is attached to the error and to each problem (e.g. the Azure code of the phase).
    """
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {KINDS}, not {kind!r}")
    path = os.fspath(path)
    walk = _Walk(path, code)
    try:
        parent_fd, parent_path, name = walk.parent_of_last()
        where = _join(parent_path, name)
        try:
            fd = os.open(name, _FILE_FLAGS, dir_fd=parent_fd)
        except FileNotFoundError:
            raise walk.not_found(where) from None
        except OSError as exc:
            if exc.errno == errno.ELOOP:
                target = os.readlink(name, dir_fd=parent_fd)
                walk.problems.append(Problem(
                    where, f"is a symbolic link (to {target}); a {kind} must be the file itself",
                    f"point the setting at the real file, {target}", code))
            elif exc.errno == errno.ENXIO:  # a socket, or a FIFO opened for writing
                walk.problems.append(Problem(where, "is not a regular file",
                                             f"point the setting at a regular {kind} file",
                                             code))
            elif exc.errno == errno.EACCES and (unreadable := _unreadable_problems(
                    parent_fd, name, where, kind, code)):
                # Not root and not allowed to read it: say whose file it is and why it
                # would not be trusted even if it were readable, not just "permission denied".
                walk.problems.extend(unreadable)
            else:
                walk.problems.append(Problem(where, f"cannot be opened: {exc.strerror}",
                                             "check the path and its permissions", code))
            raise PermissionProblem(path, walk.problems, code=code) from exc
    finally:
        walk.close()
    try:
        flags = fcntl.fcntl(fd, fcntl.F_GETFL)
        fcntl.fcntl(fd, fcntl.F_SETFL, flags & ~os.O_NONBLOCK)
        st = os.fstat(fd)
        problems = walk.problems + file_mode_problems(where, st, kind, code)
    except BaseException:
        os.close(fd)
        raise
    if problems:
        os.close(fd)
        raise PermissionProblem(path, problems, code=code)
    return TrustedFile(fd=fd, path=path, kind=kind, stat=st)


def _unreadable_problems(parent_fd: int, name: str, where: str, kind: str,
                         code: AzureCode | None) -> list[Problem]:
    """Why a file this (non-root) process may not open would be refused anyway."""
    try:
        st = os.stat(name, dir_fd=parent_fd, follow_symlinks=False)
    except OSError:
        return []
    problems = file_mode_problems(where, st, kind, code)
    if problems:
        problems.insert(0, Problem(where, f"cannot be opened: permission denied (uid "
                                   f"{os.geteuid()})", problems[0].hint, code))
    return problems


def executable_problems(path: str, code: AzureCode | None = None, *,
                        euid: int | None = None) -> list[Problem]:
    """Whether quiesce may run the program at ``path`` that a trusted script names in its
    ``#!`` line: honouring the shebang makes the interpreter part of what quiesce executes.

    The program (symlinks followed) must be a regular file owned by a trusted owner (root; as
    a non-root user also that user, see :func:`trusted_uids`) and not writable by group/other;
    every directory on the way to it, and to the link that names it, must be owned by a
    trusted owner and not group/other-writable. Read and execute bits for others are fine
    (``/usr/bin/python3`` is 0755). Everything on that chain belongs to a trusted owner, so
    nobody else can swap a component between this check and the exec.
    """
    me = _acting_uid(euid)
    problems: list[Problem] = []
    real = os.path.realpath(path)
    try:
        st = os.stat(real)
    except OSError as exc:
        return [Problem(path, f"cannot be examined: {exc.strerror}",
                        "install it, or fix the '#!' line", code)]
    if not stat.S_ISREG(st.st_mode):
        return [Problem(real, f"is {file_type_name(st.st_mode)}, not a program file",
                        "fix the '#!' line", code)]
    shown = real if real == path else f"{real} (from {path})"
    if st.st_uid not in trusted_uids(me):
        if me == 0:
            problems.append(Problem(shown, f"interpreter is owned by {owner_name(st.st_uid)}, "
                                    "not root: its owner could make root run anything",
                                    f"use a root-owned interpreter, or chown root {real}", code))
        else:
            problems.append(Problem(shown, "interpreter " + _not_trusted(st.st_uid, me)
                                    + ": its owner could make you run anything",
                                    "use an interpreter owned by root or by you", code))
    if stat.S_IMODE(st.st_mode) & 0o022:
        problems.append(Problem(shown, f"interpreter mode {stat.S_IMODE(st.st_mode):04o} is "
                                "writable by group/other", f"chmod go-w {real}", code))
    seen: set[str] = set()
    for start in (os.path.dirname(os.path.abspath(path)), os.path.dirname(real)):
        directory = start
        while directory not in seen:
            seen.add(directory)
            try:
                problems.extend(directory_problems(directory, os.stat(directory), code,
                                                   euid=me))
            except OSError as exc:
                problems.append(Problem(directory, f"cannot be examined: {exc.strerror}",
                                        "check the path", code))
            parent = os.path.dirname(directory)
            if parent == directory:
                break
            directory = parent
    return problems


def check_trusted(path: str | os.PathLike[str], kind: Kind, *,
                  code: AzureCode | None = None) -> list[Problem]:
    """Every problem that would stop :func:`open_trusted`; an empty list when the file is fine."""
    try:
        open_trusted(path, kind, code=code).close()
    except TrustedFileNotFound as exc:
        return list(exc.problems)
    except PermissionProblem as exc:
        return list(exc.problems)
    return []


# --- where quiesce itself is installed ---------------------------------------------------------


class UnsafeInstallation(QuiesceError):
    """The quiesce program (its executable, interpreter or package) lives where users other
    than root could replace it, so root must not run it."""


INSTALL_HINT = ("install quiesce where only root can write, e.g. a root-owned venv under /opt "
                "whose directories are mode 755 (never under /tmp, /var/tmp or /dev/shm, even "
                "though they are sticky), then rerun 'quiesce install azure --force' from it")


def replaceable_components(path: str, *, euid: int | None = None) -> list[str]:
    """Every component of ``path``, as given and with symlinks resolved, that someone other
    than a trusted owner (:func:`trusted_uids`) could replace: a file or directory owned by
    another user, or writable by group/other. Stat calls only (cheap enough for ``post``).

    Unlike a config's directories, a world-writable *sticky* directory (``/tmp``) is refused
    as well: the program's own directories are created once and then trusted for years. When
    a tmp cleaner removes a venv under ``/tmp``, any user can re-create the path, and root
    then runs their code from the backup agent's wrapper. A symlink itself is not judged (only
    its parent directory, which is on the path, can replace it); its target is, on the
    resolved path. A component that cannot be examined is a problem too.
    """
    trusted = trusted_uids(euid)
    problems: list[str] = []
    seen: set[str] = set()
    missing: set[str] = set()
    for candidate in (os.path.abspath(path), os.path.realpath(path)):
        parts = candidate.split("/")
        for end in range(1, len(parts) + 1):
            component = "/".join(parts[:end]) or "/"
            if component in missing:
                break
            if component in seen:
                continue
            seen.add(component)
            try:
                st = os.lstat(component)
            except OSError as exc:
                problems.append(f"{component}: cannot be examined ({exc.strerror})")
                missing.add(component)
                break
            if stat.S_ISLNK(st.st_mode):
                continue
            mode = stat.S_IMODE(st.st_mode)
            if st.st_uid not in trusted:
                problems.append(f"{component} is owned by {owner_name(st.st_uid)}")
            if mode & 0o022:
                sticky = (", sticky, but anyone can create names in it"
                          if stat.S_ISDIR(st.st_mode) and mode & stat.S_ISVTX else "")
                problems.append(f"{component} is writable by group/other (mode {mode:04o}"
                                f"{sticky})")
    return problems


def running_installation_paths() -> list[str]:
    """What this process runs as quiesce: its command (``sys.argv[0]`` when it is a file, the
    ``quiesce`` script the wrapper execs), the interpreter (``sys.executable``), the quiesce
    package directory and the standard library directory."""
    import sys

    import quiesce

    paths: list[str] = []
    script = sys.argv[0] if sys.argv else ""
    if script and os.path.isabs(script) and os.path.isfile(script):
        paths.append(script)
    if sys.executable:
        paths.append(sys.executable)
    paths.append(os.path.dirname(os.path.abspath(quiesce.__file__ or "")))
    paths.append(os.path.dirname(os.path.abspath(os.__file__)))
    return list(dict.fromkeys(paths))


def require_safe_installation(*, euid: int | None = None) -> None:
    """Refuse to go on when this very quiesce could have been replaced by a user other than
    root (or, not as root, other than the acting user): raises :class:`UnsafeInstallation`.

    For ``quiesce pre`` and ``post`` at start-up: the wrappers that the backup agent runs as
    root exec them. Stat calls only; nothing heavy is imported.
    """
    problems: list[str] = []
    for path in running_installation_paths():
        for problem in replaceable_components(path, euid=euid):
            if problem not in problems:
                problems.append(problem)
    if problems:
        raise UnsafeInstallation(
            "refusing to run: this quiesce could have been replaced by users other than "
            f"{'root' if _acting_uid(euid) == 0 else 'root and you'}: " + "; ".join(problems),
            hint=INSTALL_HINT)
