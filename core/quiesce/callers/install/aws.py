"""``quiesce install aws``: quiesce as the pre/post scripts of Amazon Data Lifecycle Manager.

A DLM snapshot policy with pre and post scripts runs an SSM command document on the instance
(through the SSM agent, as root) with its ``command`` parameter set to ``pre-script`` before
the snapshot, ``post-script`` after it (and ``dry-run`` to test the document). The policy's
script settings hold the rest, none of it visible from the guest: ``ExecutionTimeout`` (per
script, 10..120 s), ``MaximumRetryCount`` (0..3) and ``ExecuteOperationOnScriptFailure``
(true: a failed pre-script falls back to a crash-consistent snapshot; false: the instance is
skipped).

Writes the hook ``/etc/quiesce/aws/quiesce-dlm-hook`` (0700) and the SSM document
``/etc/quiesce/aws/quiesce-dlm-document.yaml`` that runs it with ``{{ command }}`` (YAML
written here from a template: no YAML library), and prints the policy fields to set. Since
the timeout lives in the policy, ``install --deadline`` chooses pre's deadline (default
:data:`DEFAULT_DEADLINE`) and the printed ``ExecutionTimeout`` is sized from it.
"""

from __future__ import annotations

import json
import math
from typing import TYPE_CHECKING

from quiesce.callers.install import base
from quiesce.callers.install.base import Context, Plan, PlannedFile
from quiesce.errors import QuiesceError

if TYPE_CHECKING:
    from quiesce.callers.install.checking import AgentCheck

NAME = "aws"
TITLE = "Amazon Data Lifecycle Manager"
HOOK = "/etc/quiesce/aws/quiesce-dlm-hook"
DOCUMENT = "/etc/quiesce/aws/quiesce-dlm-document.yaml"
DLM_MAX_TIMEOUT = 120
DLM_MIN_TIMEOUT = 10
MARGIN = 10.0
DEFAULT_DEADLINE = 50.0
COMMANDS = ("pre-script", "post-script", "dry-run")


def execution_timeout(deadline: float) -> int:
    """The policy's ExecutionTimeout for pre's ``deadline``: the deadline plus :data:`MARGIN`
    for the SSM agent to start the script and see it end."""
    return max(DLM_MIN_TIMEOUT, math.ceil(deadline + MARGIN))


def hook_script(command: list[str], guard: list[str], toml: str, deadline: float) -> bytes:
    name = "quiesce-dlm-hook"
    pre = base.quoted([*command, "pre", "--config", toml, "--deadline", f"{deadline:g}"])
    post = base.quoted([*command, "post", "--config", toml])
    check = base.quoted([*command, "check", "--agent", NAME])
    body = (
        'case "${1:-}" in\n'
        + "pre-script)\n"
        + f"    {pre}\n"
        + base.fail_loudly(name, "quiesce pre", "Data Lifecycle Manager skips this instance "
                           "or, with ExecuteOperationOnScriptFailure, takes a crash-consistent "
                           "snapshot: NOT application-consistent")
        + '    exit "$status"\n'
        + "    ;;\n"
        + "post-script)\n"
        + f"    {post}\n"
        + base.fail_loudly(name, "quiesce post", "the snapshot may NOT be "
                           "application-consistent (see the lines above and the run record)")
        + '    exit "$status"\n'
        + "    ;;\n"
        + "dry-run)\n"
        + f"    exec {check}\n"
        + "    ;;\n"
        + "*)\n"
        + f'    echo "{name}: unknown command \'${{1:-}}\' (Data Lifecycle Manager passes '
        + "pre-script, post-script or dry-run)\" >&2\n"
        + "    exit 2\n"
        + "    ;;\n"
        + "esac\n")
    about = ["The SSM document quiesce-dlm-document.yaml runs it with its 'command' parameter.",
             f"'quiesce pre' must hold everything within {deadline:g} s or nothing "
             f"(ExecutionTimeout {execution_timeout(deadline)})."]
    return base.hook_text(agent=NAME, name=name, title="Data Lifecycle Manager script",
                          about=about, guard=guard, body=body)


def _yaml_str(text: str) -> str:
    """A YAML double-quoted scalar (JSON's string syntax is valid YAML)."""
    return json.dumps(text)


