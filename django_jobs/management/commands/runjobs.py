"""``manage.py runjobs``: run jobs from the database until stopped."""

import argparse
import logging
import sys
from typing import Any

from django.core.management.base import BaseCommand, CommandError
from django.tasks import task_backends
from django.tasks.exceptions import InvalidTaskBackend

from django_jobs.backend import JobsBackend
from django_jobs.worker import Worker


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number of seconds, got {text!r}") from None
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be greater than 0, got {text}")
    return value


def _queue_list(text: str) -> list[str]:
    queues = [name.strip() for name in text.split(",") if name.strip()]
    if not queues:
        raise argparse.ArgumentTypeError("expected a comma-separated list of queue names")
    return queues


class Command(BaseCommand):
    help = "Run background jobs stored by a django_jobs backend. SIGTERM/SIGINT stop gracefully."

    def add_arguments(self, parser: argparse.ArgumentParser) -> None:
        parser.add_argument(
            "--backend", default="default", help="TASKS alias to serve (default: %(default)s)."
        )
        parser.add_argument(
            "--queues",
            type=_queue_list,
            help="Comma-separated queues to serve (default: every queue of the backend).",
        )
        parser.add_argument(
            "--concurrency",
            type=_positive_int,
            default=1,
            help="Jobs run at the same time, each on its own thread (default: %(default)s).",
        )
        parser.add_argument(
            "--burst", action="store_true", help="Exit (status 0) once no job is runnable."
        )
        parser.add_argument(
            "--poll-interval",
            type=_positive_float,
            help="Seconds between polls when no notification arrives "
            "(default: OPTIONS['POLL_INTERVAL'], 1.0).",
        )
        parser.add_argument(
            "--no-listen",
            action="store_true",
            help="Do not LISTEN for new jobs; rely on polling (behind PgBouncer in "
            "transaction mode).",
        )

    def handle(self, *args: Any, **options: Any) -> None:
        _configure_logging(options["verbosity"])
        alias = options["backend"]
        try:
            backend = task_backends[alias]
        except InvalidTaskBackend as exc:
            raise CommandError(f"--backend {alias!r}: {exc}") from None
        if not isinstance(backend, JobsBackend):
            raise CommandError(
                f"--backend {alias!r} is {type(backend).__module__}.{type(backend).__name__}; "
                "runjobs serves only backends of type django_jobs.backend.JobsBackend."
            )
        queues = options["queues"]
        if queues and backend.queues:
            unknown = sorted(set(queues) - backend.queues)
            if unknown:
                raise CommandError(
                    f"--queues names {', '.join(map(repr, unknown))}, not in "
                    f"TASKS[{alias!r}]['QUEUES'] ({', '.join(sorted(backend.queues))})."
                )
        if not queues and backend.queues:
            queues = sorted(backend.queues)
        Worker(
            backend=alias,
            queues=queues,
            concurrency=options["concurrency"],
            burst=options["burst"],
            poll_interval=options["poll_interval"],
            listen=False if options["no_listen"] else None,
        ).run()


def _configure_logging(verbosity: int) -> None:
    level = {0: logging.WARNING, 1: logging.INFO}.get(verbosity, logging.DEBUG)
    logger = logging.getLogger("django_jobs")
    logger.setLevel(level)
    # Respect a project's LOGGING; add a console handler only when nothing would print.
    if not logger.handlers and not logging.getLogger().handlers:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(
            logging.Formatter("%(asctime)s %(levelname)s %(name)s [%(process)d] %(message)s")
        )
        logger.addHandler(handler)
