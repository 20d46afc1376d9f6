"""quiesce without root, for real: the suite (root) creates a throwaway unprivileged user and
runs the CLI as that user with ``setpriv --reuid/--regid --clear-groups``.

What is proved, as that user:
- ``quiesce run`` with the user's own config and scripts and fsFreezeEnabled false runs the
  whole cycle (exit 0, application-consistent: the pre-script succeeded and there is no freeze
  to fail, the runner's rule), and with fsFreezeEnabled true is refused before anything runs;
- a config, script or directory owned by ANOTHER non-root user is refused, and group/other-
  writable directories still are;
- ``quiesce pre``/``status``/``post`` with the example plugin, using the non-root defaults
  ($XDG_RUNTIME_DIR/quiesce, ~/.local/state/quiesce) and a clear error without
  XDG_RUNTIME_DIR; the holder answers its own user and root and refuses anyone else;
- ``quiesce drill --disks dir`` in quiesced mode verifies a PostgreSQL (and MariaDB) restore, the
  unsafe-staggered negative control in the same setting does not,
  and the drills that need root (loop disks, crash mode) say so.

The user's processes are found by uid and killed at the end; the users are removed with
``userdel -r``.
"""

from __future__ import annotations

import contextlib
import fcntl
import glob
import json
import os
import pwd
import secrets
import shutil
import signal
import stat
import subprocess
import sys
import sysconfig
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = ROOT / "tests" / "example_plugin"
PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
DRILL_TIMEOUT = 900

pytestmark = pytest.mark.timeout(300)


def _have_postgres() -> bool:
    return bool(glob.glob("/usr/lib/postgresql/*/bin/initdb")) or bool(shutil.which("initdb"))


def _have_mariadb() -> bool:
    return any(os.access(p, os.X_OK) for p in ("/usr/sbin/mariadbd", "/usr/sbin/mysqld")) or \
        bool(shutil.which("mariadbd"))


def wait_for(condition: Callable[[], bool], timeout: float = 30.0, what: str = "") -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(0.05)


def uid_of_process(pid: int) -> int | None:
    try:
        with open(f"/proc/{pid}/status", encoding="ascii") as handle:
            for line in handle:
                if line.startswith("Uid:"):
                    return int(line.split()[2])  # effective uid
    except OSError:
        return None
    return None


def processes_of(uid: int) -> list[int]:
    return [int(e) for e in os.listdir("/proc") if e.isdigit() and uid_of_process(int(e)) == uid]


def lock_is_free(path: Path) -> bool:
    fd = os.open(path, os.O_RDWR | os.O_CLOEXEC)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return False
    finally:
        os.close(fd)
    return True


@dataclass
class User:
    """A throwaway unprivileged user, and how to run things as it."""

    name: str
    uid: int
    gid: int
    home: Path
    runtime: Path  # its XDG_RUNTIME_DIR (a private dir on /run, tmpfs)
    python: str  # an interpreter this user can run, with the project and its dependencies
    created: list[str] = field(default_factory=list)

    def env(self, **extra: str | None) -> dict[str, str]:
        env = {"PATH": PATH, "HOME": str(self.home), "USER": self.name, "LOGNAME": self.name,
               "LC_ALL": "C.UTF-8", "XDG_RUNTIME_DIR": str(self.runtime),
               "PYTHONDONTWRITEBYTECODE": "1", "PYTHONPATH": str(EXAMPLE)}
        for key, value in extra.items():
            if value is None:
                env.pop(key, None)
            else:
                env[key] = value
        return env

    def argv(self, *argv: str) -> list[str]:
        return ["setpriv", f"--reuid={self.uid}", f"--regid={self.gid}", "--clear-groups",
                "--", *argv]

    def run(self, *argv: str, env: dict[str, str] | None = None, timeout: float = 120,
            ) -> subprocess.CompletedProcess[str]:
        return subprocess.run(self.argv(*argv), env=env or self.env(), capture_output=True,
                              text=True, timeout=timeout, check=False, cwd="/",
                              stdin=subprocess.DEVNULL)

    def quiesce(self, *args: str, env: dict[str, str] | None = None, timeout: float = 120,
                ) -> subprocess.CompletedProcess[str]:
        return self.run(self.python, "-m", "quiesce", *args, env=env, timeout=timeout)

    def mkdir(self, path: Path, mode: int = 0o700) -> Path:
        path.mkdir(parents=True, exist_ok=True)
        os.chown(path, self.uid, self.gid)
        os.chmod(path, mode)
        return path

    def write(self, path: Path, text: str, mode: int) -> Path:
        path.write_text(text)
        os.chown(path, self.uid, self.gid)
        os.chmod(path, mode)
        return path


