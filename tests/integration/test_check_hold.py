"""`quiesce check` on a tree written by `quiesce install azure --prefix`: the quiesce.toml the
pre-script wrapper makes `quiesce pre` load is validated with everything else (root-owned files
under /run, since /tmp is group/other writable and would fail the trust checks first)."""

from __future__ import annotations

import json
import os
import shlex
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from quiesce.callers.azure_install import apply, plan, quiesce_command, wrapper_script

pytestmark = pytest.mark.timeout(180)

AZURE = "etc/azure/VMSnapshotScriptPluginConfig.json"
PRE = "etc/azure/quiesce-pre.sh"
POST = "etc/azure/quiesce-post.sh"
TOML = "etc/quiesce/quiesce.toml"
VALID = '[[postgresql]]\nconninfo = "host=/var/run/postgresql dbname=postgres"\n'


@dataclass
class Tree:
    prefix: Path

    def __truediv__(self, relative: str) -> Path:
        return self.prefix / relative

    def write(self, relative: str, text: str, mode: int = 0o600) -> Path:
        path = self.prefix / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
        os.chmod(path, mode)
        return path

    def azure(self, **changes: object) -> None:
        document = json.loads((self / AZURE).read_text())
        document.update(changes)
        for key in [k for k, v in changes.items() if v is None]:
            del document[key]  # None: leave the key out
        self.write(AZURE, json.dumps(document, indent=4))

    def wrapper(self, relative: str, phase: str, toml: str, *extra: str,
                azure_config: str | None = "") -> Path:
        """A wrapper like install's, with ``extra`` options after --config (and, for pre,
        --azure-config naming this tree's Azure config unless ``azure_config`` says
        otherwise; None: the older form without it)."""
        if azure_config == "":
            azure_config = str(self / AZURE) if phase == "pre" else None
        text = wrapper_script(phase, toml, quiesce_command(),
                              azure_config_path=azure_config).decode()
        if extra:
            text = text.replace(' "$@"', " " + " ".join(map(shlex.quote, extra)) + ' "$@"')
        return self.write(relative, text, 0o700)

    def check(self) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "quiesce", "check", "--config",
                               str(self / AZURE)], capture_output=True, text=True,
                              timeout=120, cwd="/", check=False)


@pytest.fixture
def tree(require_root: None) -> Iterator[Tree]:
    base = Path(tempfile.mkdtemp(prefix="qch-", dir="/run"))
    try:
        apply(plan(str(base / "root"), ["postgresql", "mysql"]))
        yield Tree(base / "root")
    finally:
        shutil.rmtree(base, ignore_errors=True)


def problems(proc: subprocess.CompletedProcess[str]) -> list[str]:
    return [line for line in proc.stdout.splitlines() if line.startswith("problem ")]


def exec_line(path: Path) -> int:
    """The 1-based line of the wrapper's ``exec`` (after install's re-check of its paths)."""
    lines = path.read_text().splitlines()
    return next(i for i, line in enumerate(lines, start=1) if line.startswith("exec "))


def test_fresh_install_reports_the_skeleton_then_passes_once_filled(tree: Tree) -> None:
    proc = tree.check()
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert problems(proc) == []
    assert (f"note: WARNING: {tree / TOML} has no database instance section, so 'quiesce "
            "pre' would fail at the first backup") in proc.stdout
    assert f"quiesce.toml {tree / TOML} (used by the pre-script): not configured yet" \
        in proc.stdout

    tree.write(TOML, (tree / TOML).read_text() + VALID)
    proc = tree.check()
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert f"quiesce.toml {tree / TOML} (used by the pre-script): ok (postgresql/postgresql)" \
        in proc.stdout


def test_a_wrapper_with_another_config_is_checked_against_that_file(tree: Tree) -> None:
    other = tree.write("srv/q/other.toml", VALID)
    tree.wrapper(PRE, "pre", str(other))
    proc = tree.check()  # the skeleton at the default path is not used, so not a problem
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert f"quiesce.toml {other} (used by the pre-script): ok" in proc.stdout
    assert str(tree / TOML) not in proc.stdout.replace(f"--config {tree / TOML}", "")
    # The post wrapper still names the default file: harmless ('post' reads no config).
    assert f"note: the post-script names --config {tree / TOML} but the pre-script {other}" \
        in proc.stdout

    tree.write("srv/q/other.toml", VALID + 'mode = "fast"\n')
    proc = tree.check()
    assert proc.returncode == 2
    assert problems(proc) == [
        f"problem IncorrectQuiesceConfigFile: {other}: postgresql[1].mode: 'fast' is not one "
        "of 'backup', 'checkpoint'"]


