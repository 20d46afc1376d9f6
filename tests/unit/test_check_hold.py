"""quiesce check's view of the Azure scripts: which are quiesce wrappers, which quiesce.toml
they make 'quiesce pre' load, and how a skeleton without instance sections is reported.

Permissions need root-owned files: tests/integration/test_check_hold.py runs the whole
command. Here the documents live in tmp_path (``check_permissions=False``).
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest

from quiesce.callers.azure_install import (
    GUARD_EXIT,
    azure_timeout,
    guard_paths,
    toml_skeleton,
    wrapper_script,
)
from quiesce.callers.check_hold import (
    WrapperArgumentError,
    WrapperCall,
    find_wrapper_call,
    parse_call,
    timeout_problem,
    toml_problems,
)
from quiesce.security import replaceable_components

EXAMPLE = Path(__file__).resolve().parent.parent / "example_plugin"
QUIESCE = "/opt/quiesce/bin/quiesce"


@pytest.fixture(autouse=True)
def example_plugin(monkeypatch: pytest.MonkeyPatch) -> None:
    """The example 'flock' engine, visible through its entry point like an installed one."""
    monkeypatch.syspath_prepend(str(EXAMPLE))


def wrapper(phase: str, toml: str = "/etc/quiesce/quiesce.toml",
            command: list[str] | None = None) -> str:
    return wrapper_script(phase, toml, command or [QUIESCE]).decode()


# --- recognising wrappers ---------------------------------------------------------------------


@pytest.mark.parametrize("phase", ["pre", "post"])
def test_the_installed_wrapper_is_recognised(phase: str) -> None:
    call = find_wrapper_call(wrapper(phase, "/srv/q.toml"), "/etc/azure/w.sh", [])
    assert call == WrapperCall("/etc/azure/w.sh", 4, phase, ("--config", "/srv/q.toml"),
                               program=(QUIESCE,))


def test_python_dash_m_quiesce_and_quoted_paths_are_recognised() -> None:
    text = wrapper("pre", "/etc/odd dir/q.toml", ["/opt/my venv/bin/python3.11", "-m", "quiesce"])
    call = find_wrapper_call(text, "/w", [])
    assert call is not None
    assert (call.command, call.argv) == ("pre", ("--config", "/etc/odd dir/q.toml"))
    assert call.program == ("/opt/my venv/bin/python3.11", "-m", "quiesce")
    # Interpreter flags before -m are skipped, as python itself does.
    text = f'#!/bin/sh\nexec {sys.executable} -B -I -m quiesce pre "$@"\n'
    assert find_wrapper_call(text, "/w", ["--config", "/x.toml"]).argv == ("--config", "/x.toml")


def test_the_azure_params_replace_dollar_at() -> None:
    call = find_wrapper_call(wrapper("pre"), "/w", ["--config", "/srv/other.toml"])
    assert call.argv == ("--config", "/etc/quiesce/quiesce.toml", "--config",
                         "/srv/other.toml")
    assert parse_call(call).config == "/srv/other.toml"  # argparse: the last one wins


def test_empty_params_are_arguments_quiesce_refuses() -> None:
    """Azure's published sample has "preScriptParams": ["", ""]: through "$@" they reach
    'quiesce pre' as two empty arguments, which it refuses."""
    call = find_wrapper_call(wrapper("pre"), "/w", ["", ""])
    assert call.argv == ("--config", "/etc/quiesce/quiesce.toml", "", "")
    with pytest.raises(WrapperArgumentError, match="unrecognized arguments"):
        parse_call(call)


def test_continuation_lines_and_no_exec() -> None:
    text = f"#!/bin/sh\nset -e\n{QUIESCE} pre \\\n  --config=/srv/q.toml --plugins mysql\n"
    call = find_wrapper_call(text, "/w", [])
    assert call.line == 3
    args = parse_call(call)
    assert (args.config, args.plugins) == ("/srv/q.toml", "mysql")


@pytest.mark.parametrize("text", [
    "#!/bin/sh\n# calls quiesce pre --config /x.toml\nexit 0\n",  # a comment
    "#!/bin/sh\necho quiesce pre\n",  # a word, not the program
    f"#!/bin/sh\nexec {QUIESCE} run --config /etc/azure/c.json\n",  # another subcommand
    f"#!/bin/sh\nexec {QUIESCE}\n",  # no subcommand
    "#!/bin/sh\nexec /usr/bin/python3 -m other pre\n",  # another module
    "#!/bin/sh\nexec /usr/local/bin/not-quiesce pre\n",
    "#!/bin/sh\npsql -c 'CHECKPOINT'\n",
    "#!/bin/sh\necho 'unbalanced\n",
    "",
])
def test_other_scripts_are_not_wrappers(text: str) -> None:
    assert find_wrapper_call(text, "/w", ["--config", "/x"]) is None


def test_shell_expansion_is_flagged_not_guessed() -> None:
    text = f'#!/bin/sh\nexec {QUIESCE} pre --config "$QUIESCE_CONF" "$@"\n'
    call = find_wrapper_call(text, "/w", ["--json"])
    assert call.expanded and call.argv == ("--config", "$QUIESCE_CONF", "--json")
    # The Azure params are passed verbatim by "$@": a '$' in them is no expansion.
    assert not find_wrapper_call(wrapper("pre"), "/w", ["$HOME"]).expanded


# --- the arguments, parsed by the commands' own parsers ---------------------------------------


def test_defaults_come_from_the_command_itself() -> None:
    args = parse_call(WrapperCall("/w", 1, "pre", ()))
    assert args.config == "/etc/quiesce/quiesce.toml" and args.plugins is None
    assert parse_call(WrapperCall("/w", 1, "post", ("--json",))).json is True


@pytest.mark.parametrize(("command", "argv", "message"), [
    ("pre", ("--bogus",), "unrecognized arguments: --bogus"),
    ("pre", ("--config",), "expected one argument"),
    ("post", ("--plugins", "mysql"), "unrecognized arguments: --plugins mysql"),
    ("pre", ("-h",), "unrecognized arguments: -h"),  # would print help and hold nothing
])
def test_arguments_the_command_refuses(command: str, argv: tuple[str, ...],
                                       message: str) -> None:
    with pytest.raises(WrapperArgumentError, match=message):
        parse_call(WrapperCall("/w", 1, command, argv))


# --- quiesce.toml as 'pre' would load it ------------------------------------------------------


def problems(path: Path, plugins: list[str] | None = None) -> list[str]:
    found, settings = toml_problems(str(path), plugins, check_permissions=False)
    assert (settings is None) == bool(found)
    return [str(p) for p in found]


def test_the_skeleton_is_one_problem_that_says_to_add_a_section(tmp_path: Path) -> None:
    from quiesce.plugins import Plugins

    manager = Plugins()
    manager.load_entry_points(only=["postgresql", "flock"])
    engines = [manager.engines.get("postgresql"), manager.engines.get("flock")]
    path = tmp_path / "quiesce.toml"
    path.write_bytes(toml_skeleton(engines, 300))
    [problem] = problems(path)
    assert problem.startswith(f"{path}: has no database instance section, so 'quiesce pre' "
                              "would fail at the first backup")
    assert "uncomment and fill in the example section ([[postgresql]], [[flock]])" in problem


def test_a_selection_without_sections_names_the_selection(tmp_path: Path) -> None:
    path = tmp_path / "quiesce.toml"
    path.write_text('plugins = ["postgresql", "mysql"]\nmax_hold_seconds = 10\n')
    [problem] = problems(path)
    assert "has no database instance section" in problem
    assert "add a section ([[postgresql]], [[mysql]])" in problem
    # --plugins on the wrapper wins over the file, as in 'quiesce pre'.
    [problem] = problems(path, ["flock"])
    assert "add a section ([[flock]])" in problem


def test_other_problems_of_a_skeleton_are_kept(tmp_path: Path) -> None:
    path = tmp_path / "quiesce.toml"
    path.write_text('max_hold_seconds = "300"\nmax_hold = 3\n')
    found = problems(path)
    assert found[0].startswith(f"{path}: has no database instance section")
    assert "max_hold_seconds: expected an integer or a number, found the string '300' " \
        "(write 300 without quotes)" in found
    assert any(p.startswith("max_hold: unknown key") for p in found)
    assert len(found) == 3


def test_a_partly_filled_file_keeps_the_precise_problems(tmp_path: Path) -> None:
    path = tmp_path / "quiesce.toml"
    path.write_text('plugins = ["flock", "postgresql"]\n[[flock]]\npath = "/a"\nsticky = 1\n')
    found = problems(path)
    assert not any("has no database instance section" in p for p in found)
    assert any(p.startswith("plugins: selects 'postgresql' but the file has no "
                            "[[postgresql]] section") for p in found)
    assert any(p.startswith("flock[1].sticky: expected a boolean") for p in found)


def test_a_valid_file_gives_its_settings(tmp_path: Path) -> None:
    path = tmp_path / "quiesce.toml"
    path.write_text('[[postgresql]]\nconninfo = "host=/var/run/postgresql dbname=postgres"\n')
    found, settings = toml_problems(str(path), check_permissions=False)
    assert found == []
    assert [(i.engine, i.name) for i in settings.instances] == [("postgresql", "postgresql")]


def test_unparseable_toml_is_reported_as_such(tmp_path: Path) -> None:
    path = tmp_path / "quiesce.toml"
    path.write_text("[[postgresql]\n")
    [problem] = problems(path)
    assert "is not valid TOML" in problem


# --- the current wrappers: run-time deadline and their own re-check (issue 7) -------------------


AZURE_JSON = "/etc/azure/VMSnapshotScriptPluginConfig.json"


def current_wrapper(phase: str, command: list[str], guard: list[str]) -> str:
    return wrapper_script(phase, "/etc/quiesce/quiesce.toml", command,
                          azure_config_path=AZURE_JSON if phase == "pre" else None,
                          guard=guard).decode()


def test_the_current_pre_wrapper_passes_the_azure_config() -> None:
    text = current_wrapper("pre", [QUIESCE], ["/", "/opt"])
    call = find_wrapper_call(text, "/w", [])
    assert call is not None and call.program == (QUIESCE,)
    assert call.argv == ("--config", "/etc/quiesce/quiesce.toml", "--azure-config", AZURE_JSON)
    assert text.splitlines()[call.line - 1].startswith(f"exec {QUIESCE} pre ")
    post = find_wrapper_call(current_wrapper("post", [QUIESCE], ["/"]), "/w", [])
    assert post.argv == ("--config", "/etc/quiesce/quiesce.toml")


def run_wrapper(tmp_path: Path, guard: list[str]) -> subprocess.CompletedProcess[str]:
    """The post wrapper with /bin/echo as its 'quiesce', run by sh as the agent would."""
    script = tmp_path / "w.sh"
    script.write_text(current_wrapper("post", ["/bin/echo"], guard))
    return subprocess.run(["/bin/sh", str(script), "--json"], capture_output=True, text=True,
                          timeout=30, check=False)


def test_the_wrapper_execs_when_every_guarded_path_is_root_safe(tmp_path: Path) -> None:
    safe = [p for p in ("/", "/usr", "/usr/bin", "/bin", "/bin/echo")
            if not replaceable_components(p)]
    assert "/" in safe
    proc = run_wrapper(tmp_path, safe)
    assert (proc.returncode, proc.stdout) == (0, "post --config /etc/quiesce/quiesce.toml "
                                                 "--json\n"), proc.stderr


@pytest.mark.parametrize("where", ["/tmp", "missing", "group-writable"])
def test_the_wrapper_refuses_a_replaceable_path(tmp_path: Path, where: str) -> None:
    if where == "/tmp":
        path = "/tmp"  # sticky, world-writable: refused like any writable directory
    elif where == "missing":
        path = str(tmp_path / "gone")
    else:
        target = tmp_path / "venv"
        target.mkdir()
        target.chmod(0o775)
        path = str(target)
    proc = run_wrapper(tmp_path, ["/", path])
    assert proc.returncode == GUARD_EXIT and proc.stdout == ""
    assert proc.stderr.startswith(f"quiesce-post.sh: refusing to run quiesce: {path} could "
                                  "be replaced by a user other than root"), proc.stderr


def test_the_wrapper_refuses_a_path_owned_by_another_user(tmp_path: Path) -> None:
    if os.geteuid() != 0:
        pytest.skip("needs root: chown to another uid")
    target = tmp_path / "venv"
    target.mkdir(mode=0o755)
    target.chmod(0o755)
    os.chown(target, 65534, 65534)
    proc = run_wrapper(tmp_path, [str(target)])
    assert proc.returncode == GUARD_EXIT, proc.stdout + proc.stderr


def test_a_symlink_in_the_guard_is_judged_by_its_directory_only(tmp_path: Path) -> None:
    link = tmp_path / "link"
    link.symlink_to("/usr/bin")
    proc = run_wrapper(tmp_path, ["/", str(link)])  # a symlink's own mode is 0777
    assert proc.returncode == 0, proc.stderr


def test_guard_paths_cover_program_interpreter_and_package() -> None:
    import quiesce

    paths = guard_paths([sys.executable, "-m", "quiesce"])
    assert paths[0] == "/"
    assert os.path.realpath(sys.executable) in paths
    assert os.path.dirname(os.path.abspath(quiesce.__file__)) in paths


# --- timeoutInSeconds against pre's own budget (issue 7 item 4) -----------------------------


def azure(timeout: int, poll: int | None = None) -> SimpleNamespace:
    return SimpleNamespace(timeout_seconds=timeout, poll_seconds=poll)


def test_a_timeout_that_fits_pre_is_no_problem() -> None:
    assert timeout_problem(60, azure(66), "/q.toml", "/a.json") is None  # 60 + 5 + 1
    assert timeout_problem(60, azure(63, poll=2), "/q.toml", "/a.json") is None  # 60 + 2 + 1


def test_a_timeout_too_short_names_both_values_and_what_to_set() -> None:
    error = timeout_problem(60, azure(65), "/q.toml", "/a.json")
    assert (error.code, error.number) == ("IncorrectJSONConfigFile", 305)
    assert error.message == (
        "/a.json: timeoutInSeconds 65 cannot fit 'quiesce pre': pre_timeout_seconds 60 (from "
        "/q.toml) + 6 s for Azure to see it finish (the longest poll period, 5 s, since "
        "ScriptsExecutionPollTimeSeconds is not set, + 1 s start-up) = 66 s")
    assert error.hint == ("raise timeoutInSeconds in /a.json to at least 66 or lower "
                          "pre_timeout_seconds in /q.toml to at most 59")
    error = timeout_problem(30, azure(30, poll=3), "/q.toml", "/a.json")
    assert "(ScriptsExecutionPollTimeSeconds 3, + 1 s start-up) = 34 s" in error.message
    assert error.hint.endswith("to at least 34 or lower pre_timeout_seconds in /q.toml to "
                               "at most 26")


def test_beyond_the_cap_only_pre_timeout_can_change() -> None:
    error = timeout_problem(1800, azure(1800), "/q.toml", "/a.json")
    assert error.hint == "lower pre_timeout_seconds in /q.toml to at most 1794"
    error = timeout_problem(1797, azure(2400), "/q.toml", "/a.json")
    assert "timeoutInSeconds 2400 (capped by the extension at 1800)" in error.message
    assert error.hint == "lower pre_timeout_seconds in /q.toml to at most 1794"


def test_a_timeout_shorter_than_the_margin_cannot_be_fixed_by_pre_alone() -> None:
    error = timeout_problem(1, azure(5), "/q.toml", "/a.json")
    assert error.hint == "raise timeoutInSeconds in /a.json to at least 7"


def test_install_writes_a_timeout_that_fits_pre() -> None:
    from quiesce.settings import DEFAULT_PRE_TIMEOUT, PRE_TIMEOUT_LIMIT

    for max_hold in (1, 60, 300, 1800, 3600):
        for pre_timeout in (1, DEFAULT_PRE_TIMEOUT, 600, PRE_TIMEOUT_LIMIT - 6):
            written = azure_timeout(max_hold, pre_timeout)
            assert timeout_problem(pre_timeout, azure(written), "/q", "/a") is None, \
                (max_hold, pre_timeout, written)
