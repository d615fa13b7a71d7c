"""The test project's settings, plus the chaos tasks, and PgBouncer's needs when pooled."""

import os

from testproject.settings import *  # noqa: F403
from testproject.settings import DATABASES, TASKS

TASKS["default"]["OPTIONS"]["TASK_MODULES"] = [
    *TASKS["default"]["OPTIONS"]["TASK_MODULES"],
    "chaos.tasks",
]

if os.environ.get("CHAOS_POOLED"):
    # Through PgBouncer in transaction mode: a server connection changes between
    # transactions, so no server-side cursors and no prepared statements (PgBouncer before
    # 1.21 cannot carry them); runjobs gets --no-listen.
    DATABASES["default"]["DISABLE_SERVER_SIDE_CURSORS"] = True
    DATABASES["default"].setdefault("OPTIONS", {})["prepare_threshold"] = None
