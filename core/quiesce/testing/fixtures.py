"""The pytest plugin: re-exports every fixture of the quiesce.testing modules.

Importing this module must stay cheap and free of side effects: pytest loads it in every
session of every project that has quiesce installed.
"""

from quiesce.testing.disks import *  # noqa: F403
from quiesce.testing.mongodb import *  # noqa: F403
from quiesce.testing.mysql import *  # noqa: F403
from quiesce.testing.postgresql import *  # noqa: F403
