"""The pieces of ``install``/``check`` for qemu-ga, VMware, Compute Engine and DLM that need
no root: reading the agents' own settings, the SSM document, finding the quiesce calls in a
hook, and the manifest's actions. The whole commands run in
tests/integration/test_install_agents.py; the hooks, driven by each agent's convention, in
test_agent_hooks.py and test_qemu_ga.py."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from quiesce.callers.install import AGENTS, adapter, aws, base, gce, qemu_ga, vmware
from quiesce.callers.install.checking import hook_calls
from quiesce.errors import QuiesceError


def test_every_agent_has_an_adapter_with_plan_and_check() -> None:
    for agent in AGENTS:
        module = adapter(agent)
        assert callable(module.make_plan)
        if agent != "azure":
            assert callable(module.check)
    with pytest.raises(QuiesceError, match="unknown snapshot agent 'hyperv'"):
        adapter("hyperv")


def test_qemu_ga_hook_setting(tmp_path: Path) -> None:
    conf = tmp_path / "qemu-ga.conf"
    assert qemu_ga.hook_setting(str(conf)) is None  # missing
    conf.write_text("[general]\nverbose=1\n")
    assert qemu_ga.hook_setting(str(conf)) is None
    conf.write_text("[general]\nfsfreeze-hook=\n")
    assert qemu_ga.hook_setting(str(conf)) == qemu_ga.DEFAULT_HOOK  # like a bare -F
    conf.write_text("[general]\nfsfreeze-hook = /etc/qemu/quiesce-fsfreeze-hook\n")
    assert qemu_ga.hook_setting(str(conf)) == "/etc/qemu/quiesce-fsfreeze-hook"


def test_vmware_settings_and_timeout(tmp_path: Path) -> None:
    conf = tmp_path / "tools.conf"
    assert vmware.vmbackup_settings(str(conf)) is None
    assert vmware.plugin_timeout(None) == 900
    conf.write_text("[vmbackup]\nexecScripts = False\ntimeout = 0\n")
    settings = vmware.vmbackup_settings(str(conf))
    assert settings is not None and vmware.is_false(settings.get("execscripts"))
    assert vmware.plugin_timeout(settings) is None  # 0: no timeout
    assert vmware.plugin_timeout({"timeout": "120"}) == 120
    assert not vmware.is_false(None)


def test_gce_settings(tmp_path: Path) -> None:
    conf = tmp_path / "instance_configs.cfg"
    conf.write_text("[Snapshots]\nenabled = true\ntimeout_in_seconds = 45\n")
    settings = gce.snapshot_settings(str(conf))
    assert gce.enabled(settings) and gce.agent_timeout(settings) == 45
    assert not gce.enabled({}) and gce.agent_timeout({}) == 60


def test_ssm_document_is_the_yaml_dlm_expects() -> None:
    text = aws.ssm_document("/etc/quiesce/aws/quiesce-dlm-hook", 60).decode()
    assert text.count('schemaVersion: "2.2"') == 1
    assert re.findall(r'^      - "(.+)"$', text, re.MULTILINE) == list(aws.COMMANDS)
    assert 'timeoutSeconds: "60"' in text
    [line] = re.findall(r"runCommand:\n\s+- (.+)$", text, re.MULTILINE)
    assert json.loads(line) == "/etc/quiesce/aws/quiesce-dlm-hook {{ command }}"
    odd = aws.ssm_document("/etc/it's here/hook", 60).decode()
    [line] = re.findall(r"runCommand:\n\s+- (.+)$", odd, re.MULTILINE)
    assert json.loads(line) == "'/etc/it'\"'\"'s here/hook' {{ command }}"
    assert aws.execution_timeout(50) == 60 and aws.execution_timeout(0.5) == 11


def test_hook_calls_finds_every_quiesce_call() -> None:
    text = qemu_ga.hook_script("hook.d", ["/opt/quiesce/bin/quiesce"], [], "/etc/q.toml",
                               12).decode()
    calls = [(command, argv) for _, command, _, argv in hook_calls(text)]
    assert calls == [("pre", ["--config", "/etc/q.toml", "--deadline", "12"]),
                     ("post", ["--config", "/etc/q.toml"])]
    vm = vmware.hook_script(["/usr/bin/python3", "-m", "quiesce"], [], "/etc/q.toml", 5)
    found = hook_calls(vm.decode())
    assert [c[1] for c in found] == ["pre", "post", "post"]
    assert found[0][2] == ("/usr/bin/python3", "-m", "quiesce")
    assert "--caller-failed" in found[2][3]


def test_fail_loudly_keeps_the_status_and_says_the_consequence() -> None:
    text = base.fail_loudly("quiesce-x", "quiesce pre", "it's NOT consistent")
    assert text.startswith("    status=$?\n")
    assert "quiesce-x: FAILED: quiesce pre exited " in text and "it'\"'\"'s NOT" in text


def _plan(tmp_path: Path, action: str) -> base.Plan:
    planned = base.PlannedFile(str(tmp_path / "etc/hook"), b"new", 0o700, action=action,
                               inner="/etc/hook")
    return base.Plan("vmware", str(tmp_path), [planned])


def test_manifest_keeps_create_for_a_file_an_earlier_install_made(tmp_path: Path) -> None:
    digest = base.hashlib.sha256(b"new").hexdigest()
    assert base.manifest_document(_plan(tmp_path, base.UNCHANGED))["files"][0]["action"] \
        == "same"
    manifest = tmp_path / base.MANIFEST_DIR / "vmware.json"
    manifest.parent.mkdir(parents=True)
    manifest.write_text(json.dumps({"files": [{"path": "/etc/hook", "sha256": digest,
                                               "action": "create"}]}))
    document = base.manifest_document(_plan(tmp_path, base.UNCHANGED))
    assert document["files"] == [{"path": "/etc/hook", "sha256": digest, "mode": "0700",
                                  "action": "create"}]
    assert document["version"] == 1 and document["prefix"] == str(tmp_path)
    kept = base.manifest_document(_plan(tmp_path, base.KEEP))
    assert kept["files"] == []  # not what quiesce wrote
