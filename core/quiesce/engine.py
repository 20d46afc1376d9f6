"""What a database plugin provides: an engine type and the per-instance Quiescer objects.

A plugin registers :class:`EngineType` objects through the ``quiesce_register_engines`` hook.
The core reads each instance section of quiesce.toml, validates it against the engine's schema,
and asks the engine's factory for one :class:`Quiescer` per instance.  The core owns the
lifecycle: it calls ``prepare`` -> ``quiesce`` -> (hold, ``check_alive`` now and then) ->
``release`` on success, and ``abort`` on every path that does not reach ``release``.
Plugins never drive their own lifecycle, so one engine failing can never skip another's release.
"""

from __future__ import annotations

import abc
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from quiesce.deadline import Deadline
from quiesce.errors import Problem
from quiesce.schema import Table


@dataclass(frozen=True)
class InstanceSettings:
    """One validated instance section, e.g. one ``[[postgresql]]`` table of quiesce.toml."""

    engine: str
    name: str
    options: Mapping[str, Any]
    # Settings shared by every instance (from the top level of quiesce.toml).
    max_hold_seconds: float = 300.0
    state_dir: str = "/var/lib/quiesce"
    # What the caller freezes together before its snapshot, as
    # quiesce.freezing.freeze_set.CallerFreeze.to_dict(); None: the engine reads it from the
    # environment 'pre' ran in (freeze_set.caller_freeze). Only ``level = "auto"`` uses it.
    caller_freeze: Mapping[str, Any] | None = None


class Quiescer(abc.ABC):
    """One database instance, driven by the core. Methods run in the holder process.

    Contract:
    - ``prepare``: connect, detect flavour/version/role, check preconditions, flush (e.g.
      CHECKPOINT) so the hold that follows is short. Takes no lock. Raise EngineError subclasses
      with a message that says what to fix.
    - ``quiesce``: take the lock / enter backup mode, then verify it is really held. When it
      returns, writes that must be blocked are blocked. Must finish before ``deadline``.
    - ``check_alive``: cheap check that the holding session still exists; raise SessionLost.
      Must not block for long and must not take or drop locks.
    - ``release``: release in the holding session, confirm, and return JSON-serialisable
      metadata (LSNs, backup_label, binlog coordinates...). Never reconnects silently: if the
      session is gone, raise SessionLost.
    - ``abort``: best-effort release on a failure path; never raises.
    - ``recovery_token``: for engines whose lock outlives the session (MongoDB fsyncLock): the
      data a separate guardian process needs to undo the lock if the holder dies. ``None`` when
      the server releases everything by itself once the session's connection closes.
    - ``defer_block`` / ``block`` (optional): when the caller runs the freeze itself
      (``quiesce run``), it can ask for the part of the hold that stops the application's
      writes to be taken at the freeze instead of in ``pre``. ``defer_block`` is asked after
      ``prepare`` and before ``quiesce``; returning True means ``quiesce`` takes everything
      except that part and ``block`` (called once, just before the first FIFREEZE) takes and
      verifies it. Engines that cannot split their hold keep the default (False).
    - ``blocks_writes``: whether the hold, as taken so far, stops the application's writes.
    """

    def __init__(self, settings: InstanceSettings) -> None:
        self.settings = settings

    @property
    def engine(self) -> str:
        return self.settings.engine

    @property
    def name(self) -> str:
        return self.settings.name

    @abc.abstractmethod
    def prepare(self, deadline: Deadline) -> None: ...

    @abc.abstractmethod
    def quiesce(self, deadline: Deadline) -> None: ...

    @abc.abstractmethod
    def check_alive(self) -> None: ...

    @abc.abstractmethod
    def release(self, deadline: Deadline) -> dict[str, Any]: ...

    @abc.abstractmethod
    def abort(self) -> None: ...

    def recovery_token(self) -> dict[str, Any] | None:
        return None

    def defer_block(self) -> bool:
        """Leave what stops writes out of ``quiesce`` for a later ``block``? (default: no)."""
        return False

    def block(self, deadline: Deadline) -> None:
        """Take and verify the write block that ``defer_block`` left out of ``quiesce``."""
        raise NotImplementedError(f"{self.engine}/{self.name} defers no write block")

    @property
    def blocks_writes(self) -> bool:
        """Whether the hold, as taken so far, stops the application's writes (the safe
        answer, True, unless the engine knows better)."""
        return True

    @property
    def relies_on_freeze(self) -> bool:
        """Whether this hold counts on the caller freezing every file recovery needs together
        (a lighter level): then only the freeze's outcome, known after the thaw, says whether
        the snapshot is consistent. False unless the engine chose such a level."""
        return False

    @property
    def commit_paths(self) -> tuple[str, ...]:
        """Directories every commit writes and waits for (a write-ahead or redo log), on this
        machine, when the hold does not block commits itself. ``quiesce run`` freezes the
        filesystems holding them last and thaws them first, so commits go on while the others
        freeze (any order gives the same crash-consistent snapshot: all are frozen before
        it). Empty (the default): no preference."""
        return ()

    def close(self) -> None:  # noqa: B027 - optional hook, empty by default
        """Close connections. Called after release/abort; must not raise."""


@dataclass(frozen=True)
class EngineType:
    """An engine a plugin adds: its TOML section name, instance schema and factory."""

    name: str
    schema: Table
    factory: Callable[[InstanceSettings], Quiescer]
    description: str = ""
    # Option keys holding paths of secret files (password_file, uri_file): the core checks
    # they are root-owned and not readable by group/other before anything connects.
    secret_file_keys: tuple[str, ...] = ()
    # Undo a lock that outlives its session, from a fresh process, given the instance options
    # and the Quiescer's recovery_token(). Called by the guardian if the holder dies.
    recover: Callable[[InstanceSettings, dict[str, Any]], None] | None = None
    # Rules that involve several keys of one section (e.g. "exactly one of uri / uri_file"),
    # given the validated section and its key path; checked by the core with the schema, so
    # `quiesce check` and `pre` report them with every other problem.
    section_problems: Callable[[Mapping[str, Any], str], list[Problem]] | None = None
    extra: dict[str, Any] = field(default_factory=dict)
