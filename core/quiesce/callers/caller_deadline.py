"""How long ``pre`` may take before its caller gives up and snapshots anyway.

Every caller has a limit: Azure's ``timeoutInSeconds`` (checked only at its polls, every
``ScriptsExecutionPollTimeSeconds``), a DLM script timeout, VMware's quiesce limit. Past it the
caller snapshots without us, so ``pre`` must be done, holding everything or nothing, before it.
This module turns a caller's limit into ``pre``'s own deadline.

Azure: the extension starts its clock before it launches the script and looks at the script
only at its polls, so a script that finishes a poll period before ``timeoutInSeconds`` is seen
finished in time. The poll period is the config's ``ScriptsExecutionPollTimeSeconds`` when set
(1..5); when absent we assume the worst, 5 s, since the extension's own default may differ
between versions. One more second covers the interpreter's start-up before ``pre`` reads its
clock.
"""

from __future__ import annotations

from typing import Any

AZURE_TIMEOUT_CAP = 1800  # the extension silently caps timeoutInSeconds here
AZURE_WORST_POLL_SECONDS = 5
STARTUP_SLACK_SECONDS = 1.0


def azure_poll_margin(config: Any) -> float:
    """Seconds ``pre`` must leave before Azure's ``timeoutInSeconds``."""
    poll = getattr(config, "poll_seconds", None)
    return float(poll if poll else AZURE_WORST_POLL_SECONDS) + STARTUP_SLACK_SECONDS


def azure_pre_deadline(config: Any) -> float:
    """Seconds from ``pre``'s start by which every instance must be held (may be <= 0, which
    means no hold can be trusted under this config)."""
    timeout = min(int(config.timeout_seconds), AZURE_TIMEOUT_CAP)
    return float(timeout) - azure_poll_margin(config)