def test_a_config_given_in_the_azure_params_wins(tree: Tree) -> None:
    other = tree.write("srv/q/params.toml", VALID)
    tree.azure(preScriptParams=["--config", str(other)])
    proc = tree.check()
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert f"quiesce.toml {other} (used by the pre-script): ok" in proc.stdout


def test_a_bad_quiesce_toml_is_reported_whole_with_key_paths(tree: Tree) -> None:
    passfile = tree.write("etc/quiesce/pgpass", "*:*:*:quiesce:secret\n", 0o640)
    toml = tree.write(TOML, (
        "max_hold_secs = 30\n"
        "[[postgresql]]\n"
        'conninfo = "host=/var/run/postgresql password=hunter2"\n'
        f'passfile = "{passfile}"\n'
        "[[mysql]]\n"
        'port = "3306"\n'), 0o644)
    os.chown(toml, 65534, 0)
    proc = tree.check()
    assert proc.returncode == 2
    found = "\n".join(problems(proc))
    head = f"problem IncorrectQuiesceConfigFile: {toml}"
    for expected in (
        f"{head}: is owned by uid 65534",
        f"{head}: mode 0644",
        f"{head}: max_hold_secs: unknown key",
        f"{head}: postgresql[1].conninfo: contains a password",
        f"{head}: postgresql[1].passfile: {passfile}: mode 0640",
        f"{head}: mysql[1].port: expected an integer, found the string '3306'",
    ):
        assert expected in found, (expected, proc.stdout)
    assert "fix: did you mean 'max_hold_seconds'?" in proc.stdout
    assert "fix: write 3306 without quotes" in proc.stdout
    # The Azure side is fine, and says so.
    assert "config: ok" in proc.stdout and f"pre-script {tree / PRE}: ok" in proc.stdout


def test_scripts_that_are_not_quiesce_wrappers_are_left_alone(tree: Tree) -> None:
    pre = tree.write("etc/azure/pre.sh", "#!/bin/sh\n# not quiesce pre\necho pre\n", 0o700)
    post = tree.write("etc/azure/post.sh", "#!/bin/sh\necho post\n", 0o700)
    tree.azure(preScriptLocation=str(pre), postScriptLocation=str(post),
               preScriptParams=["", ""])
    proc = tree.check()  # the skeleton quiesce.toml is still there, unused
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "quiesce.toml" not in proc.stdout and "IncorrectQuiesce" not in proc.stdout


def test_the_pre_script_running_quiesce_post_is_a_problem(tree: Tree) -> None:
    tree.write(TOML, VALID)
    tree.azure(preScriptLocation=str(tree / POST), postScriptLocation=str(tree / PRE))
    proc = tree.check()
    assert proc.returncode == 2
    assert problems(proc) == [
        f"problem Pre-ScriptExecutionFailed (300): {tree / POST}:{exec_line(tree / POST)}: "
        "the pre-script runs 'quiesce post'",
        f"problem Post-ScriptExecutionFailed (301): {tree / PRE}:{exec_line(tree / PRE)}: the "
        "post-script runs 'quiesce pre'"]


def test_azures_sample_params_would_make_pre_refuse_to_run(tree: Tree) -> None:
    tree.write(TOML, VALID)
    tree.azure(preScriptParams=["", ""])
    proc = tree.check()
    assert proc.returncode == 2
    [problem] = problems(proc)
    assert problem.startswith(f"problem Pre-ScriptExecutionFailed (300): {tree / PRE}:"
                              f"{exec_line(tree / PRE)}: 'quiesce pre' would refuse its "
                              "arguments")
    assert "preScriptParams holds empty strings" in problem
    # The pre-script is a wrapper, just with bad arguments: no "not a wrapper" note for post.
    assert "does not run 'quiesce pre'" not in proc.stdout
    assert f'fix: set "preScriptParams": [] in {tree / AZURE}' in proc.stdout


def test_wrapper_arguments_that_pre_refuses(tree: Tree) -> None:
    tree.write(TOML, VALID)
    tree.wrapper(PRE, "pre", "etc/quiesce/quiesce.toml")  # relative
    proc = tree.check()
    assert proc.returncode == 2
    [problem] = problems(proc)
    assert "--config 'etc/quiesce/quiesce.toml' is a relative path" in problem

    tree.wrapper(PRE, "pre", str(tree / TOML), "--verbose")
    [problem] = problems(tree.check())
    assert "would refuse its arguments: unrecognized arguments: --verbose" in problem


def test_the_wrappers_plugins_selection_is_applied(tree: Tree) -> None:
    tree.write(TOML, VALID)
    tree.wrapper(PRE, "pre", str(tree / TOML), "--plugins", "mysql")
    proc = tree.check()
    assert proc.returncode == 2
    assert problems(proc) == [
        f"problem IncorrectQuiesceConfigFile: {tree / TOML}: --plugins: selects 'mysql' but "
        "the file has no [[mysql]] section"]


