"""Makes the maintenance leader's rescue fail every round, for the resilience tests.

A process lists this module in ``TASK_MODULES`` (``JOBS_TASK_MODULES``) to get a
worker whose first maintenance service raises, as a bug or a value PostgreSQL refuses
would make it: the worker must log it, run the other services, and keep running jobs.
"""

from typing import Any

from django_jobs.services.rescuer import Rescuer


def _broken(self: Rescuer, cursor: Any) -> Any:
    raise RuntimeError("the rescue is broken on purpose (testproject.example.broken_maintenance)")


Rescuer.run_once = _broken  # type: ignore[method-assign]
