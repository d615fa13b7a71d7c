"""Test helpers for projects that use django_jobs: run jobs in the test, assert on them.

- :func:`run_jobs`: run every due job in this process, in the test's database and
  transaction, including the jobs they enqueue, until none is left; returns the results.
- :func:`immediate`: a context manager (or decorator) under which each job runs as soon as
  it is enqueued.
- :func:`enqueued_jobs`, :func:`assert_enqueued`, :func:`assert_not_enqueued`: look at
  the jobs in the table.

They run the worker's own code (the executor, the retry policy, the fenced outcomes)
against the configured jobs backend, so a test sees what production does. The pytest
plugin (``django_jobs.testing.pytest_plugin``, registered on install) offers the same as
the ``jobs`` and ``jobs_immediate`` fixtures. See "Testing your jobs" in the docs.

Nothing is imported until first use, so that pytest can load the plugin before Django
is configured.
"""

from typing import TYPE_CHECKING, Any

__all__ = [
    "assert_enqueued",
    "assert_not_enqueued",
    "enqueued_jobs",
    "immediate",
    "run_jobs",
]

if TYPE_CHECKING:
    from .assertions import assert_enqueued, assert_not_enqueued, enqueued_jobs
    from .runner import immediate, run_jobs


def __getattr__(name: str) -> Any:
    if name in {"run_jobs", "immediate"}:
        from . import runner

        return getattr(runner, name)
    if name in {"enqueued_jobs", "assert_enqueued", "assert_not_enqueued"}:
        from . import assertions

        return getattr(assertions, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