def test_an_invalid_azure_config_does_not_hide_the_toml_problems(tree: Tree) -> None:
    tree.azure(timeoutInSecond=30)
    proc = tree.check()
    assert proc.returncode == 2
    found = problems(proc)
    assert any(p.startswith("problem IncorrectJSONConfigFile (305): timeoutInSecond: unknown")
               for p in found), proc.stdout
    assert "has no database instance section" in proc.stdout, proc.stdout


def test_an_azure_timeout_that_cannot_fit_pre_fails_the_check(tree: Tree) -> None:
    """Issue 7 item 4: pre_timeout_seconds + the poll margin must fit in timeoutInSeconds."""
    tree.write(TOML, "pre_timeout_seconds = 45\n" + VALID)
    tree.azure(timeoutInSeconds=30, ScriptsExecutionPollTimeSeconds=None)
    proc = tree.check()
    assert proc.returncode == 2, proc.stdout
    assert problems(proc) == [
        f"problem IncorrectJSONConfigFile (305): {tree / AZURE}: timeoutInSeconds 30 cannot "
        f"fit 'quiesce pre': pre_timeout_seconds 45 (from {tree / TOML}) + 6 s for Azure to "
        "see it finish (the longest poll period, 5 s, since ScriptsExecutionPollTimeSeconds "
        "is not set, + 1 s start-up) = 51 s"]
    assert (f"  fix: raise timeoutInSeconds in {tree / AZURE} to at least 51 or lower "
            f"pre_timeout_seconds in {tree / TOML} to at most 24\n") in proc.stdout
    tree.azure(timeoutInSeconds=51)
    proc = tree.check()
    assert proc.returncode == 0, proc.stdout
    tree.azure(timeoutInSeconds=47, ScriptsExecutionPollTimeSeconds=1)  # 45 + 1 + 1
    proc = tree.check()
    assert proc.returncode == 0, proc.stdout
    tree.azure(timeoutInSeconds=46)
    [problem] = problems(tree.check())
    assert "(ScriptsExecutionPollTimeSeconds 1, + 1 s start-up) = 47 s" in problem


def test_a_pre_wrapper_without_azure_config_is_warned_about(tree: Tree) -> None:
    """The wrappers of an older install: 'quiesce pre' has no run-time deadline."""
    tree.write(TOML, VALID)
    tree.wrapper(PRE, "pre", str(tree / TOML), azure_config=None)
    proc = tree.check()
    assert proc.returncode == 0, proc.stdout
    assert (f"note: WARNING: {tree / PRE}:4: the pre-script does not pass --azure-config, so "
            "'quiesce pre' has no run-time deadline from timeoutInSeconds") in proc.stdout
    assert "rerun 'quiesce install azure --force'" in proc.stdout

    # The current form says nothing of the kind.
    tree.wrapper(PRE, "pre", str(tree / TOML))
    proc = tree.check()
    assert proc.returncode == 0 and "--azure-config" not in proc.stdout, proc.stdout


def test_a_pre_wrapper_naming_another_azure_config_is_a_problem(tree: Tree) -> None:
    tree.write(TOML, VALID)
    other = tree.write("etc/azure/other.json", (tree / AZURE).read_text())
    tree.wrapper(PRE, "pre", str(tree / TOML), azure_config=str(other))
    proc = tree.check()
    assert proc.returncode == 2
    [problem] = problems(proc)
    assert problem == (
        f"problem Pre-ScriptExecutionFailed (300): {tree / PRE}:5: the pre-script passes "
        f"--azure-config {other}, but the Azure config is {tree / AZURE}: 'quiesce pre' would "
        "take its deadline from another file's timeoutInSeconds")


def test_a_group_writable_pre_wrapper_gets_only_its_permission_problem(tree: Tree) -> None:
    """Issue 7 item 5: the wrapper was never read, so check cannot say what it runs."""
    tree.write(TOML, VALID)
    os.chmod(tree / PRE, 0o770)
    proc = tree.check()
    assert proc.returncode == 2
    assert problems(proc) == [
        f"problem InsufficientPermissionforPre-Script (306): {tree / PRE}: mode 0770 gives "
        "permissions to group/other"], proc.stdout
    assert "does not run 'quiesce pre'" not in proc.stdout


