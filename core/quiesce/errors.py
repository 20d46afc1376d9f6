"""One exception root for the project, its precise subclasses, and the Azure error codes.

Every error the project raises on purpose derives from :class:`QuiesceError`.  Errors that
correspond to a documented Azure pre/post-script failure carry an :class:`AzureCode` so the
runner can report the exact string (``Pre-ScriptTimeout``) and number (308) users search for.
"""

from __future__ import annotations

import enum

# No dataclasses here: this module is on 'post''s start-up path (the locks are still held while
# it starts), and dataclasses pulls in inspect, which costs more than everything else it needs.


class AzureCode(enum.Enum):
    """The documented Azure VM Backup script error strings, with the extension's numbers."""

    PRE_SCRIPT_EXECUTION_FAILED = ("Pre-ScriptExecutionFailed", 300)
    POST_SCRIPT_EXECUTION_FAILED = ("Post-ScriptExecutionFailed", 301)
    PRE_SCRIPT_NOT_FOUND = ("Pre-ScriptNotFound", 302)
    POST_SCRIPT_NOT_FOUND = ("Post-ScriptNotFound", 303)
    INCORRECT_PLUGINHOST_FILE = ("IncorrectPluginhostFile", 304)
    INCORRECT_JSON_CONFIG_FILE = ("IncorrectJSONConfigFile", 305)
    INSUFFICIENT_PERMISSION_PRE = ("InsufficientPermissionforPre-Script", 306)
    INSUFFICIENT_PERMISSION_POST = ("InsufficientPermissionforPost-Script", 307)
    PRE_SCRIPT_TIMEOUT = ("Pre-ScriptTimeout", 308)
    POST_SCRIPT_TIMEOUT = ("Post-ScriptTimeout", 309)

    @property
    def text(self) -> str:
        return self.value[0]

    @property
    def number(self) -> int:
        return self.value[1]

    @classmethod
    def for_phase(cls, phase: str, kind: str) -> AzureCode:
        """The code for ``kind`` ("failed", "not-found", "permission", "timeout") in a phase."""
        pre = phase == "pre"
        table = {
            "failed": (cls.PRE_SCRIPT_EXECUTION_FAILED, cls.POST_SCRIPT_EXECUTION_FAILED),
            "not-found": (cls.PRE_SCRIPT_NOT_FOUND, cls.POST_SCRIPT_NOT_FOUND),
            "permission": (cls.INSUFFICIENT_PERMISSION_PRE, cls.INSUFFICIENT_PERMISSION_POST),
            "timeout": (cls.PRE_SCRIPT_TIMEOUT, cls.POST_SCRIPT_TIMEOUT),
        }
        return table[kind][0 if pre else 1]


class Problem:
    """One finding: where it is (a key path or file), what is wrong, and how to fix it.

    Immutable and compared by value."""

    __slots__ = ("code", "hint", "message", "where")
    where: str
    message: str
    hint: str
    code: AzureCode | None

    def __init__(self, where: str, message: str, hint: str = "",
                 code: AzureCode | None = None) -> None:
        for name, value in (("where", where), ("message", message), ("hint", hint),
                            ("code", code)):
            object.__setattr__(self, name, value)

    def __setattr__(self, name: str, value: object) -> None:
        raise AttributeError(f"Problem is immutable (tried to set {name})")

    def _key(self) -> tuple[str, str, str, AzureCode | None]:
        return (self.where, self.message, self.hint, self.code)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Problem) and self._key() == other._key()

    def __hash__(self) -> int:
        return hash(self._key())

    def __repr__(self) -> str:
        return (f"Problem(where={self.where!r}, message={self.message!r}, hint={self.hint!r}, "
                f"code={self.code!r})")

    def with_code(self, code: AzureCode | None) -> Problem:
        return Problem(self.where, self.message, self.hint, code)

    def __str__(self) -> str:
        text = f"{self.where}: {self.message}" if self.where else self.message
        return f"{text} ({self.hint})" if self.hint else text


class QuiesceError(Exception):
    """Root of every error quiesce raises on purpose."""

    code: AzureCode | None = None
    hint: str = ""

    def __init__(self, message: str, *, hint: str = "", code: AzureCode | None = None) -> None:
        super().__init__(message)
        if hint:
            self.hint = hint
        if code is not None:
            self.code = code


class ValidationError(QuiesceError):
    """A configuration or file failed validation; carries every problem found, not the first."""

    def __init__(self, subject: str, problems: list[Problem], *, code: AzureCode | None = None):
        self.subject = subject
        self.problems = list(problems)
        lines = "\n".join(f"  - {p}" for p in self.problems)
        super().__init__(f"{subject}: {len(self.problems)} problem(s)\n{lines}", code=code)


class ConfigError(ValidationError):
    """A configuration file (Azure JSON or quiesce.toml) is unreadable or invalid."""


class PermissionProblem(ValidationError):
    """A file or one of its parent directories is not safe to trust as root."""


class ScriptError(QuiesceError):
    """A pre/post script could not be run or did not succeed."""


class ScriptTimeout(ScriptError):
    """A script phase ran past its deadline; its process group was killed."""


class FreezeError(QuiesceError):
    """A filesystem could not be frozen or thawed."""


class SnapshotError(QuiesceError):
    """The snapshot provider failed."""


class PluginError(QuiesceError):
    """A selected plugin could not be loaded or registered (IncorrectPluginhostFile)."""

    code = AzureCode.INCORRECT_PLUGINHOST_FILE


class EngineError(QuiesceError):
    """A database engine refused, failed or timed out while quiescing or releasing."""


class LockWaitTimeout(EngineError):
    """Taking a lock would have had to wait behind running work longer than allowed."""


class SessionLost(EngineError):
    """The session that holds a lock or backup mode died while held."""


class HolderError(QuiesceError):
    """The session holder could not be started, reached or told to release."""


class HoldActive(HolderError):
    """A hold is already active; a second ``pre`` must not touch it."""


class NoActiveHold(HolderError):
    """``post`` found nothing to release."""


class HoldIncomplete(HolderError):
    """The write block deferred to the freeze (``quiesce run``) could not be taken."""


class HarnessError(QuiesceError):
    """A throwaway resource of the drill or the tests (server, loop disk) failed."""


class ServerError(HarnessError):
    """A throwaway server (for the drill or the tests) could not be set up, started or used."""


class EngineUnavailable(ServerError):
    """A throwaway server cannot be started here (missing binary, no Docker engine)."""


class DrillError(QuiesceError):
    """The drill could not set up or run a cycle."""
