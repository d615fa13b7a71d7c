"""Counters and histograms of job events in this process, which can be handed to another.

Metrics must count an event in whichever process it happens: a job runs in a child of
``runjobs``, its outcome is recorded in the supervisor (or, later, in the child), a
rescue happens in the maintenance leader. Prometheus scrapes one port per ``runjobs``,
served by the supervisor. So each process adds to its own :data:`TALLY`; a child
hands over what it added (:meth:`Tally.take`) through the pipe it already has, about
once a second, and the supervisor adds that to its own (:meth:`Tally.merge`).

Plain dicts and no third-party import: the Prometheus exposition of these numbers is
``metrics/``'s business. Nothing is counted until metrics are turned on in the process
(``metrics.enable()``), so a worker without metrics pays nothing.
"""

import bisect
import threading
from collections.abc import Sequence

Labels = tuple[str, ...]

#: Bucket upper bounds (seconds) for run times and queue waits: from a few milliseconds
#: (most jobs) to an hour (a long report, a backlog).
DURATION_BUCKETS: tuple[float, ...] = (
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
    120.0, 300.0, 600.0, 1800.0, 3600.0,
)  # fmt: skip


class Tally:
    """Monotonic counts by (name, labels), and histograms with fixed buckets."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        #: (name, labels) -> count
        self.counts: dict[tuple[str, Labels], float] = {}
        #: (name, labels) -> [count per bucket (the last is +Inf)..., sum]
        self.histograms: dict[tuple[str, Labels], list[float]] = {}
        #: What was added since the last take(), for a child to hand over.
        self._new_counts: dict[tuple[str, Labels], float] = {}
        self._new_histograms: dict[tuple[str, Labels], list[float]] = {}
        #: Whether this process counts at all (metrics.enable() turns it on).
        self.enabled = False

    def add(self, name: str, labels: Labels, value: float = 1.0) -> None:
        key = (name, labels)
        with self._lock:
            self.counts[key] = self.counts.get(key, 0.0) + value
            self._new_counts[key] = self._new_counts.get(key, 0.0) + value

    def observe(self, name: str, labels: Labels, value: float) -> None:
        """Add one observation (seconds) to a histogram with DURATION_BUCKETS."""
        key = (name, labels)
        slot = bisect.bisect_left(DURATION_BUCKETS, value)
        with self._lock:
            for store in (self.histograms, self._new_histograms):
                row = store.get(key)
                if row is None:
                    row = store[key] = [0.0] * (len(DURATION_BUCKETS) + 2)
                row[slot] += 1
                row[-1] += value

    def take(self) -> tuple[dict, dict] | None:
        """What was added since the last call (None if nothing), for ``merge`` elsewhere."""
        with self._lock:
            if not self._new_counts and not self._new_histograms:
                return None
            taken = (self._new_counts, self._new_histograms)
            self._new_counts, self._new_histograms = {}, {}
        return taken

    def merge(self, taken: tuple[dict, dict]) -> None:
        """Add what another process took."""
        counts, histograms = taken
        with self._lock:
            for key, value in counts.items():
                self.counts[key] = self.counts.get(key, 0.0) + value
            for key, row in histograms.items():
                mine = self.histograms.get(key)
                if mine is None:
                    self.histograms[key] = list(row)
                else:
                    for i, value in enumerate(row):
                        mine[i] += value

    def snapshot(self) -> tuple[dict[tuple[str, Labels], float], dict[tuple[str, Labels], list]]:
        """Copies of the totals, safe to read while others add."""
        with self._lock:
            return dict(self.counts), {k: list(v) for k, v in self.histograms.items()}

    def clear(self) -> None:
        with self._lock:
            self.counts.clear()
            self.histograms.clear()
            self._new_counts.clear()
            self._new_histograms.clear()


def cumulative(row: Sequence[float]) -> tuple[list[tuple[float, float]], float, float]:
    """A histogram row as ((upper bound, cumulative count)..., +Inf), count, sum."""
    buckets = []
    running = 0.0
    for bound, n in zip((*DURATION_BUCKETS, float("inf")), row[:-1], strict=True):
        running += n
        buckets.append((bound, running))
    return buckets, running, row[-1]


#: This process's tally.
TALLY = Tally()
