"""``manage.py jobs``: look at the queue and operate on jobs from a shell.

    jobs status                      per-queue counts, the age of the oldest ready job, limits
    jobs list [--state S] [--queue Q] [--task T] [--since 1h] [--limit N]
    jobs retry ID...                 re-queue failed or cancelled jobs
    jobs cancel ID...                cancel jobs; running ones are asked to stop
    jobs run-now ID...               make delayed jobs due now
    jobs prune --older-than 7d [--state FAILED ...]
    jobs workflow ID [--cancel | --retry-failed]

``--json`` prints machine-readable output. Exit codes: 0 done; 1 some ids were skipped,
not found, or past the 10,000 one call handles (listed as ``truncated``); 2 usage error
(a bad value is refused before anything is done); 3 the database failed. The work is
done by ``stats.py`` and ``operations.py``, the same functions the admin uses.
"""

import argparse
import getpass
import json
import math
import re
from datetime import datetime, timedelta
from typing import Any

from django.core.management.base import BaseCommand, CommandError
from django.db import DatabaseError
from django.db.models import QuerySet
from django.utils import timezone
from django.utils.dateparse import parse_datetime

from django_jobs.backend import jobs_backends, jobs_database
from django_jobs.compat import TaskResultDoesNotExist
from django_jobs.conf import MAX_DURATION
from django_jobs.console import operations, stats
from django_jobs.management.arguments import positive_int_at_most
from django_jobs.models import MAX_JOB_ID, Job, Workflow
from django_jobs.states import FINISHED, JobState
from django_jobs.workflows.results import get_workflow