def test_a_rejected_config_lists_nothing_to_freeze(tree: Tree) -> None:
    """Issue 7 item 5: neither a rejected config nor fsFreezeEnabled false freezes '/'."""
    tree.write(TOML, VALID)
    tree.azure(fsFreezeEnabled=False)
    os.chmod(tree / AZURE, 0o644)
    proc = tree.check()
    assert proc.returncode == 2
    assert "would freeze" not in proc.stdout, proc.stdout
    assert "  freeze: nothing (the config was rejected; see the problems below)" in proc.stdout
    os.chmod(tree / AZURE, 0o600)
    proc = tree.check()
    assert proc.returncode == 0, proc.stdout
    assert "  freeze: off (fsFreezeEnabled is false)" in proc.stdout
    assert "would freeze" not in proc.stdout


def test_check_says_whether_the_helpers_get_their_own_scope(tree: Tree) -> None:
    from quiesce.scope import in_own_scope

    decision = in_own_scope(["true"], "quiesce-check-0.scope")
    proc = tree.check()
    if decision.wrapped:
        assert "\n  helpers' cgroup: systemd is PID 1: holder, guardian and freeze watchdog " \
            "each start in a transient scope of their own" in proc.stdout
    else:
        assert (f"\n  helpers' cgroup: {decision.reason}: holder, guardian and freeze watchdog "
                "stay in the caller's cgroup") in proc.stdout, proc.stdout


def test_a_wrapper_whose_program_is_gone_or_replaceable(tree: Tree) -> None:
    tree.write(TOML, VALID)
    pre = (tree / PRE).read_text()
    program = quiesce_command()[0]
    gone = str(tree.prefix.parent / "old-venv" / "bin" / "quiesce")
    tree.write(PRE, pre.replace(program, gone), 0o700)
    proc = tree.check()
    assert proc.returncode == 2
    assert problems(proc) == [
        f"problem Pre-ScriptExecutionFailed (300): {tree / PRE}:{exec_line(tree / PRE)}: {gone} "
        "does not exist or is not executable, so 'quiesce pre' cannot start (was quiesce "
        "moved or uninstalled?)"]

    # A launcher in a directory anyone can write: whoever writes there gets root at backup.
    open_dir = tree.prefix.parent / "open" / "bin"
    open_dir.mkdir(parents=True)
    launcher = open_dir / "quiesce"
    launcher.write_text(f"#!{sys.executable}\nimport sys\nfrom quiesce.cli import main\n"
                        "sys.exit(main())\n")
    launcher.chmod(0o755)
    open_dir.chmod(0o777)
    tree.write(PRE, pre.replace(program, str(launcher)), 0o700)
    [problem] = problems(tree.check())
    assert problem.startswith(
        f"problem InsufficientPermissionforPre-Script (306): {tree / PRE}:"
        f"{exec_line(tree / PRE)}: the wrapper runs "
        f"{launcher} as root, but users other than root can replace it: {open_dir} is "
        "writable by group/other (mode 0777)"), problem
    open_dir.chmod(0o1777)  # sticky, like /tmp: still anyone can re-create the launcher
    [problem] = problems(tree.check())
    assert (f"{open_dir} is writable by group/other (mode 1777, sticky, but anyone can create "
            "names in it)") in problem, problem

    tree.write(PRE, pre.replace(program, "quiesce"), 0o700)
    [problem] = problems(tree.check())
    assert "runs 'quiesce' by name; the backup agent's PATH decides what that is" in problem


def test_a_missing_or_fifo_quiesce_toml_is_reported_without_hanging(tree: Tree) -> None:
    missing = tree.prefix / "etc/quiesce/missing.toml"
    tree.wrapper(PRE, "pre", str(missing))
    proc = tree.check()
    assert proc.returncode == 2
    assert problems(proc) == [
        f"problem IncorrectQuiesceConfigFile: {missing}: no such file"], proc.stdout

    fifo = tree.prefix / "etc/quiesce/fifo.toml"
    os.mkfifo(fifo, 0o600)
    tree.wrapper(PRE, "pre", str(fifo))
    proc = tree.check()  # subprocess timeout 120 s: a blocking open would fail the test
    assert proc.returncode == 2
    [problem] = problems(proc)
    assert problem == (f"problem IncorrectQuiesceConfigFile: {fifo}: is a named pipe (FIFO), "
                       "not a regular file"), problem


def test_a_post_wrapper_without_a_pre_wrapper_is_noted(tree: Tree) -> None:
    pre = tree.write("etc/azure/pre.sh", "#!/bin/sh\necho my own pre\n", 0o700)
    tree.azure(preScriptLocation=str(pre))
    proc = tree.check()
    assert proc.returncode == 0, proc.stdout
    assert (f"note: {tree / POST} runs 'quiesce post' but the pre-script does not run "
            "'quiesce pre'") in proc.stdout
    assert "quiesce.toml" not in proc.stdout
