"""The former home of ``quiesce install azure``, kept so that existing imports keep working:
the shared part now lives in :mod:`quiesce.callers.install.base`, Azure's in
:mod:`quiesce.callers.install.azure`."""

from __future__ import annotations

from quiesce.callers.install.azure import (
    AZURE_CONFIG,
    AZURE_TIMEOUT_CAP,
    DIR_MODES,
    POST_SCRIPT,
    PRE_SCRIPT,
    apply,
    azure_config,
    azure_timeout,
    plan,
    wrapper_script,
)
from quiesce.callers.install.base import (
    CONFLICT,
    CREATE,
    FIX_MODE,
    GUARD_EXIT,
    KEEP,
    QUIESCE_TOML,
    REPLACE,
    UNCHANGED,
    InstallConflict,
    PlannedFile,
    command_problems,
    example_section,
    guard_paths,
    key_doc,
    quiesce_command,
    toml_skeleton,
)

__all__ = [
    "AZURE_CONFIG", "AZURE_TIMEOUT_CAP", "CONFLICT", "CREATE", "DIR_MODES", "FIX_MODE",
    "GUARD_EXIT", "KEEP", "POST_SCRIPT", "PRE_SCRIPT", "QUIESCE_TOML", "REPLACE", "UNCHANGED",
    "InstallConflict", "PlannedFile", "apply", "azure_config", "azure_timeout",
    "command_problems", "example_section", "guard_paths", "key_doc", "plan",
    "quiesce_command", "toml_skeleton", "wrapper_script",
]
