"""The demo's workflows: what docs/howto/workflows.md, cancelling.md and progress.md show.

``scripts/demo`` (``manage.py demo_enqueue``) and the demo page's button enqueue these;
open the admin's Workflows list to watch them run.
"""

from django.db import transaction

from django_jobs import chain, chord, group

from . import tasks


def enqueue_report() -> str:
    """A chord: fetch 20 pages side by side, then merge them into one summary."""
    with transaction.atomic():  # the workflow is written with the request, or not at all
        result = chord(
            group(tasks.fetch_page.s(number) for number in range(1, 21)),
            tasks.merge_pages.s(),
            on_error=tasks.report_failure.s("ops"),
        ).enqueue()
    return result.id


def enqueue_arithmetic() -> str:
    """A chain: each step receives the previous step's return value first."""
    result = chain(tasks.add.s(2, 2), tasks.add.s(4), tasks.mul.s(10)).enqueue()  # 80
    return result.id


def enqueue_failing() -> str:
    """A chord whose fourth member fails: the callback is cancelled, on_error runs once."""
    result = chord(
        tasks.fails_on.starmap((n, 3) for n in range(6)),
        tasks.total.s(),
        on_error=tasks.report_failure.s("ops"),
    ).enqueue()
    return result.id


def enqueue_long_job() -> str:
    """A job that reports its progress for a minute and stops early when cancelled."""
    return tasks.crunch.enqueue(600, 0.1).id


def enqueue_all() -> dict[str, str]:
    """Every demo workflow and the long job; returns their ids by name."""
    return {
        "report workflow": enqueue_report(),
        "arithmetic workflow": enqueue_arithmetic(),
        "failing workflow": enqueue_failing(),
        "long job": enqueue_long_job(),
    }
