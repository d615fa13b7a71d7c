"""Makes the supervisor's loop fail on cue, for the resilience tests.

A process lists this module in ``TASK_MODULES`` (``JOBS_TASK_MODULES``) and names a file
in ``JOBS_BREAK_LOOP_WHEN``: once that file exists, the supervisor's loop raises an
unexpected error. The worker must still give its running job its grace (then give it
back), remove its row, log its summary, and exit with status 1.
"""

import os

from django_jobs.worker.supervisor import Supervisor

_timers = Supervisor._timers


def _broken(self: Supervisor) -> None:
    if os.path.exists(os.environ["JOBS_BREAK_LOOP_WHEN"]):
        raise RuntimeError("the supervisor's loop is broken on purpose")
    _timers(self)


Supervisor._timers = _broken  # type: ignore[method-assign]