def _untraversable(paths: list[Path]) -> str | None:
    """The first directory others cannot enter on the way to (and including) ``paths``."""
    for path in paths:
        for directory in [*reversed(path.parents), path]:
            st = directory.stat()
            if stat.S_ISDIR(st.st_mode) and not st.st_mode & 0o001:
                return f"{directory} is mode {stat.S_IMODE(st.st_mode):04o}"
    return None


def _useradd(name: str, *extra: str) -> None:
    done = subprocess.run(["useradd", "--system", "--user-group", "--shell",
                           "/usr/sbin/nologin", *extra, name], capture_output=True, text=True,
                          timeout=60, check=False)
    if done.returncode != 0:
        pytest.skip(f"cannot create a throwaway user: useradd {name} exited "
                    f"{done.returncode}: {done.stderr.strip()}")


def _userdel(name: str, uid: int | None) -> None:
    if uid is not None:
        for _ in range(50):  # the user's processes first: userdel refuses a logged-in user
            pids = processes_of(uid)
            if not pids:
                break
            for pid in pids:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
            time.sleep(0.1)
    subprocess.run(["userdel", "-r", name], capture_output=True, timeout=60, check=False)
    subprocess.run(["groupdel", name], capture_output=True, timeout=60, check=False)


def _python_for(user: User) -> str:
    """This venv's interpreter if the user can run it; else a same-version interpreter the
    user can run, in a tiny venv that loads this venv's site-packages (the project and its
    drivers, installed editable). The venv's own interpreter may live where others cannot
    go (e.g. pyenv under /root, mode 0700)."""
    # The interpreter must start as the user on its own (quiesce re-executes sys.executable for
    # the holder, guardian and scripts) with its own standard library, not a stand-in.
    probe = ("import subprocess, sys\n"
             "subprocess.run([sys.executable, '-c', 'import quiesce, psycopg, pymysql'], "
             "check=True, timeout=60)\n"
             "print(sys.base_prefix)\n")
    if user.run(sys.executable, "-c", probe).stdout.strip() == sys.base_prefix:
        return sys.executable
    version = f"{sys.version_info.major}.{sys.version_info.minor}"
    candidates = [c for c in (shutil.which(f"python{version}", path=PATH),) if c]
    blocked = _untraversable([Path(sys.executable).parent, Path(sys.base_prefix)])
    reasons = [f"{sys.executable} cannot be run by an unprivileged user "
               f"({blocked or 'its standard library is unreadable'})"]
    site_packages = sysconfig.get_paths()["purelib"]
    for candidate in candidates:
        bridge = user.home / "python-bridge"
        done = subprocess.run([candidate, "-m", "venv", "--without-pip", str(bridge)],
                              capture_output=True, text=True, timeout=120, check=False)
        if done.returncode != 0:
            reasons.append(f"{candidate} -m venv failed: {done.stderr.strip()[-200:]}")
            continue
        purelib = subprocess.run([str(bridge / "bin" / "python"), "-c",
                                  "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                                 capture_output=True, text=True, timeout=60, check=True)
        Path(purelib.stdout.strip(), "quiesce-checkout.pth").write_text(
            f"import site; site.addsitedir({site_packages!r})\n")
        python = str(bridge / "bin" / "python")
        check = user.run(python, "-c", probe)
        if check.returncode == 0:
            return python
        reasons.append(f"{python} cannot import the project: {check.stderr.strip()[-300:]}")
    pytest.skip("no Python the unprivileged user can run with quiesce installed: "
                + "; ".join(reasons))


@pytest.fixture(scope="session")
def users() -> Iterator[tuple[User, User]]:
    """(the user quiesce runs as, another non-root user), both throwaway."""
    if os.geteuid() != 0:
        pytest.skip("needs root: creates throwaway users and drops privileges to them")
    missing = [t for t in ("setpriv", "useradd", "userdel") if not shutil.which(t, path=PATH)]
    if missing:
        pytest.skip(f"needs {', '.join(missing)} (util-linux, passwd) to run as another user")
    blocked = _untraversable([ROOT / "core" / "quiesce", EXAMPLE,
                              Path(sysconfig.get_paths()["purelib"])])
    if blocked:
        pytest.skip(f"the checkout's parents are not traversable by others: {blocked}")
    tag = secrets.token_hex(4)
    made: list[tuple[str, int | None]] = []
    runtime = Path(tempfile.mkdtemp(prefix=f"quiesce-nonroot-{tag}-", dir="/run"))
    try:
        name, other_name = f"qnr-{tag}", f"qnro-{tag}"
        _useradd(name, "--create-home")
        made.append((name, None))
        entry = pwd.getpwnam(name)
        made[-1] = (name, entry.pw_uid)
        _useradd(other_name, "--no-create-home")
        other_entry = pwd.getpwnam(other_name)
        made.append((other_name, other_entry.pw_uid))
        home = Path(entry.pw_dir)
        os.chmod(home, 0o700)
        os.chown(runtime, entry.pw_uid, entry.pw_gid)
        os.chmod(runtime, 0o700)
        user = User(name, entry.pw_uid, entry.pw_gid, home, runtime, python="")
        user.python = _python_for(user)
        other = User(other_name, other_entry.pw_uid, other_entry.pw_gid, Path("/nonexistent"),
                     runtime, python=user.python)
        yield user, other
    finally:
        for name, uid in reversed(made):
            _userdel(name, uid)
        shutil.rmtree(runtime, ignore_errors=True)


@pytest.fixture
def user(users: tuple[User, User]) -> Iterator[User]:
    user = users[0]
    yield user
    for pid in processes_of(user.uid):  # a holder or server a failing test left behind
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    for path in user.home.iterdir():
        if path.name != "python-bridge":
            shutil.rmtree(path, ignore_errors=True) if path.is_dir() else path.unlink()
    for path in user.runtime.iterdir():
        shutil.rmtree(path, ignore_errors=True) if path.is_dir() else path.unlink()


@pytest.fixture
def other(users: tuple[User, User]) -> User:
    return users[1]


# -- quiesce run ----------------------------------------------------------------------------


def azure_setup(user: User, *, freeze: bool = False) -> tuple[Path, Path]:
    """The user's own Azure config and scripts under ~/azure; returns (config, marker)."""
    conf = user.mkdir(user.home / "azure")
    marker = conf / "ran"
    for phase in ("pre", "post"):
        user.write(conf / f"{phase}.sh",
                   f'#!/bin/sh\necho "{phase} $(id -u) $1" >> {marker}\n', 0o700)
    config = {
        "pluginName": "ScriptRunner",
        "preScriptLocation": str(conf / "pre.sh"),
        "postScriptLocation": str(conf / "post.sh"),
        "preScriptParams": ["a b"],
        "postScriptParams": ["c"],
        "preScriptNoOfRetries": 0,
        "postScriptNoOfRetries": 0,
        "timeoutInSeconds": 30,
        "continueBackupOnFailure": False,
        "fsFreezeEnabled": freeze,
    }
    path = user.write(conf / "VMSnapshotScriptPluginConfig.json", json.dumps(config), 0o600)
    return path, marker


def run_json(user: User, config: Path, *extra: str) -> tuple[int, dict[str, Any], str]:
    proc = user.quiesce("run", "--config", str(config), "--json", *extra)
    return proc.returncode, json.loads(proc.stdout), proc.stderr


def test_run_with_the_users_own_config_and_scripts(user: User) -> None:
    config, marker = azure_setup(user)
    code, status, err = run_json(user, config)
    assert code == 0, err
    # No freeze to fail and a successful pre-script: the runner's rule says "application".
    assert status["consistency"] == "application" and status["snapshot_taken"] is True
    assert status["errors"] == []
    phases = {p["name"]: p for p in status["phases"]}
    assert phases["pre"]["status"] == "ok" and phases["post"]["status"] == "ok"
    assert phases["freeze"]["status"] == "disabled"
    assert status["freeze"]["enabled"] is False and status["freeze"]["mounts"] == []
    assert marker.read_text().splitlines() == [f"pre {user.uid} a b", f"post {user.uid} c"]
    checked = user.quiesce("check", "--config", str(config))
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert "freeze: off (fsFreezeEnabled is false)" in checked.stdout


def test_run_refuses_freezing_without_root_before_anything_runs(user: User) -> None:
    config, marker = azure_setup(user, freeze=True)
    code, status, err = run_json(user, config)
    assert code == 2, err
    [error] = status["errors"]
    assert "fsFreezeEnabled" in error["message"] and "CAP_SYS_ADMIN" in error["message"]
    assert '"fsFreezeEnabled": false' in error["hint"]
    assert not marker.exists()  # validation failed: no script ran
    checked = user.quiesce("check", "--config", str(config))
    assert checked.returncode == 2 and "CAP_SYS_ADMIN" in checked.stdout
    assert "freeze: refused (it needs root" in checked.stdout
    assert "would freeze" not in checked.stdout


def test_run_refuses_a_config_owned_by_another_user(user: User, other: User) -> None:
    config, marker = azure_setup(user)
    os.chown(config, other.uid, other.gid)  # mode 0600: the user cannot even read it
    code, status, _ = run_json(user, config)
    assert code == 2
    text = " | ".join(e["message"] for e in status["errors"])
    assert f"is owned by uid {other.uid} ({other.name}), not root or uid {user.uid} " \
           f"({user.name})" in text, text
    assert all(e["code"] == "IncorrectJSONConfigFile" for e in status["errors"])
    assert not marker.exists()


def test_run_refuses_a_script_owned_by_another_user(user: User, other: User) -> None:
    config, marker = azure_setup(user)
    pre = config.parent / "pre.sh"
    os.chown(pre, other.uid, other.gid)
    os.chmod(pre, 0o705)  # readable and runnable by the user, but someone else's to change
    code, status, _ = run_json(user, config)
    assert code == 2
    assert {e["code"] for e in status["errors"]} == {"InsufficientPermissionforPre-Script"}
    text = " | ".join(e["message"] for e in status["errors"])
    assert f"is owned by uid {other.uid} ({other.name}), not root or uid {user.uid}" in text
    assert not marker.exists()


def test_run_refuses_the_users_config_in_another_users_directory(user: User,
                                                                  other: User) -> None:
    config, _ = azure_setup(user)
    shared = user.home / "shared"
    user.mkdir(shared, 0o755)
    os.chown(shared, other.uid, other.gid)  # owned by someone else: they could swap the file
    moved = shared / config.name
    os.rename(config, moved)
    code, status, _ = run_json(user, moved)
    assert code == 2
    text = " | ".join(e["message"] for e in status["errors"])
    assert f"{shared}: directory is owned by uid {other.uid}" in text, text
    os.chown(shared, user.uid, user.gid)
    os.chmod(shared, 0o775)  # the user's own, but group-writable: still refused
    code, status, _ = run_json(user, moved)
    assert code == 2
    assert any(f"{shared}: directory mode 0775 is writable by group/other" in e["message"]
               for e in status["errors"])
    os.chmod(shared, 0o755)
    code, status, err = run_json(user, moved)
    assert code == 0, err
    assert not any("group/other" in e["message"] for e in status["errors"])


def test_run_refuses_a_config_behind_another_users_private_directory(user: User,
                                                                     other: User) -> None:
    config, marker = azure_setup(user)
    private = user.mkdir(user.home / "private", 0o700)
    moved = user.mkdir(private / "sub") / config.name
    os.rename(config, moved)
    os.chown(private, other.uid, other.gid)  # the user cannot even look inside
    code, status, _ = run_json(user, moved)
    assert code == 2
    text = " | ".join(e["message"] for e in status["errors"])
    assert f"{private}: directory is owned by uid {other.uid}" in text, text
    assert f"{private}: directory cannot be searched by uid {user.uid}" in text, text
    assert not marker.exists()
    os.rename(moved, private / config.name)  # the file right inside it: cannot be opened
    code, status, _ = run_json(user, private / config.name)
    assert code == 2
    text = " | ".join(e["message"] for e in status["errors"])
    assert f"{private}: directory is owned by uid {other.uid}" in text, text
    assert "cannot be opened: Permission denied" in text, text


# -- quiesce pre / status / post ------------------------------------------------------------


def flock_config(user: User, *extra: str) -> tuple[Path, Path]:
    conf = user.mkdir(user.home / "q")
    lock = conf / "app.lock"
    text = "\n".join(["max_hold_seconds = 60", *extra,
                      f'[[flock]]\nname = "a"\npath = "{lock}"\nsticky = true\n'])
    return user.write(conf / "quiesce.toml", text, 0o600), lock


def test_pre_status_post_with_the_non_root_defaults(user: User) -> None:
    config, lock = flock_config(user)
    pre = user.quiesce("pre", "--config", str(config), "--json")
    assert pre.returncode == 0, pre.stderr
    ready = json.loads(pre.stdout)
    rundir = user.runtime / "quiesce"
    assert ready["runtime_dir"] == str(rundir)
    st = rundir.stat()
    assert (st.st_uid, stat.S_IMODE(st.st_mode)) == (user.uid, 0o700)
    assert uid_of_process(ready["holder_pid"]) == user.uid
    assert uid_of_process(ready["guardian_pid"]) == user.uid
    assert not lock_is_free(lock)  # really held, as another process sees it

    status = user.quiesce("status", "--json")
    assert status.returncode == 0, status.stderr
    assert json.loads(status.stdout)["state"] == "holding"

    post = user.quiesce("post", "--json")
    assert post.returncode == 0, post.stderr
    outcome = json.loads(post.stdout)
    assert [i["status"] for i in outcome["instances"]] == ["released"]
    assert lock_is_free(lock)
    record = user.home / ".local" / "state" / "quiesce" / "runs" / f"{ready['run_id']}.json"
    assert outcome["record"] == str(record)
    assert record.stat().st_uid == user.uid
    assert stat.S_IMODE(record.parent.parent.stat().st_mode) == 0o700
    wait_for(lambda: uid_of_process(ready["holder_pid"]) is None, what="the holder to exit")


def test_state_dir_follows_xdg_state_home(user: User) -> None:
    config, _ = flock_config(user)
    state_home = user.mkdir(user.home / "state-home")
    env = user.env(XDG_STATE_HOME=str(state_home))
    pre = user.quiesce("pre", "--config", str(config), "--json", env=env)
    assert pre.returncode == 0, pre.stderr
    run_id = json.loads(pre.stdout)["run_id"]
    post = user.quiesce("post", "--json", env=env)
    assert post.returncode == 0, post.stderr
    assert json.loads(post.stdout)["record"] == str(
        state_home / "quiesce" / "runs" / f"{run_id}.json")


def test_no_runtime_dir_is_a_clear_error(user: User) -> None:
    config, lock = flock_config(user)
    env = user.env(XDG_RUNTIME_DIR=None)
    for args in (("pre", "--config", str(config)), ("status",), ("post",)):
        proc = user.quiesce(*args, env=env)
        assert proc.returncode == 2, proc.stderr
        assert "XDG_RUNTIME_DIR is not set" in proc.stderr
        assert "--runtime-dir" in proc.stderr and "QUIESCE_RUNTIME_DIR" in proc.stderr
    assert not Path(str(lock) + ".held").exists()  # nothing was quiesced
    explicit = user.mkdir(user.home / "rt")
    env["QUIESCE_RUNTIME_DIR"] = str(explicit)
    assert user.quiesce("pre", "--config", str(config), env=env).returncode == 0
    assert (explicit / "holder.sock").exists()
    assert user.quiesce("post", env=env).returncode == 0


def test_a_runtime_dir_the_user_cannot_create_is_a_clear_error(user: User) -> None:
    config, lock = flock_config(user)
    rundir = f"/run/quiesce-not-yours-{secrets.token_hex(4)}/rt"  # /run is root's
    proc = user.quiesce("pre", "--config", str(config), "--runtime-dir", rundir)
    assert proc.returncode == 2
    assert f"cannot create the runtime dir {rundir}: Permission denied" in proc.stderr
    assert "--runtime-dir" in proc.stderr
    assert not Path(str(lock) + ".held").exists()
    assert not Path(rundir).parent.exists()


def test_pre_refuses_a_toml_owned_by_another_user(user: User, other: User) -> None:
    config, _ = flock_config(user)
    os.chown(config, other.uid, other.gid)
    os.chmod(config, 0o604)  # readable, so the refusal is about who owns it
    proc = user.quiesce("pre", "--config", str(config))
    assert proc.returncode == 2
    assert f"owned by uid {other.uid} ({other.name}), not root or uid {user.uid}" in proc.stderr
    assert not (user.runtime / "quiesce").exists()  # nothing was started


def test_holder_answers_its_user_and_root_and_refuses_others(user: User, other: User) -> None:
    config, _ = flock_config(user)
    pre = user.quiesce("pre", "--config", str(config), "--json")
    assert pre.returncode == 0, pre.stderr
    rundir = user.runtime / "quiesce"
    sock = rundir / "holder.sock"
    plain_python = shutil.which("python3", path=PATH) or sys.executable

    def ask(as_user: User | None) -> dict[str, Any]:
        code = ("import json,socket,sys\ns=socket.socket(socket.AF_UNIX)\ns.settimeout(10)\n"
                "s.connect(sys.argv[1])\ns.sendall(b'{\"op\": \"status\"}\\n')\n"
                "print(s.makefile().readline())\n")
        argv = [plain_python, "-c", code, str(sock)]  # needs nothing but the stdlib
        if as_user is None:
            done = subprocess.run(argv, capture_output=True, text=True, timeout=30, check=False)
        else:
            done = subprocess.run(as_user.argv(*argv), env=as_user.env(), capture_output=True,
                                  text=True, timeout=30, check=False)
        assert done.returncode == 0, done.stderr
        return json.loads(done.stdout)

    assert ask(user)["state"] == "holding"
    assert ask(None)["state"] == "holding"  # root
    # Let the other user reach the socket (the 0700 runtime dir normally stops it first):
    # the holder's own peer check must refuse it.
    for path, mode in ((user.runtime, 0o711), (rundir, 0o711), (sock, 0o666)):
        os.chmod(path, mode)
    try:
        # (answers carry the protocol version; these requests, like an older client's, have none)
        assert ask(other) == {"protocol": 1, "ok": False, "error": "permission denied"}
    finally:
        for path in (sock, rundir, user.runtime):
            os.chmod(path, 0o600 if path == sock else 0o700)
    # Root's CLI trusts only root's runtime dirs: a user's holder is not root's to believe.
    as_root = subprocess.run([sys.executable, "-m", "quiesce", "status", "--runtime-dir",
                              str(rundir)], capture_output=True, text=True, timeout=60,
                             check=False)
    assert as_root.returncode == 2 and f"owned by uid {user.uid}" in as_root.stderr
    assert user.quiesce("post").returncode == 0


# -- quiesce drill --------------------------------------------------------------------------


def drill(user: User, *args: str, env: dict[str, str] | None = None,
          ) -> subprocess.CompletedProcess[str]:
    return user.quiesce("drill", "--backend", "local", *args, env=env, timeout=DRILL_TIMEOUT)


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
    except OSError:
        return "?"


def _drill_leftovers(user: User) -> list[str]:
    # A holder or guardian may take a moment to exit after 'post' answered.
    with contextlib.suppress(AssertionError):
        wait_for(lambda: not processes_of(user.uid), 30, "the user's processes to exit")
    left = [f"pid {pid}: {_cmdline(pid)}" for pid in processes_of(user.uid)]
    base = user.home / ".cache" / "quiesce-drill"
    if base.exists():
        left += [str(p) for p in base.iterdir()]
    left += [str(p) for p in user.runtime.iterdir()]
    return left


@pytest.mark.timeout(DRILL_TIMEOUT + 60)
@pytest.mark.skipif(not _have_postgres(),
                    reason="no PostgreSQL server binaries (apt-get install postgresql)")
@pytest.mark.parametrize("xdg_runtime_dir", [True, False],
                         ids=["xdg-runtime-dir", "no-xdg-runtime-dir"])
def test_drill_postgresql_dir_quiesced_as_non_root(user: User, xdg_runtime_dir: bool) -> None:
    # Without XDG_RUNTIME_DIR (su, cron) the holder's runtime dir goes inside the work dir.
    env = user.env() if xdg_runtime_dir else user.env(XDG_RUNTIME_DIR=None)
    proc = drill(user, "--engine", "postgresql", "--disks", "dir", "--cycles", "1", "--json",
                 env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads(proc.stdout)
    assert (report["disks"], report["mode"], report["backend"]) == ("dir", "quiesced", "local")
    [cycle] = report["cycles"]
    assert cycle["verified"] is True, cycle
    assert cycle["consistency"] == "application"
    assert cycle["backup_label_installed"] is True
    assert f"work dir {user.home}/.cache/quiesce-drill/run-" in proc.stderr
    assert _drill_leftovers(user) == []


@pytest.mark.timeout(DRILL_TIMEOUT + 60)
@pytest.mark.skipif(not _have_postgres(),
                    reason="no PostgreSQL server binaries (apt-get install postgresql)")
def test_drill_negative_control_still_fails_as_non_root(user: User) -> None:
    """The same harness as the quiesced dir drill above, minus quiesce: it must NOT verify,
    or that drill's success would prove nothing."""
    proc = drill(user, "--engine", "postgresql", "--mode", "unsafe-staggered", "--cycles", "2",
                 "--json")
    assert proc.returncode == 1, proc.stderr[-3000:]
    report = json.loads(proc.stdout)
    assert report["disks"] == "dir" and report["summary"]["cycles_verified"] == 0
    for cycle in report["cycles"]:
        started = cycle["checks"]["server_started"]
        assert not started["ok"] and "checkpoint record" in started["detail"], started
    assert _drill_leftovers(user) == []


@pytest.mark.timeout(DRILL_TIMEOUT + 60)
@pytest.mark.skipif(not _have_mariadb(),
                    reason="no MariaDB server (apt-get install mariadb-server)")
def test_drill_mariadb_dir_quiesced_as_non_root(user: User) -> None:
    proc = drill(user, "--engine", "mariadb", "--cycles", "1", "--json")  # dir: the default
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads(proc.stdout)
    assert (report["disks"], report["mode"]) == ("dir", "quiesced")
    [cycle] = report["cycles"]
    assert cycle["verified"] is True, cycle
    assert cycle["consistency"] == "application"
    assert _drill_leftovers(user) == []


def test_drills_that_need_root_say_so(user: User) -> None:
    loop = drill(user, "--disks", "loop", "--cycles", "1")
    assert loop.returncode == 2
    assert "--disks loop needs root" in loop.stderr and "--disks dir" in loop.stderr
    crash = drill(user, "--mode", "crash", "--cycles", "1")
    assert crash.returncode == 2
    assert "--mode crash freezes the disks" in crash.stderr
    assert "--mode quiesced --disks dir" in crash.stderr
    assert _drill_leftovers(user) == []
