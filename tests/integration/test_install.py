"""`quiesce install azure`: files, modes, idempotence, --force backups, --dry-run; its Azure
side passes `quiesce check`, which asks for an instance section in the quiesce.toml skeleton
until one is filled in; and it really runs `quiesce pre`/`post` through its wrappers."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import stat
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from quiesce.callers.azure_install import azure_timeout, wrapper_script

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = ROOT / "tests" / "example_plugin"
AZURE = "etc/azure/VMSnapshotScriptPluginConfig.json"
PRE = "etc/azure/quiesce-pre.sh"
POST = "etc/azure/quiesce-post.sh"
TOML = "etc/quiesce/quiesce.toml"

pytestmark = pytest.mark.timeout(180)


@pytest.fixture
def base(require_root: None) -> Iterator[Path]:
    path = Path(tempfile.mkdtemp(prefix="qi-", dir="/run"))
    try:
        yield path
    finally:
        for entry in os.listdir("/proc"):  # any holder the wrapper test left, by pid
            if entry.isdigit() and int(entry) != os.getpid():
                with contextlib.suppress(OSError):
                    if str(path).encode() in Path(f"/proc/{entry}/cmdline").read_bytes():
                        os.kill(int(entry), signal.SIGKILL)
        shutil.rmtree(path, ignore_errors=True)


def quiesce(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "quiesce", *args], capture_output=True,
                          text=True, timeout=120, env=env, cwd="/", check=False)


def install(prefix: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    return quiesce("install", "azure", "--prefix", str(prefix), "--plugins", "postgresql,mysql",
                   *extra)


def snapshot(prefix: Path) -> dict[str, tuple[bytes, int, int]]:
    out = {}
    for path in sorted(prefix.rglob("*")):
        st = path.lstat()
        content = path.read_bytes() if path.is_file() else b""
        out[str(path.relative_to(prefix))] = (content, stat.S_IMODE(st.st_mode), st.st_uid)
    return out


def test_installs_root_owned_files_and_check_wants_a_section(base: Path) -> None:
    prefix = base / "root"
    proc = install(prefix)
    assert proc.returncode == 0, proc.stderr
    modes = {AZURE: 0o600, PRE: 0o700, POST: 0o700, TOML: 0o600, "etc/azure": 0o755,
             "etc/quiesce": 0o700, "etc": 0o755}
    for relative, mode in modes.items():
        st = (prefix / relative).lstat()
        assert (st.st_uid, stat.S_IMODE(st.st_mode)) == (0, mode), relative

    config = json.loads((prefix / AZURE).read_text())
    assert config == {
        "pluginName": "ScriptRunner",
        "preScriptLocation": str(prefix / PRE),
        "postScriptLocation": str(prefix / POST),
        "preScriptParams": [],
        "postScriptParams": [],
        "preScriptNoOfRetries": 0,
        "postScriptNoOfRetries": 0,
        "timeoutInSeconds": 300,
        "continueBackupOnFailure": True,
        "fsFreezeEnabled": True,
        # The shortest poll Azure accepts: its sleeps are the longest part of the hold.
        "ScriptsExecutionPollTimeSeconds": 1,
    }
    pre = (prefix / PRE).read_text()
    assert pre.startswith("#!/bin/sh\n")
    exec_line = pre.splitlines()[-1]
    assert exec_line.startswith("exec /") and exec_line.endswith(
        f" pre --config {prefix / TOML} --azure-config {prefix / AZURE} \"$@\"")
    post = (prefix / POST).read_text()
    assert post.splitlines()[-1].endswith(f" post --config {prefix / TOML} \"$@\"")
    for wrapper in (pre, post):  # each re-checks, at every backup, what it execs as root
        assert "refusing to run quiesce" in wrapper
    toml = (prefix / TOML).read_text()
    # The selection stays commented: selecting an engine that has no section is an error.
    assert '# plugins = ["postgresql", "mysql"]' in toml
    assert "# [[postgresql]]" in toml and "# [[mysql]]" in toml and "[[mongodb]]" not in toml

    # The result passes check (issue 3), and check warns that the skeleton is not a
    # configuration yet instead of letting the first backup's 'quiesce pre' find out.
    check = quiesce("check", "--config", str(prefix / AZURE))
    assert check.returncode == 0, check.stdout + check.stderr
    for line in ("config: ok", f"pre-script {prefix / PRE}: ok",
                 f"post-script {prefix / POST}: ok",
                 f"quiesce.toml {prefix / TOML} (used by the pre-script): not configured yet",
                 f"note: WARNING: {prefix / TOML} has no database instance section"):
        assert line in check.stdout, check.stdout
    assert "problem " not in check.stdout
    assert "uncomment and fill in the example section ([[postgresql]], [[mysql]])" \
        in check.stdout

    # Uncommenting the example PostgreSQL section (with a conninfo) makes it pass.
    lines = toml.splitlines()
    start = lines.index("# [[postgresql]]")
    section = ["[[postgresql]]", 'conninfo = "host=/var/run/postgresql dbname=postgres"']
    filled = "\n".join(lines[:start] + section + lines[start + 1:]) + "\n"
    (prefix / TOML).write_text(filled)
    check = quiesce("check", "--config", str(prefix / AZURE))
    assert check.returncode == 0, check.stdout + check.stderr
    assert (f"quiesce.toml {prefix / TOML} (used by the pre-script): ok "
            "(postgresql/postgresql)") in check.stdout
    assert check.stdout.endswith("all good\n")


def test_rerun_is_idempotent(base: Path) -> None:
    prefix = base / "root"
    assert install(prefix).returncode == 0
    before = snapshot(prefix)
    proc = install(prefix)
    assert proc.returncode == 0
    assert proc.stdout.count("unchanged") == 4
    assert snapshot(prefix) == before


def test_a_different_file_is_never_overwritten_without_force(base: Path) -> None:
    prefix = base / "root"
    assert install(prefix).returncode == 0
    mine = b'{"pluginName": "ScriptRunner", "edited": true}\n'
    (prefix / AZURE).write_bytes(mine)
    (prefix / PRE).unlink()
    proc = install(prefix)
    assert proc.returncode == 2
    assert "differ from what would be installed" in proc.stderr and "--force" in proc.stderr
    assert (prefix / AZURE).read_bytes() == mine
    assert not (prefix / PRE).exists()  # nothing at all was written

    proc = install(prefix, "--force")
    assert proc.returncode == 0, proc.stderr
    backups = list((prefix / "etc/azure").glob("VMSnapshotScriptPluginConfig.json.bak-*"))
    assert len(backups) == 1 and backups[0].read_bytes() == mine
    assert json.loads((prefix / AZURE).read_text())["pluginName"] == "ScriptRunner"
    assert "edited" not in (prefix / AZURE).read_text()
    assert (prefix / PRE).exists()


def test_an_edited_quiesce_toml_is_kept(base: Path) -> None:
    prefix = base / "root"
    assert install(prefix).returncode == 0
    edited = b'[[postgresql]]\nconninfo = "host=/run/postgresql"\n'
    (prefix / TOML).write_bytes(edited)
    proc = install(prefix)
    assert proc.returncode == 0
    assert "existing configuration kept" in proc.stdout
    assert (prefix / TOML).read_bytes() == edited


def test_wrong_mode_with_same_content_is_fixed(base: Path) -> None:
    prefix = base / "root"
    assert install(prefix).returncode == 0
    os.chmod(prefix / PRE, 0o755)
    proc = install(prefix)
    assert proc.returncode == 0 and "fixed" in proc.stdout
    assert stat.S_IMODE((prefix / PRE).stat().st_mode) == 0o700


def test_dry_run_writes_nothing(base: Path) -> None:
    prefix = base / "root"
    proc = install(prefix, "--dry-run")
    assert proc.returncode == 0
    assert "would create it" in proc.stdout and '"pluginName": "ScriptRunner"' in proc.stdout
    assert "#!/bin/sh" in proc.stdout
    assert not prefix.exists()


def test_the_installed_wrappers_run_pre_and_post(base: Path) -> None:
    prefix = base / "root"
    proc = quiesce("install", "azure", "--prefix", str(prefix), "--plugins", "postgresql")
    assert proc.returncode == 0, proc.stderr
    lock = base / "app.lock"
    (prefix / TOML).write_text(f'state_dir = "{base}/state"\n[[flock]]\npath = "{lock}"\n')
    env = {**os.environ, "QUIESCE_RUNTIME_DIR": str(base / "rt"),
           "PYTHONPATH": str(EXAMPLE)}
    # The way the runner (or Azure) calls it: directly, with no parameters.
    pre = subprocess.run([str(prefix / PRE)], env=env, capture_output=True, text=True,
                         timeout=120, check=False)
    assert pre.returncode == 0, pre.stderr
    assert "flock/flock: held" in pre.stdout
    post = subprocess.run([str(prefix / POST)], env=env, capture_output=True, text=True,
                          timeout=120, check=False)
    assert post.returncode == 0, post.stderr
    assert "flock/flock: released" in post.stdout


def test_a_kept_quiesce_toml_sizes_the_timeout_with_its_pre_timeout(base: Path) -> None:
    prefix = base / "root"
    assert install(prefix).returncode == 0
    (prefix / TOML).write_text('pre_timeout_seconds = 600\n[[postgresql]]\nconninfo = ""\n')
    proc = install(prefix, "--force")  # --force replaces the TOML: the default sizes it
    assert proc.returncode == 0, proc.stderr
    assert json.loads((prefix / AZURE).read_text())["timeoutInSeconds"] == 300
    (prefix / TOML).write_text('pre_timeout_seconds = 600\n[[postgresql]]\nconninfo = ""\n')
    (prefix / AZURE).unlink()
    proc = install(prefix)  # the edited TOML is kept: the timeout must fit its 600 s
    assert proc.returncode == 0, proc.stderr
    assert "existing configuration kept" in proc.stdout
    assert json.loads((prefix / AZURE).read_text())["timeoutInSeconds"] == 630


def test_the_installed_wrapper_refuses_once_its_quiesce_becomes_replaceable(
        base: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import argparse

    from quiesce.callers import azure_install
    from quiesce.callers.install import base as install_base
    from quiesce.commands import install as install_command

    bindir = base / "venv" / "bin"
    launcher = _launcher(bindir)
    monkeypatch.setattr(install_base, "quiesce_command", lambda: [str(launcher)])
    prefix = base / "prefix"
    args = argparse.Namespace(prefix=str(prefix), plugins="postgresql", force=False,
                              dry_run=False, max_hold_seconds=None)
    assert install_command.main(args) == 0
    assert str(bindir) in (prefix / PRE).read_text()
    bindir.chmod(0o1777)  # what a venv under /tmp amounts to
    for script in (PRE, POST):
        proc = subprocess.run([str(prefix / script)], capture_output=True, text=True,
                              timeout=60, check=False)
        assert proc.returncode == azure_install.GUARD_EXIT, proc.stdout + proc.stderr
        assert f"refusing to run quiesce: {bindir} could be replaced" in proc.stderr


def test_timeout_is_sized_from_max_hold() -> None:
    assert azure_timeout(300, 60) == 300
    assert azure_timeout(10, 60) == 90  # never shorter than pre may take
    assert azure_timeout(3600, 60) == 1800  # Azure's ceiling
    assert azure_timeout(1, 1) == 60


def test_wrapper_quotes_every_argument() -> None:
    text = wrapper_script("pre", "/etc/odd dir/q.toml", ["/opt/my venv/bin/quiesce"],
                          azure_config_path="/etc/az ure/c.json",
                          guard=["/opt/my venv", "/opt/it's"]).decode()
    assert ("exec '/opt/my venv/bin/quiesce' pre --config '/etc/odd dir/q.toml' "
            "--azure-config '/etc/az ure/c.json' \"$@\"") in text
    assert "for path in '/opt/my venv' '/opt/it'\"'\"'s'; do" in text


def _launcher(directory: Path) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    script = directory / "quiesce"
    script.write_text(f"#!{sys.executable}\nimport quiesce.cli\n")
    script.chmod(0o755)
    return script


def test_a_command_others_can_replace_is_reported(base: Path) -> None:
    """The wrappers run as root: what they exec must be replaceable by root only."""
    from quiesce.callers.azure_install import command_problems
    from quiesce.security import owner_name

    safe = _launcher(base / "safe" / "bin")
    assert command_problems([str(safe)]) == []

    open_dir = base / "open" / "bin"
    unsafe = _launcher(open_dir)
    open_dir.chmod(0o777)
    problems = command_problems([str(unsafe)])
    assert problems == [f"{open_dir} is writable by group/other (mode 0777)"]

    foreign = _launcher(base / "foreign" / "bin")
    os.chown(foreign, 65534, 65534)
    assert command_problems([str(foreign)]) == [f"{foreign} is owned by {owner_name(65534)}"]

    # Sticky does not help: a venv under /tmp is refused (issue 7).
    in_tmp = _launcher(Path(tempfile.mkdtemp(prefix="qi-venv-")) / "bin")
    try:
        found = command_problems([str(in_tmp)])
        assert any(p.startswith("/tmp is writable by group/other (mode 1777, sticky")
                   for p in found), found
    finally:
        shutil.rmtree(in_tmp.parent.parent)

    # Through a symlink, the target's directories count too.
    link = base / "safe" / "bin" / "linked"
    link.symlink_to(unsafe)
    assert f"{open_dir} is writable by group/other (mode 0777)" in command_problems([str(link)])


def test_install_refuses_to_wire_a_replaceable_command(base: Path,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    import argparse

    from quiesce.callers.install import base as install_base
    from quiesce.commands import install as install_command
    from quiesce.errors import QuiesceError

    open_dir = base / "open" / "bin"
    unsafe = _launcher(open_dir)
    open_dir.chmod(0o777)
    monkeypatch.setattr(install_base, "quiesce_command", lambda: [str(unsafe)])
    args = argparse.Namespace(prefix=str(base / "prefix"), plugins="postgresql", force=False,
                              dry_run=False, max_hold_seconds=None)
    with pytest.raises(QuiesceError, match="users other than root can replace") as caught:
        install_command.main(args)
    assert str(open_dir) in str(caught.value)
    assert not (base / "prefix").exists()  # nothing written
