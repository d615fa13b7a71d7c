"""The Prometheus side: a collector over this process's tally and the database gauges,
and the ``runjobs --metrics-port`` HTTP server. Needs ``prometheus-client``.

Metric names are listed in docs/howto/monitoring.md; the Grafana dashboard there uses
them, and a test checks that every name it uses is in a real scrape.
"""

import logging
import threading
from collections.abc import Iterator
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler, make_server

from django.core.exceptions import ImproperlyConfigured

try:
    from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, generate_latest, make_wsgi_app
    from prometheus_client.core import (
        CounterMetricFamily,
        GaugeMetricFamily,
        HistogramMetricFamily,
        Metric,
    )
    from prometheus_client.exposition import ThreadingWSGIServer
except ImportError as exc:  # pragma: no cover - exercised by the extras test
    raise ImproperlyConfigured(
        "django_jobs metrics need the prometheus-client package: "
        "pip install 'django-pg-jobs[prometheus]'."
    ) from exc

from .. import __version__
from ..tally import TALLY, Tally, cumulative
from . import gauges
from .receivers import COUNTERS, HISTOGRAMS, JOB_LABELS, MAINTENANCE_ERRORS, WORKERS_LOST

logger = logging.getLogger(__name__)

__all__ = ["CONTENT_TYPE_LATEST", "REGISTRY", "JobsCollector", "MetricsServer", "generate_latest"]

PREFIX = "django_jobs_"


class JobsCollector:
    """Yield django_jobs's metrics at each scrape: the tally's, then the gauges."""

    def __init__(
        self, tally: Tally = TALLY, *, with_gauges: bool = True, close_connection: bool = False
    ) -> None:
        self.tally = tally
        self.with_gauges = with_gauges
        self.close_connection = close_connection
        #: Set in a runjobs process: labels of django_jobs_worker_info.
        self.worker: dict[str, str] | None = None

    def describe(self) -> list[Metric]:
        # Without it, registering would call collect(), and read the database, at once.
        return []

    def collect(self) -> Iterator[Metric]:
        counts, histograms = self.tally.snapshot()
        for name, help_text in COUNTERS.items():
            family = CounterMetricFamily(PREFIX + name, help_text, labels=JOB_LABELS)
            for (metric, labels), value in sorted(counts.items()):
                if metric == name:
                    family.add_metric(labels, value)
            yield family
        lost = CounterMetricFamily(
            PREFIX + WORKERS_LOST, "Workers declared lost by this process.", labels=["backend"]
        )
        for (metric, labels), value in sorted(counts.items()):
            if metric == WORKERS_LOST:
                lost.add_metric(labels, value)
        yield lost
        chores = CounterMetricFamily(
            PREFIX + MAINTENANCE_ERRORS,
            "Maintenance rounds in which a chore raised (logged; tried again next round).",
            labels=["service"],
        )
        for (metric, labels), value in sorted(counts.items()):
            if metric == MAINTENANCE_ERRORS:
                chores.add_metric(labels, value)
        yield chores
        for name, help_text in HISTOGRAMS.items():
            family = HistogramMetricFamily(PREFIX + name, help_text, labels=JOB_LABELS)
            for (metric, labels), row in sorted(histograms.items()):
                if metric == name:
                    buckets, _, total = cumulative(row)
                    family.add_metric(
                        labels, [(_bound(b), n) for b, n in buckets], sum_value=total
                    )
            yield family
        if self.worker is not None:
            info = GaugeMetricFamily(
                PREFIX + "worker_info", "This runjobs process.", labels=sorted(self.worker)
            )
            info.add_metric([self.worker[k] for k in sorted(self.worker)], 1)
            yield info
        if self.with_gauges:
            yield from self._gauges()

    def _gauges(self) -> Iterator[Metric]:
        try:
            reading = gauges.read(close_connection=self.close_connection)
        except Exception:
            # A scrape during a database outage still serves the counters.
            logger.warning("Could not read the queue gauges", exc_info=True)
            up = GaugeMetricFamily(PREFIX + "gauges_up", "1 if the gauges could be read.")
            up.add_metric([], 0)
            yield up
            return
        up = GaugeMetricFamily(PREFIX + "gauges_up", "1 if the gauges could be read.")
        up.add_metric([], 1)
        yield up
        by_queue: dict[str, GaugeMetricFamily] = {
            key: GaugeMetricFamily(PREFIX + key, text, labels=["queue"])
            for key, text in (
                ("queue_ready_jobs", "READY jobs that may run now."),
                ("queue_scheduled_jobs", "READY jobs due later (run_after, retry backoff)."),
                ("queue_running_jobs", "RUNNING jobs."),
                ("queue_blocked_jobs", "BLOCKED jobs (workflow steps waiting)."),
                ("queue_oldest_ready_age_seconds", "Age of the oldest job that may run now."),
            )
        }
        for name, ready, scheduled, running, blocked, oldest in reading.queues:
            by_queue["queue_ready_jobs"].add_metric([name], ready)
            by_queue["queue_scheduled_jobs"].add_metric([name], scheduled)
            by_queue["queue_running_jobs"].add_metric([name], running)
            by_queue["queue_blocked_jobs"].add_metric([name], blocked)
            # Unknown when the backlog is too big to read quickly: no sample, not a 0.
            if oldest is not None or not reading.estimated:
                by_queue["queue_oldest_ready_age_seconds"].add_metric([name], oldest or 0.0)
        yield from by_queue.values()
        estimated = GaugeMetricFamily(
            PREFIX + "queue_counts_estimated",
            "1 when the queue counts are the planner's estimates (too many rows to count).",
        )
        estimated.add_metric([], 1 if reading.estimated else 0)
        yield estimated
        by_backend = {
            key: GaugeMetricFamily(PREFIX + key, text, labels=["backend"])
            for key, text in (
                ("workers_alive", "Workers whose heartbeat is fresh."),
                ("worker_slots", "Job slots of the live workers (processes x threads)."),
                ("worker_busy_slots", "Job slots in use (RUNNING jobs)."),
            )
        }
        for backend, (alive, slots, busy) in sorted(reading.workers.items()):
            by_backend["workers_alive"].add_metric([backend], alive)
            by_backend["worker_slots"].add_metric([backend], slots)
            by_backend["worker_busy_slots"].add_metric([backend], busy)
        yield from by_backend.values()