_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(s|m|min|h|d|w)?\s*$", re.IGNORECASE)
_UNIT_SECONDS = {"s": 1, "m": 60, "min": 60, "h": 3600, "d": 86400, "w": 604800}
#: Longest duration taken: conf.MAX_DURATION, a hundred years (past it, dates leave the
#: calendar).
MAX_DURATION_DAYS = int(MAX_DURATION // 86_400)
#: Most rows `jobs list` prints.
MAX_LIST = 100_000


def duration(text: str) -> float:
    """``90``, ``90s``, ``15m``, ``12h``, ``7d`` or ``2w`` as seconds, up to 100 years."""
    match = _DURATION.match(text)
    if not match:
        raise argparse.ArgumentTypeError(
            f"expected a duration such as 30s, 15m, 12h or 7d, got {text!r}"
        )
    seconds = float(match[1]) * _UNIT_SECONDS[(match[2] or "s").lower()]
    if not math.isfinite(seconds) or seconds > MAX_DURATION_DAYS * 86400:
        raise argparse.ArgumentTypeError(
            f"expected a duration of at most {MAX_DURATION_DAYS}d (100 years), got {text!r}"
        )
    return seconds


def since(text: str) -> datetime:
    """A duration ago (``1h``) or an ISO date/time (``2026-01-31``, ``2026-01-31T12:00``)."""
    if _DURATION.match(text):
        return timezone.now() - timedelta(seconds=duration(text))
    try:
        value = parse_datetime(text) or parse_datetime(f"{text}T00:00")
    except ValueError as exc:  # well formed but not a date: 2026-02-30
        raise argparse.ArgumentTypeError(f"{text!r} is not a valid date/time: {exc}") from None
    if value is None:
        raise argparse.ArgumentTypeError(
            f"expected a duration (1h, 7d) or an ISO date/time, got {text!r}"
        )
    try:
        return value if timezone.is_aware(value) else timezone.make_aware(value)
    except (ValueError, OverflowError) as exc:  # at the calendar's ends
        raise argparse.ArgumentTypeError(f"{text!r} is out of range: {exc}") from None


def state(text: str) -> str:
    value = text.upper()
    if value not in JobState.values:
        raise argparse.ArgumentTypeError(
            f"unknown state {text!r}; one of {', '.join(JobState.values)}"
        )
    return value


def finished_state(text: str) -> str:
    value = state(text)
    if value not in FINISHED:
        raise argparse.ArgumentTypeError(
            f"prune deletes finished jobs only: {', '.join(FINISHED)}"
        )
    return value


def job_id(text: str) -> int:
    try:
        value = int(text.lstrip("#"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a job id (a number), got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"job ids are positive, got {value}")
    if value > MAX_JOB_ID:
        raise argparse.ArgumentTypeError(f"job ids are at most {MAX_JOB_ID}, got {value}")
    return value


def list_jobs(
    *,
    states: list[str] | None = None,
    queues: list[str] | None = None,
    tasks: list[str] | None = None,
    since: datetime | None = None,
    limit: int = 50,
) -> QuerySet:
    """Newest jobs first, filtered as the admin's changelist filters."""
    qs = Job.objects.using(jobs_database()).defer(
        "args", "kwargs", "return_value", "errors", "worker_ids"
    )
    if states:
        qs = qs.filter(state__in=states)
    if queues:
        qs = qs.filter(queue_name__in=queues)
    if tasks:
        qs = stats.by_tasks(qs, tasks)
    if since is not None:
        qs = qs.filter(enqueued_at__gte=since)
    return qs.order_by("-id")[:limit]


def _job_dict(job: Job) -> dict[str, Any]:
    def iso(value: datetime | None) -> str | None:
        return value.isoformat() if value else None

    return {
        "id": job.pk,
        "state": job.state,
        "task": job.task_path,
        "queue": job.queue_name,
        "priority": job.priority,
        "attempts": job.attempts,
        "max_attempts": job.max_attempts,
        "enqueued_at": iso(job.enqueued_at),
        "started_at": iso(job.started_at),
        "finished_at": iso(job.finished_at),
        "worker_id": job.worker_id,
    }


def _who() -> str:
    """Who cancels from this shell, as recorded on the jobs."""
    try:
        user = getpass.getuser()
    except (KeyError, OSError):  # no name for this uid (a bare container)
        user = "unknown user"
    return f"{user} (jobs command)"


def _age(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    return f"{seconds:.0f}s" if seconds < 120 else str(timedelta(seconds=round(seconds)))


class Command(BaseCommand):
    help = "Inspect and operate on django_jobs jobs: status, list, retry, cancel, run-now, prune."

    def add_arguments(self, parser: argparse.ArgumentParser) -> None:
        parser.add_argument("--json", action="store_true", help="Print JSON.")
        sub = parser.add_subparsers(dest="subcommand", required=True, metavar="subcommand")
        sub.add_parser("status", help="Per-queue counts by state and the oldest ready job's age.")

        listing = sub.add_parser("list", help="List jobs, newest first.")
        listing.add_argument("--state", type=state, action="append", dest="states")
        listing.add_argument("--queue", action="append", dest="queues")
        listing.add_argument("--task", action="append", dest="tasks", help="Dotted task path.")
        listing.add_argument("--since", type=since, help="Enqueued since: 1h, 7d or a date.")
        listing.add_argument(
            "--limit",
            type=positive_int_at_most(MAX_LIST),
            default=50,
            help=f"Most jobs listed, 1 to {MAX_LIST} (default: 50).",
        )

        for name, text in (
            ("retry", "Re-queue failed or cancelled jobs."),
            ("cancel", "Cancel jobs; running ones are asked to stop."),
            ("run-now", "Make delayed jobs due now."),
        ):
            op = sub.add_parser(name, help=f"{text} At most {operations.MAX_IDS} ids a call.")
            op.add_argument("ids", nargs="+", type=job_id, metavar="ID")

        flow = sub.add_parser("workflow", help="Show a workflow; or cancel it, or retry it.")
        flow.add_argument("workflow_id", type=job_id, metavar="ID")
        what = flow.add_mutually_exclusive_group()
        what.add_argument("--cancel", action="store_true", help="Cancel its unfinished steps.")
        what.add_argument(
            "--retry-failed", action="store_true", help="Re-queue its failed and cancelled steps."
        )

        prune = sub.add_parser("prune", help="Delete finished jobs older than a cut-off.")
        prune.add_argument("--older-than", type=duration, required=True, help="e.g. 7d, 12h.")
        prune.add_argument("--state", type=finished_state, action="append", dest="states")

        # `--json` is accepted after the subcommand too.
        for p in sub.choices.values():
            p.add_argument("--json", action="store_true", default=argparse.SUPPRESS)

    def handle(self, *args: Any, **options: Any) -> None:
        try:
            self._handle(**options)
        except DatabaseError as exc:
            # Exit 3, not a traceback's 1, which means "some ids were skipped".
            raise CommandError(
                f"the database failed: {type(exc).__name__}: {exc}", returncode=3
            ) from exc

    def _handle(self, **options: Any) -> None:
        name = options["subcommand"]
        as_json = options["json"]
        if name == "status":
            self._status(as_json)
        elif name == "list":
            jobs = list_jobs(
                states=options["states"],
                queues=options["queues"],
                tasks=options["tasks"],
                since=options["since"],
                limit=options["limit"],
            )
            self._list(jobs, as_json)
        elif name == "workflow":
            self._workflow(options["workflow_id"], options, as_json)
        elif name == "prune":
            deleted = operations.prune(options["older_than"], options["states"])
            if as_json:
                self._print({"deleted": deleted})
            else:
                self.stdout.write(f"{deleted} finished job{'s' if deleted != 1 else ''} deleted")
        else:
            if name == "cancel":
                report = operations.cancel(options["ids"], by=_who())
            else:
                operation = {"retry": operations.retry, "run-now": operations.run_now}[name]
                report = operation(options["ids"])
            self._report(report, as_json)

    def _report(self, report: operations.Report, as_json: bool) -> None:
        if as_json:
            self._print(report.as_dict())
        else:
            self.stdout.write(report.summary())
            for job, reason in sorted(report.skipped.items()):
                self.stdout.write(f"  #{job}: {reason}")
            if report.dropped:
                self.stdout.write(
                    f"  {len(report.dropped)} id(s) past the first {operations.MAX_IDS} "
                    f"were not considered; run again with them: "
                    + " ".join(str(i) for i in report.dropped)
                )
        if not report.ok:
            problems = []
            if report.skipped:
                problems.append(f"{len(report.skipped)} job(s) skipped")
            if report.dropped:
                problems.append(
                    f"{len(report.dropped)} id(s) not considered (at most "
                    f"{operations.MAX_IDS} a call)"
                )
            raise CommandError("; ".join(problems), returncode=1)

    def _workflow(self, workflow_id: int, options: dict[str, Any], as_json: bool) -> None:
        using = jobs_database()
        alias = (
            Workflow.objects.using(using).filter(pk=workflow_id).values_list("backend", flat=True)
        )
        try:
            if not alias:
                raise TaskResultDoesNotExist(workflow_id)
            if options["cancel"]:
                self._report(operations.cancel_workflows([workflow_id], by=_who()), as_json)
                return
            if options["retry_failed"]:
                self._report(operations.retry_workflows([workflow_id]), as_json)
                return
            result = get_workflow(str(workflow_id), backend=alias[0])
        except TaskResultDoesNotExist:
            raise CommandError(f"no workflow {workflow_id}", returncode=1) from None
        summary = {
            "id": result.id,
            "description": result.description,
            "status": result.status.value,
            "steps": len(result.results),
            "counts": dict(sorted(result.counts.items())),
            "progress": round(result.progress, 3),
            "failed_step": result.failed_step_id,
            "on_error_job": result.on_error_id,
            "cancelled_by": result.cancelled_by,
        }
        if as_json:
            self._print(summary)
            return
        counts = ", ".join(f"{n} {state}" for state, n in summary["counts"].items())
        self.stdout.write(
            f"workflow {result.id} ({result.description}): {result.status.value}, "
            f"{summary['steps']} steps: {counts}; {result.progress:.0%} done"
        )
        if result.failed_step_id:
            self.stdout.write(f"  failed at step {result.failed_step_id}")
        if result.on_error_id:
            self.stdout.write(f"  on_error runs as job {result.on_error_id}")
        if result.cancelled_by:
            self.stdout.write(f"  cancelled by {result.cancelled_by}")

    def _print(self, value: Any) -> None:
        self.stdout.write(json.dumps(value, indent=2))

    def _status(self, as_json: bool) -> None:
        queues = sorted({q for b in jobs_backends() for q in b.queues})
        overview = stats.overview(queues=queues, using=jobs_database())
        if as_json:
            self._print(overview.as_dict())
            return
        header = (
            "queue",
            "ready",
            "delayed",
            "limited",
            "running",
            "oldest ready",
            "ok 24h",
            "failed 24h",
            "cancelled 24h",
        )
        ready = "~" if overview.ready_estimated else ""
        done = "~" if overview.finished_estimated else ""
        rows = [
            (
                q.name,
                f"{ready}{q.runnable}",
                f"{ready}{q.delayed}",
                "-" if ready else q.limited,
                q.running,
                _age(q.oldest_runnable_age),
                f"{done}{q.finished.get('SUCCESSFUL', 0)}",
                f"{done}{q.finished.get('FAILED', 0)}",
                f"{done}{q.finished.get('CANCELLED', 0)}",
            )
            for q in [*overview.queues, overview.totals]
        ]
        self._table(header, rows)
        if overview.limits:
            self.stdout.write("\nLimits (shared by every worker):")
            self._table(
                ("limit", "rate", "started", "running", "room", "waiting", "next start"),
                [
                    (
                        limit.name,
                        limit.rate_text or "-",
                        "-" if limit.started is None else limit.started,
                        f"{limit.running}/{limit.concurrency}"
                        if limit.concurrency
                        else limit.running,
                        "-" if limit.room is None else limit.room,
                        limit.waiting,
                        "-" if limit.next_start_in is None else f"in {limit.next_start_in:.1f}s",
                    )
                    for limit in overview.limits
                ],
            )
        total = overview.estimated_total
        history = (
            f"about {total} rows (planner estimate)"
            if total is not None
            else "not estimated yet (the table has not been analysed)"
        )
        self.stdout.write(f"\nFinished counts cover the last 24 h. All history: {history}.")
        if ready or done:
            self.stdout.write(
                "~ marks the planner's estimates: too many rows to count quickly "
                f"(more than {stats.EXACT_BELOW})."
            )

    def _list(self, jobs: list[Job], as_json: bool) -> None:
        if as_json:
            self._print([_job_dict(j) for j in jobs])
            return
        header = ("id", "state", "task", "queue", "attempts", "enqueued", "finished")
        rows = [
            (
                j.pk,
                j.state,
                j.task_path,
                j.queue_name,
                f"{j.attempts}/{j.max_attempts}",
                f"{j.enqueued_at:%Y-%m-%d %H:%M:%S}",
                f"{j.finished_at:%Y-%m-%d %H:%M:%S}" if j.finished_at else "-",
            )
            for j in jobs
        ]
        self._table(header, rows)

    def _table(self, header: tuple, rows: list[tuple]) -> None:
        cells = [[str(c) for c in row] for row in [header, *rows]]
        widths = [max(len(row[i]) for row in cells) for i in range(len(header))]
        for row in cells:
            self.stdout.write("  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)))
