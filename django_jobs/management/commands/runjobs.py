"""``manage.py runjobs``: run jobs from the database until stopped."""

import argparse
import logging
import sys
from collections.abc import Callable
from typing import Any

from django.core.management.base import BaseCommand, CommandError

from django_jobs import metrics
from django_jobs.backend import get_backend
from django_jobs.compat import InvalidTaskBackend
from django_jobs.conf import MAX_DURATION, MAX_WORKER_PERIOD, human_duration
from django_jobs.management.arguments import positive_int
from django_jobs.management.reload import run_with_reload
from django_jobs.worker import logs
from django_jobs.worker.pool import default_processes
from django_jobs.worker.supervisor import Supervisor


def _seconds_up_to(limit: float) -> Callable[[str], float]:
    """An argument type: a number of seconds > 0 and at most ``limit``."""

    def seconds(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(
                f"expected a number of seconds, got {text!r}"
            ) from None
        if not value > 0:
            raise argparse.ArgumentTypeError(f"must be greater than 0, got {text}")
        if not value <= limit:
            raise argparse.ArgumentTypeError(
                f"must be at most {human_duration(limit)} ({limit:,.0f} s), got {text}"
            )
        return value

    return seconds


#: --burst waits this long for jobs about to be due: enough for the first four retries
#: of a task with the default backoff (0.5-1, 1-2, 2-4 and 4-8 s).
DEFAULT_BURST_WAIT = 10.0


def _seconds_or_zero(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number of seconds, got {text!r}") from None
    if not 0 <= value < float("inf"):
        raise argparse.ArgumentTypeError(f"must be 0 or more seconds, got {text}")
    return value


def _queue_list(text: str) -> list[str]:
    queues = [name.strip() for name in text.split(",") if name.strip()]
    if not queues:
        raise argparse.ArgumentTypeError("expected a comma-separated list of queue names")
    return queues


def _autoscale(text: str) -> tuple[int, int]:
    try:
        low, high = (int(part) for part in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected MIN,MAX process counts such as 1,8, got {text!r}"
        ) from None
    if not 1 <= low <= high:
        raise argparse.ArgumentTypeError(f"need 1 <= MIN <= MAX, got {low},{high}")
    return low, high


_UNITS = {"": 1, "K": 1, "KB": 1, "KIB": 1, "M": 1024, "MB": 1024, "MIB": 1024}
_UNITS |= {"G": 1024 * 1024, "GB": 1024 * 1024, "GIB": 1024 * 1024}


def _memory_kib(text: str) -> int:
    """A size in KiB (a plain number, as Celery takes it) or with a K, M or G suffix."""
    cleaned = text.strip().upper()
    number = cleaned.rstrip("KMGIB")
    unit = cleaned[len(number) :].strip()
    try:
        if unit not in _UNITS:
            raise ValueError(unit)
        value = int(float(number) * _UNITS[unit])
    except (ValueError, OverflowError):
        raise argparse.ArgumentTypeError(
            f"expected a size such as 204800 (KiB), 200M or 1G, got {text!r}"
        ) from None
    if value < 1024:
        raise argparse.ArgumentTypeError(f"{text!r} is under 1 MiB; no Python process fits")
    return value


class Command(BaseCommand):
    help = "Run background jobs stored by a django_jobs backend. SIGTERM/SIGINT stop gracefully."
    # handle() runs the checks itself, with the jobs database: Django runs the database
    # checks only for migrate and `check --database`, and W003 (tasks with waiting jobs
    # that this worker cannot find) is one.
    requires_system_checks: list[str] = []

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
            type=positive_int,
            help="How many jobs run at once: child processes with --pool processes (default: "
            "the number of CPUs), threads with --pool threads, jobs per child with --pool "
            "asyncio (default: 100).",
        )
        parser.add_argument(
            "--processes",
            type=positive_int,
            help="With --pool asyncio: child processes, each with its own event loop "
            "(default: 1).",
        )
        parser.add_argument(
            "--threads",
            type=positive_int,
            help="Threads per child process, for I/O-bound jobs (default: 1).",
        )
        parser.add_argument(
            "--pool",
            choices=["processes", "asyncio", "threads"],
            default="processes",
            help="'processes' (default): jobs run in child processes the worker can kill "
            "and replace. 'asyncio': async def tasks run concurrently on an event loop in "
            "each child (sync tasks on its threads), for I/O-bound work. 'threads': jobs run "
            "on threads of the worker itself (no hard time limits; for debugging).",
        )
        parser.add_argument(
            "--autoscale",
            type=_autoscale,
            metavar="MIN,MAX",
            help="Grow the pool up to MAX processes while jobs wait, shrink to MIN when idle.",
        )
        parser.add_argument(
            "--max-jobs-per-child",
            type=positive_int,
            help="Replace a child process after it has run this many jobs.",
        )
        parser.add_argument(
            "--max-memory-per-child",
            type=_memory_kib,
            metavar="SIZE",
            help="Replace a child whose resident memory exceeds SIZE after a job "
            "(KiB, or with a K/M/G suffix: 512M).",
        )
        parser.add_argument(
            "--grace",
            type=_seconds_up_to(MAX_DURATION),
            default=30.0,
            help="On SIGTERM/SIGINT, seconds to let running jobs finish before they are "
            "stopped and put back in the queue (default: %(default)s).",
        )
        parser.add_argument(
            "--reload",
            action="store_true",
            help="Restart when Python files change (development only: running jobs are "
            "stopped and put back in the queue).",
        )
        parser.add_argument(
            "--burst",
            action="store_true",
            help="Exit (status 0) once no job is runnable, or due within --burst-wait.",
        )
        parser.add_argument(
            "--burst-wait",
            type=_seconds_or_zero,
            default=DEFAULT_BURST_WAIT,
            metavar="SECONDS",
            help="With --burst, wait for jobs that become due within this many seconds "
            "(retries, snoozes, run_after) before exiting; 0 exits at once "
            "(default: %(default)s).",
        )
        parser.add_argument(
            "--poll-interval",
            type=_seconds_up_to(MAX_WORKER_PERIOD),
            help="Seconds between polls when no notification arrives "
            "(default: OPTIONS['POLL_INTERVAL'], 1.0).",
        )
        parser.add_argument(
            "--skip-checks", action="store_true", help="Skip the system checks at start."
        )
        parser.add_argument(
            "--no-listen",
            action="store_true",
            help="Do not LISTEN for new jobs; rely on polling (behind PgBouncer in "
            "transaction mode).",
        )

        parser.add_argument(
            "--metrics-port",
            type=_port,
            metavar="PORT",
            help="Serve Prometheus metrics on this port (needs the 'prometheus' extra): this "
            "worker's counters and histograms, and the queue gauges. 0 picks a free port.",
        )
        parser.add_argument(
            "--metrics-address",
            default="0.0.0.0",  # noqa: S104 - Prometheus scrapes from another host
            help="Address the metrics server listens on (default: %(default)s).",
        )

    def handle(self, *args: Any, **options: Any) -> None:
        logs.configure(options["verbosity"])
        alias = options["backend"]
        try:
            backend = get_backend(alias)
        except InvalidTaskBackend as exc:
            raise CommandError(f"--backend {alias!r}: {exc}") from None
        if not options["skip_checks"]:
            self.check(databases=[backend.database])
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
        if options["autoscale"] and options["concurrency"]:
            raise CommandError(
                "--autoscale MIN,MAX sets the number of processes; drop --concurrency."
            )
        if options["pool"] == "threads" and options["threads"]:
            raise CommandError(
                "With --pool threads, --concurrency is the number of threads; drop --threads."
            )
        process_only = ("autoscale", "max_jobs_per_child", "max_memory_per_child")
        if options["pool"] == "threads" and any(options[name] for name in process_only):
            raise CommandError(
                "--autoscale, --max-jobs-per-child and --max-memory-per-child need child "
                "processes; drop --pool threads."
            )
        if options["pool"] == "asyncio" and (options["threads"] or options["autoscale"]):
            raise CommandError(
                "With --pool asyncio, --concurrency is the number of jobs each child runs at "
                "once and --processes the number of children; drop --threads and --autoscale."
            )
        if options["processes"] and options["pool"] != "asyncio":
            raise CommandError(
                "--processes is for --pool asyncio; with --pool processes, --concurrency is "
                "the number of child processes."
            )
        pool = options["pool"]
        if pool == "asyncio":
            processes, threads = options["processes"] or 1, options["concurrency"] or 100
        elif pool == "threads":
            processes, threads = None, options["concurrency"] or default_processes()
        else:
            processes = options["concurrency"] or default_processes()
            threads = options["threads"] or 1
        worker = Supervisor(
            event_loop=pool == "asyncio",
            backend=alias,
            queues=queues,
            processes=processes,
            threads=threads,
            burst=options["burst"],
            poll_interval=options["poll_interval"],
            listen=False if options["no_listen"] else None,
            grace=options["grace"],
            max_jobs_per_child=options["max_jobs_per_child"],
            max_memory_kib=options["max_memory_per_child"],
            autoscale=options["autoscale"],
            child_setup=_metrics_setup(options["metrics_port"]),
            log_verbosity=options["verbosity"],
            burst_wait=options["burst_wait"],
        )
        run = worker.run
        if options["metrics_port"] is not None:
            run = _with_metrics(worker, options["metrics_port"], options["metrics_address"])
        if options["reload"]:
            code = run_with_reload(worker, run)
            if code:
                sys.exit(code)
        else:
            run()


def _port(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a TCP port number, got {text!r}") from None
    if not 0 <= value <= 65535:
        raise argparse.ArgumentTypeError(f"a port is 0 to 65535, got {value}")
    return value


def _metrics_setup(port: int | None) -> tuple[str, ...]:
    """What the children call after django.setup(): count for the metrics, if served."""
    if port is None:
        return ()
    try:
        import prometheus_client  # noqa: F401
    except ImportError:
        raise CommandError(
            "--metrics-port needs the prometheus-client package: "
            "pip install 'django-pg-jobs[prometheus]'."
        ) from None
    return ("django_jobs.metrics.enable",)


def _with_metrics(worker: Supervisor, port: int, address: str) -> Any:
    from django_jobs.metrics.exposition import MetricsServer

    def run() -> None:
        metrics.enable()
        server = MetricsServer(port, address)
        try:
            server.start({"worker_id": worker.worker_id, "backend": worker.backend.alias})
        except OSError as exc:
            raise CommandError(
                f"--metrics-port {port}: cannot listen on {address}: {exc}"
            ) from None
        logging.getLogger("django_jobs.metrics").info(
            "Serving metrics on http://%s:%d/metrics", address, server.port,
            extra={"action": "metrics_serving"},
        )  # fmt: skip
        try:
            worker.run()
        finally:
            server.stop()

    return run
