"""Undo quiesce's fsync lock from a fresh process when the holder died while holding it.

MongoDB's fsync lock belongs to the server, not to the connection that took it: when the
holder process dies, the server stays write-locked. The holder's guardian then calls
:func:`recover` with the instance settings and the Quiescer's ``recovery_token()``.

The rule: unlock once, and only if

1. the server is the same process that we locked (``topologyVersion.processId`` unchanged:
   a restart already dropped our lock, and any lock on the new process is someone else's), and
2. its current lock count is exactly the count our lock left.

Any other count means another client locked or unlocked since; lock counts are anonymous, so
unlocking could release *their* lock while their backup runs. Then nothing is unlocked and the
error says what to check by hand.
"""

from __future__ import annotations

import logging
from typing import Any

from quiesce.deadline import Deadline
from quiesce.engine import InstanceSettings
from quiesce.errors import EngineError
from quiesce_mongodb.config import resolve_uri
from quiesce_mongodb.engine import CLEANUP_SECONDS, unlock_if_ours
from quiesce_mongodb.session import MongoSession
from quiesce_mongodb.topology import detect_role

log = logging.getLogger("quiesce.mongodb")


def recover(settings: InstanceSettings, token: dict[str, Any]) -> str:
    """Unlock the lock described by ``token`` if it is provably ours; return what was done.

    Raises EngineError when it cannot reach the server or must not unlock.
    """
    what = f"mongodb {settings.name!r}"
    left = token.get("lock_count_after_lock")
    if left is None:
        if token.get("locked_before"):
            raise EngineError(f"{what}: the holder died while its lock request was unanswered "
                              "on a server that was already locked; not unlocking anything",
                              hint="check db.currentOp() and unlock stale locks by hand")
        left = 1
    options = settings.options
    uri = resolve_uri(options, f"mongodb[{settings.name}]")
    session = MongoSession(uri, connect_timeout=float(options.get("connect_timeout", 5)),
                           what=what)
    deadline = Deadline(CLEANUP_SECONDS + float(options.get("connect_timeout", 5)))
    try:
        hello = session.hello(deadline)
        role = detect_role(hello)
        now = role.process_id
        then = token.get("process_id")
        # A restarted mongod dropped its lock; a restarted mongos did not drop the shards'.
        if then and now and now != then and not role.is_mongos:
            outcome = (f"{what}: the server restarted since quiesce locked it, which dropped "
                       "the lock; nothing to undo")
        else:
            outcome = f"{what}: " + unlock_if_ours(session, int(left), deadline,
                                                   mongos=role.is_mongos)
        balancer = token.get("balancer_was")
        if balancer not in (None, "off"):
            session.command(deadline, {"balancerStart": 1}, doing="balancerStart")
            outcome += "; balancer restarted"
    finally:
        session.close()
    log.warning("%s", outcome)
    return outcome
