"""A paginator that never counts millions of rows.

Django's paginator runs ``SELECT COUNT(*)`` for every changelist page, which on a job
table with millions of finished rows is a full scan of seconds. This one asks the
planner first (``EXPLAIN``, a millisecond): when it expects many rows the estimate is
the count, shown as "about N"; when it expects few, it counts exactly, so small tables
and narrow filters stay exact. The exact count runs under a short statement timeout,
because a filter on a column without an index may still scan the table to find its few
rows; past the timeout the estimate stands.
"""

from functools import cached_property

from django.core.exceptions import EmptyResultSet
from django.core.paginator import Paginator
from django.db import connections
from django.db.models import QuerySet

from django_jobs.console.stats import estimated_count, run_bounded


class EstimatedCountPaginator(Paginator):
    #: Count exactly when the planner expects fewer rows than this.
    exact_below = 10_000
    #: Give up on an exact count after this many milliseconds and keep the estimate.
    exact_timeout_ms = 50
    #: With an estimated count, link at most this many pages: a deep OFFSET reads every
    #: row before it, and the numbers of the far pages are guesses anyway. Filter instead.
    max_estimated_pages = 200

    is_estimate = False

    @cached_property
    def count(self) -> int:
        queryset = self.object_list
        if not isinstance(queryset, QuerySet) or connections[queryset.db].vendor != "postgresql":
            return super().count
        estimate = estimated_count(queryset)
        if estimate < self.exact_below:
            exact = self._bounded_count(queryset)
            if exact is not None and exact <= self.exact_below:
                return exact
            if exact is not None:
                estimate = max(estimate, exact)
        self.is_estimate = True
        return estimate

    @cached_property
    def num_pages(self) -> int:
        pages = super().num_pages
        if self.is_estimate:
            return min(pages, self.max_estimated_pages)
        return pages

    def _bounded_count(self, queryset: QuerySet) -> int | None:
        """Count up to ``exact_below + 1`` rows, or None when it takes too long."""
        bounded = queryset.order_by().values("pk")[: self.exact_below + 1]
        try:
            sql, params = bounded.query.sql_with_params()
        except EmptyResultSet:  # it can match nothing (an id past bigint, say)
            return 0
        rows = run_bounded(
            queryset.db,
            f"SELECT count(*) FROM ({sql}) AS bounded",
            params,
            timeout_ms=self.exact_timeout_ms,
        )
        return None if rows is None else rows[0][0]