def _bound(value: float) -> str:
    return "+Inf" if value == float("inf") else repr(value)


_installed: JobsCollector | None = None
_install_lock = threading.Lock()


def install(*, close_connection: bool = False) -> JobsCollector:
    """Register the collector with prometheus_client's default registry (once)."""
    global _installed
    with _install_lock:
        if _installed is None:
            _installed = JobsCollector(close_connection=close_connection)
            REGISTRY.register(_installed)
        return _installed


class _QuietHandler(WSGIRequestHandler):
    """No access log on stderr: a scrape every 15 s would drown the worker's own lines."""

    def log_message(self, format: str, *args: Any) -> None:
        pass


class MetricsServer:
    """``runjobs --metrics-port``: serve the default registry over HTTP on a thread."""

    def __init__(self, port: int, address: str = "0.0.0.0") -> None:  # noqa: S104
        self.port = port
        self.address = address
        self._server: Any = None
        self._thread: threading.Thread | None = None

    def start(self, worker_labels: dict[str, str] | None = None) -> None:
        collector = install(close_connection=True)
        if worker_labels is not None:
            collector.worker = {**worker_labels, "version": __version__}
        app = make_wsgi_app(REGISTRY)
        # Raises OSError (port in use) here, in the caller, before the worker starts.
        self._server = make_server(
            self.address, self.port, app, ThreadingWSGIServer, handler_class=_QuietHandler
        )
        self.port = self._server.server_port
        self._thread = threading.Thread(
            target=self._server.serve_forever, name="django_jobs-metrics", daemon=True
        )
        self._thread.start()

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