def ssm_document(hook: str, timeout: int) -> bytes:
    """The SSM command document DLM calls: one aws:runShellScript step running the hook with
    the ``command`` parameter, which may only be one of :data:`COMMANDS`."""
    allowed = "\n".join(f"      - {_yaml_str(c)}" for c in COMMANDS)
    text = f"""\
# SSM command document for Amazon Data Lifecycle Manager pre/post scripts,
# written by 'quiesce install aws'. Create it in SSM (document type Command,
# format YAML) and name it as the policy's ExecutionHandler.
schemaVersion: "2.2"
description: {_yaml_str("quiesce: hold the databases for an application-consistent "
                        "EBS snapshot (pre-script), release them (post-script).")}
parameters:
  command:
    type: String
    description: {_yaml_str("pre-script, post-script or dry-run, as Data Lifecycle "
                            "Manager passes it.")}
    allowedValues:
{allowed}
mainSteps:
  - action: aws:runShellScript
    name: quiesce
    precondition:
      StringEquals:
        - platformType
        - Linux
    inputs:
      timeoutSeconds: {_yaml_str(str(timeout))}
      runCommand:
        - {_yaml_str(f"{base.quoted([hook])} {{{{ command }}}}")}
"""
    return text.encode()


def make_plan(ctx: Context) -> Plan:
    deadline = ctx.deadline if ctx.deadline is not None else DEFAULT_DEADLINE
    if deadline + MARGIN > DLM_MAX_TIMEOUT:
        raise QuiesceError(
            f"--deadline {deadline:g} does not fit Data Lifecycle Manager's longest "
            f"ExecutionTimeout ({DLM_MAX_TIMEOUT} s) with {MARGIN:g} s to spare",
            hint=f"use --deadline {DLM_MAX_TIMEOUT - MARGIN:g} or less")
    timeout = execution_timeout(deadline)
    toml = base.skeleton_file(ctx)
    hook = PlannedFile(base.join(ctx.prefix, HOOK),
                       hook_script(ctx.command, ctx.guard, toml.tree_path, deadline), 0o700,
                       inner=HOOK)
    document = PlannedFile(base.join(ctx.prefix, DOCUMENT), ssm_document(HOOK, timeout), 0o644,
                           inner=DOCUMENT)
    files = [hook, document, toml]
    base.classify_all(files, ctx.force)
    notes = [
        f"create the SSM document from {DOCUMENT} (aws ssm create-document --document-type "
        "Command --document-format YAML --name quiesce-dlm --content file://...)",
        "in the DLM policy's Scripts, set: Stages [PRE, POST]; ExecutionHandlerService "
        "AWS_SYSTEMS_MANAGER; ExecutionHandler quiesce-dlm (the document's name or ARN); "
        f"ExecutionTimeout {timeout}; MaximumRetryCount 0 (a retried pre-script finds its own "
        "hold: exit 3); ExecuteOperationOnScriptFailure false to skip the instance when pre "
        "fails, or true to take a crash-consistent snapshot then (quiesce records it as not "
        "consistent either way)",
        f"pre's deadline is {deadline:g} s ('install --deadline' sets it; DLM's timeout is in "
        "the policy, invisible from here: 'quiesce check --agent aws' shows both)",
        f"describe your databases in {toml.tree_path}, then run 'quiesce check --agent aws'",
    ]
    return Plan(NAME, ctx.prefix, files, dir_modes={"etc/quiesce/aws": 0o700}, notes=notes,
                deadline=deadline)


def document_timeout(path: str) -> int | None:
    """timeoutSeconds of the SSM document's step, None when it cannot be read."""
    import re

    try:
        with open(path, encoding="utf-8") as handle:
            text = handle.read(256 * 1024)
    except (OSError, UnicodeDecodeError):
        return None
    match = re.search(r"^\s*timeoutSeconds:\s*[\"']?(\d+)", text, re.MULTILINE)
    return int(match.group(1)) if match else None


def check(prefix: str = "/") -> AgentCheck:
    """``quiesce check --agent aws``: the hook and the SSM document; the policy's
    ExecutionTimeout is invisible from the guest, so the check says what it must be."""
    from quiesce.callers.install import checking

    report = checking.AgentCheck(NAME, prefix)
    checking.standard(report, HOOK)
    doc_timeout = document_timeout(base.join(prefix, DOCUMENT))
    if doc_timeout is None:
        report.problem(checking.HOOK_CODE, f"{DOCUMENT} is missing or has no timeoutSeconds",
                       checking.reinstall(NAME))
    deadline = checking.effective_deadline(report)
    if deadline is not None:
        wanted = execution_timeout(deadline)
        if doc_timeout is not None and doc_timeout < wanted:
            report.problem(checking.DEADLINE_CODE,
                           f"{DOCUMENT}: timeoutSeconds {doc_timeout} is shorter than pre's "
                           f"deadline {deadline:g} s + {MARGIN:g} s", checking.reinstall(NAME))
        report.checked.append(("deadline", f"pre's deadline {deadline:g} s; the DLM policy's "
                               f"ExecutionTimeout must be at least {wanted} (it lives in the "
                               "policy: not visible from here)"))
    return report
