"""``quiesce install <agent>``: make quiesce the pre/post hook of a snapshot agent.

:mod:`.base` holds what every agent shares (planning, classification, writing, the quiesce.toml
skeleton, the safety checks of the quiesce the hooks run, the manifest); one thin module per
agent says which files that agent needs and checks them: :mod:`.azure` (Azure VM Backup),
:mod:`.qemu_ga` (the QEMU guest agent's fsfreeze hook), :mod:`.vmware` (VMware Tools'
backupScripts.d), :mod:`.gce` (Compute Engine guest-flush scripts), :mod:`.aws` (Data
Lifecycle Manager pre/post scripts through an SSM command document). docs/platforms.md
compares them.
"""

from __future__ import annotations

import importlib
from types import ModuleType

#: Every agent ``quiesce install`` knows, by the name the command takes.
AGENTS = ("azure", "qemu-ga", "vmware", "gce", "aws")


def adapter(agent: str) -> ModuleType:
    """The module of ``agent`` (one of :data:`AGENTS`)."""
    if agent not in AGENTS:
        from quiesce.errors import QuiesceError

        raise QuiesceError(f"unknown snapshot agent {agent!r}",
                           hint=f"use one of: {', '.join(AGENTS)}")
    return importlib.import_module(f"quiesce.callers.install.{agent.replace('-', '_')}")
