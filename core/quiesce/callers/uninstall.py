"""``quiesce uninstall <agent>``: remove exactly what ``quiesce install <agent>`` wrote.

The install's manifest (``<prefix>/var/lib/quiesce/installed/<agent>.json``, see
:mod:`quiesce.callers.install.base`) lists every file it wrote, as seen inside the tree, with
the sha256 of the content it wrote, its mode and what it did:

- ``create``: the file did not exist before: it is removed;
- ``replace``: ``--force`` replaced an older file and kept it as a backup (listed under
  ``backups``): the file is removed and the newest backup of it is put back in its place;
- ``same``: the file was already there with exactly this content (not written by this install):
  it is left alone.

A file another agent's manifest also lists (the quiesce.toml of two installs) is left alone
while that install remains.

A file that changed since (other content, other mode, not a regular file any more) is never
removed: nothing at all is removed while one does, and the report says which and what to do
(move it away or put the installed version back, then run uninstall again), or, with
``--keep-changed``, everything else is removed and the changed files stay (the DBA's edited
quiesce.toml, typically). A file already gone is fine. The manifest goes last, once everything
it lists is dealt with. Directories the install made are left (they may hold the DBA's files,
such as secrets or run records).

The manifest itself must be trustworthy (root-owned, not writable by others, like a config):
whoever could write it could make root remove files.
"""

from __future__ import annotations

import os
import stat
from dataclasses import dataclass, field
from typing import Any

from quiesce.callers.install.base import join, sha256_of
from quiesce.errors import QuiesceError

MANIFEST_DIR = "var/lib/quiesce/installed"
SUPPORTED_VERSION = 1

REMOVE = "remove"
RESTORE = "restore"  # remove ours, put the backup back
LEAVE = "leave"  # not written by the install
GONE = "gone"  # already removed
CHANGED = "changed"  # refused, or kept with --keep-changed


class UninstallRefused(QuiesceError):
    """A file the install wrote changed since, or the manifest cannot be trusted."""


@dataclass
class Step:
    path: str  # inside the tree
    host: str  # where it is on this machine
    action: str
    why: str = ""
    backup: str | None = None  # host path of the backup put back (RESTORE)


@dataclass
class UninstallPlan:
    agent: str
    prefix: str
    manifest: str
    steps: list[Step] = field(default_factory=list)

    @property
    def changed(self) -> list[Step]:
        return [s for s in self.steps if s.action == CHANGED]


def manifest_path(prefix: str, agent: str) -> str:
    return join(prefix, f"/{MANIFEST_DIR}/{agent}.json")


def load_manifest(prefix: str, agent: str) -> tuple[str, dict[str, Any]]:
    """The trusted, well-formed manifest of ``agent`` under ``prefix``."""
    import json

    from quiesce.security import check_trusted

    path = manifest_path(prefix, agent)
    if not os.path.lexists(path):
        raise QuiesceError(f"quiesce install {agent} left no manifest at {path}: nothing "
                           "to uninstall",
                           hint="installs before manifests existed are removed by hand: the "
                                "files 'quiesce install --dry-run' lists")
    problems = check_trusted(path, "config")
    if problems:
        raise UninstallRefused(f"the manifest {path} cannot be trusted: "
                               + "; ".join(str(p) for p in problems),
                               hint="it decides which files root removes: inspect it; fix its "
                                    "owner and mode only if you are sure nobody changed it")
    try:
        with open(path, "rb") as handle:
            document = json.loads(handle.read(4 * 1024 * 1024))
    except (OSError, ValueError) as exc:
        raise UninstallRefused(f"cannot read the manifest {path}: {exc}") from exc
    if not isinstance(document, dict) or not isinstance(document.get("files"), list):
        raise UninstallRefused(f"{path} is not an install manifest (no files list)")
    version = document.get("version")
    if version != SUPPORTED_VERSION:
        raise UninstallRefused(
            f"{path} has manifest version {version!r}; this quiesce reads version "
            f"{SUPPORTED_VERSION}", hint="uninstall with the quiesce version that installed it")
    if document.get("agent") not in (None, agent):
        raise UninstallRefused(f"{path} is the manifest of {document.get('agent')!r}, not "
                               f"{agent!r}")
    return path, document


def _inner_ok(inner: Any) -> bool:
    return (isinstance(inner, str) and inner.startswith("/") and "\0" not in inner
            and os.path.normpath(inner) == inner and inner != "/")


def _newest_backup(prefix: str, inner: str, backups: list[Any]) -> str | None:
    """The newest backup ``--force`` made of ``inner`` (``<name>.bak-<time>``), host path."""
    name = os.path.basename(inner) + ".bak-"
    found = [b for b in backups if _inner_ok(b) and os.path.basename(b).startswith(name)]
    for candidate in sorted(found, reverse=True):
        host = join(prefix, candidate)
        if os.path.isfile(host) and not os.path.islink(host):
            return host
    return None


