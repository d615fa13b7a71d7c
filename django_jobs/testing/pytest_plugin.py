"""pytest fixtures for projects that use django_jobs (registered through an entry point).

- ``jobs``: the helpers of ``django_jobs.testing`` on one object (``jobs.run()``,
  ``jobs.enqueued()``, ``jobs.assert_enqueued()``, ``jobs.assert_not_enqueued()``,
  ``jobs.immediate()``), with database access (pytest-django's ``db``);
- ``jobs_immediate``: the same, with every job run as soon as it is enqueued, for the
  whole test.

pytest loads this module before Django is set up, so it imports nothing of Django or
django_jobs until a fixture is used.
"""

from collections.abc import Iterator
from contextlib import AbstractContextManager
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any

import pytest

if TYPE_CHECKING:
    from django_jobs.compat import Task, TaskResult


class JobsHelper:
    """``django_jobs.testing`` for one jobs backend (``TASKS`` alias)."""

    def __init__(self, backend: str = "default") -> None:
        self.backend = backend

    def run(
        self,
        *,
        queues: list[str] | None = None,
        max_jobs: int | None = None,
        until: datetime | timedelta | None = None,
    ) -> list["TaskResult"]:
        """Run due jobs and the jobs they enqueue until none is left (see run_jobs)."""
        from django_jobs.testing import run_jobs

        return run_jobs(backend=self.backend, queues=queues, max_jobs=max_jobs, until=until)

    def enqueued(self, task: "Task | str | None" = None, **filters: Any) -> list["TaskResult"]:
        """The jobs in the table, oldest first (see enqueued_jobs)."""
        from django_jobs.testing import enqueued_jobs

        return enqueued_jobs(task, backend=self.backend, **filters)

    def assert_enqueued(self, task: "Task | str", *args: Any, **kwargs: Any) -> list["TaskResult"]:
        """Assert that jobs of ``task`` were enqueued (see assert_enqueued)."""
        from django_jobs.testing import assert_enqueued

        return assert_enqueued(task, *args, backend=self.backend, **kwargs)

    def assert_not_enqueued(
        self, task: "Task | str | None" = None, *args: Any, **kwargs: Any
    ) -> None:
        """Assert that no job of ``task`` is in the table (see assert_not_enqueued)."""
        from django_jobs.testing import assert_not_enqueued

        assert_not_enqueued(task, *args, backend=self.backend, **kwargs)

    def immediate(self, **options: Any) -> AbstractContextManager[None]:
        """A block in which jobs run as soon as they are enqueued (see immediate)."""
        from django_jobs.testing import immediate

        return immediate(backend=self.backend, **options)


@pytest.fixture
def jobs(db: None) -> JobsHelper:
    """django_jobs.testing's helpers for the default jobs backend."""
    return JobsHelper()


@pytest.fixture
def jobs_immediate(jobs: JobsHelper) -> Iterator[JobsHelper]:
    """Run every job as soon as it is enqueued, for the whole test."""
    with jobs.immediate():
        yield jobs
