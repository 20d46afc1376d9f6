"""The words of a hold, in one place: the holder's state and each instance's status.

Both are ``StrEnum``: a member is its own value in JSON, in f-strings and in comparisons
with the strings an older peer or a run record carries, so the wire format and the record
format are unchanged.
"""

from __future__ import annotations

import enum


class HoldState(enum.StrEnum):
    """What the holder is doing (``quiesce status``' ``state``, a record's ``state``)."""

    STARTING = "starting"
    QUIESCING = "quiescing"
    HOLDING = "holding"
    RELEASING = "releasing"
    RELEASED = "released"  # by 'post' (or by 'quiesce run' at the thaw)
    AUTO_RELEASED = "auto-released"  # max_hold_seconds passed, or the holder was told to stop
    LOST = "lost"  # every held session died
    FAILED = "failed"  # 'pre' failed: nothing was held for the snapshot
    ABORTED = "aborted"  # post came early, or pre gave up or died: never a complete hold


#: The states in which a hold exists or is being set up: a second 'pre' must not start.
ACTIVE = frozenset({HoldState.STARTING, HoldState.QUIESCING, HoldState.HOLDING,
                    HoldState.RELEASING})
#: The states in which something may still be held right now.
MAY_HOLD = frozenset({HoldState.QUIESCING, HoldState.HOLDING, HoldState.RELEASING})


class Status(enum.StrEnum):
    """One instance's status in a hold."""

    PENDING = "pending"
    HELD = "held"
    RELEASED = "released"  # held from 'pre' until the release: the only consistent one
    AUTO_RELEASED = "auto-released"
    LOST = "lost"
    FAILED = "failed"
    SKIPPED = "skipped"  # never quiesced because another instance failed first
    LATE = "late"  # acquired after the cutoff or after the hold was abandoned; released at once
    ABORTED = "aborted"  # was held, released again because the hold never completed
