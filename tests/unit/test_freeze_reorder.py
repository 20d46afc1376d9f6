"""FreezeSession.reorder: the same filesystems in another order, only before the freeze."""

from __future__ import annotations

import pytest

from quiesce.errors import FreezeError
from quiesce.freezing.freeze import FreezeSession
from quiesce.freezing.mounts import Mount

DATA = Mount("/srv/data", "xfs", "/dev/vdb", "254:16")
WAL = Mount("/srv/wal", "ext4", "/dev/vdc", "254:32")
OTHER = Mount("/srv/other", "ext4", "/dev/vdd", "254:48")


def test_reorder_permutes_the_mounts_and_their_descriptors() -> None:
    session = FreezeSession([WAL, DATA], timeout=30)
    session._fds = [11, 12]  # as prepare() opened them, in the old order
    session.reorder([DATA, WAL])
    assert session.mounts == [DATA, WAL]
    assert session._fds == [12, 11]


@pytest.mark.parametrize("order", [[DATA], [DATA, OTHER], [DATA, DATA], [DATA, WAL, OTHER]])
def test_reorder_refuses_another_set_of_filesystems(order: list[Mount]) -> None:
    session = FreezeSession([WAL, DATA], timeout=30)
    with pytest.raises(FreezeError, match="same filesystems"):
        session.reorder(order)
    assert session.mounts == [WAL, DATA]


def test_reorder_refuses_once_frozen() -> None:
    session = FreezeSession([WAL, DATA], timeout=30)
    session._state = "frozen"
    with pytest.raises(FreezeError, match="frozen"):
        session.reorder([DATA, WAL])