def _shared(prefix: str, agent: str) -> dict[str, str]:
    """Paths the other agents' manifests under ``prefix`` list -> one such agent."""
    import json

    directory = join(prefix, f"/{MANIFEST_DIR}")
    out: dict[str, str] = {}
    try:
        names = sorted(os.listdir(directory))
    except OSError:
        return out
    for name in names:
        other = name[:-len(".json")] if name.endswith(".json") else ""
        if not other or other == agent:
            continue
        try:
            with open(os.path.join(directory, name), "rb") as handle:
                document = json.loads(handle.read(4 * 1024 * 1024))
        except (OSError, ValueError):
            continue
        for entry in document.get("files", []) if isinstance(document, dict) else []:
            if isinstance(entry, dict) and isinstance(entry.get("path"), str):
                out.setdefault(entry["path"], other)
    return out


OUR_MARKER = b", installed by 'quiesce install "


def _ours(path: str) -> bool:
    """A backup that is itself a hook an earlier 'quiesce install' wrote (its header says so)."""
    try:
        with open(path, "rb") as handle:
            head = handle.read(4096)
    except OSError:
        return False
    return OUR_MARKER in head


def plan_uninstall(prefix: str, agent: str) -> UninstallPlan:
    """What uninstall would do with each file of the manifest; changes nothing."""
    path, document = load_manifest(prefix, agent)
    real_prefix = os.path.realpath(prefix)
    plan = UninstallPlan(agent, prefix, path)
    shared = _shared(prefix, agent)
    listed = document.get("backups")
    backups: list[Any] = listed if isinstance(listed, list) else []
    for entry in document["files"]:
        if not isinstance(entry, dict) or not _inner_ok(entry.get("path")):
            raise UninstallRefused(f"{path} lists a file entry that is not an absolute, "
                                   f"normalised path: {entry!r}")
        inner = str(entry["path"])
        host = join(real_prefix, inner)
        step = Step(inner, host, REMOVE)
        plan.steps.append(step)
        action = entry.get("action")
        if action == "same":
            step.action, step.why = LEAVE, "was already there before the install"
            continue
        if inner in shared:
            step.action, step.why = LEAVE, f"the {shared[inner]} install uses it too"
            continue
        if action not in ("create", "replace"):
            raise UninstallRefused(f"{path}: unknown action {action!r} for {inner}")
        try:
            st = os.lstat(host)
        except FileNotFoundError:
            step.action, step.why = GONE, "already removed"
            continue
        if not stat.S_ISREG(st.st_mode):
            step.action, step.why = CHANGED, "is no longer a regular file"
        elif os.path.realpath(os.path.dirname(host)) != os.path.dirname(host):
            step.action, step.why = CHANGED, "a directory on its path is a symbolic link now"
        elif sha256_of(host) != entry.get("sha256"):
            step.action, step.why = CHANGED, "its content changed since the install"
        elif f"{stat.S_IMODE(st.st_mode):04o}" != str(entry.get("mode")):
            step.action, step.why = CHANGED, (f"its mode is {stat.S_IMODE(st.st_mode):04o}, "
                                              f"the install wrote {entry.get('mode')}")
        elif action == "replace":
            step.backup = _newest_backup(real_prefix, inner, backups)
            if step.backup is not None and _ours(step.backup):
                step.why = (f"its backup {step.backup} is an older quiesce hook (an upgrade's "
                            "install --force), not the file before quiesce: removed, backup "
                            "left")
                step.backup = None
            elif step.backup is not None:
                step.action, step.why = RESTORE, f"the previous version comes back from " \
                                                 f"{step.backup}"
            else:
                step.why = "the previous version's backup is gone: removed only"
    return plan


def apply_uninstall(plan: UninstallPlan, *, keep_changed: bool = False) -> None:
    """Carry ``plan`` out; refuses (changing nothing) while a file changed since the install,
    unless ``keep_changed``: then the changed files stay where they are."""
    if plan.changed and not keep_changed:
        listed = "; ".join(f"{s.host}: {s.why}" for s in plan.changed)
        raise UninstallRefused(
            f"{len(plan.changed)} file(s) changed since 'quiesce install {plan.agent}', so "
            f"nothing was removed: {listed}",
            hint="keep your version under another name (mv FILE FILE.mine) or put the "
                 "installed one back, then run 'quiesce uninstall' again; or pass "
                 "--keep-changed to leave the changed files where they are")
    for step in plan.steps:
        if step.action == RESTORE and step.backup is not None:
            os.replace(step.backup, step.host)
        elif step.action == REMOVE:
            try:
                os.unlink(step.host)
            except FileNotFoundError:
                step.action, step.why = GONE, "already removed"
    os.unlink(plan.manifest)
