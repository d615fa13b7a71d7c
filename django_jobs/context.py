"""What a running job can ask and tell: has someone cancelled me, and how far along am I.

Task code reaches it two ways: ``context.cancel_requested`` and ``context.set_progress()``
on the :class:`JobContext` a ``takes_context=True`` task receives, or the module-level
:func:`cancel_requested` and :func:`set_progress`, which find the job running in the
current thread (or asyncio task) from any code, however deep. Outside a job they do
nothing (``cancel_requested()`` is False), so library code may call them freely.

The worker supplies the :class:`JobControl` behind both. Progress never touches the
database from the job's thread: the control hands it to the worker, which writes it
(:class:`ProgressThrottle` keeps that to one write per job per second, and the last
value is always written).
"""

import contextvars
import math
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Protocol

from django.utils.dateparse import parse_datetime

from .codec import storable_text
from .compat import TaskContext

#: Longest progress message kept; longer ones are cut (a progress line, not a log).
MAX_MESSAGE = 500


class JobControl(Protocol):
    """The worker's side of a running job (see worker/control.py)."""

    @property
    def cancel_requested(self) -> bool: ...

    def set_progress(self, progress: dict[str, Any]) -> None: ...


_current: contextvars.ContextVar[JobControl | None] = contextvars.ContextVar(
    "django_jobs_running_job", default=None
)


@contextmanager
def running(control: JobControl) -> Iterator[None]:
    """Make ``control`` the current job's for the code run inside (the executor's call)."""
    token = _current.set(control)
    try:
        yield
    finally:
        _current.reset(token)


def progress_payload(done: float, total: float | None = None, message: str = "") -> dict:
    """``{"done", "total", "message"}``; raise TypeError or ValueError naming a bad value."""

    def number(value: Any) -> bool:
        return (
            isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)
        )

    if not number(done) or done < 0:
        raise ValueError(f"set_progress(): done must be a number >= 0, got {done!r}.")
    if total is not None and (not number(total) or total <= 0):
        raise ValueError(f"set_progress(): total must be None or a number > 0, got {total!r}.")
    if total is not None and done > total:
        raise ValueError(
            f"set_progress(): done ({done!r}) is more than total ({total!r}); pass the "
            "number of units finished so far, and the number there are in all."
        )
    if not isinstance(message, str):
        raise TypeError(f"set_progress(): message must be a str, got {type(message).__name__}.")
    return {"done": done, "total": total, "message": storable_text(message[:MAX_MESSAGE])}


def set_progress(done: float, total: float | None = None, message: str = "") -> None:
    """Report the current job's progress; do nothing outside a job.

    ``done`` units of ``total`` (None: unknown), with a short ``message``. Cheap to call
    often: the worker writes at most one value per job per second, and always the last.
    """
    payload = progress_payload(done, total, message)
    control = _current.get()
    if control is not None:
        control.set_progress(payload)


def cancel_requested() -> bool:
    """Whether someone asked to cancel the job running here (False outside a job)."""
    control = _current.get()
    return control is not None and control.cancel_requested


@dataclass(frozen=True, slots=True, kw_only=True)
class JobContext(TaskContext):
    """Django's ``TaskContext``, plus cancellation and progress for a job of this backend."""

    control: JobControl | None = field(default=None, repr=False, compare=False)

    @property
    def cancel_requested(self) -> bool:
        """Whether someone asked to cancel this job: return (or raise) soon if so."""
        return self.control is not None and self.control.cancel_requested

    def set_progress(self, done: float, total: float | None = None, message: str = "") -> None:
        """Report how far this job has got (see :func:`django_jobs.set_progress`)."""
        payload = progress_payload(done, total, message)
        if self.control is not None:
            self.control.set_progress(payload)


@dataclass(frozen=True, slots=True)
class Progress:
    """A job's progress as last written: ``done`` of ``total`` units, and a message."""

    done: float
    total: float | None
    message: str
    #: The attempt that reported it, and when it was written (database clock).
    attempt: int | None
    updated_at: datetime | None

    @property
    def fraction(self) -> float | None:
        """``done / total`` between 0 and 1, or None when the total is unknown."""
        if not self.total:
            return None
        return max(0.0, min(1.0, self.done / self.total))

    @classmethod
    def from_json(cls, value: Any) -> "Progress | None":
        """The progress stored in a job row's ``progress`` column, or None."""
        if not isinstance(value, dict) or "done" not in value:
            return None
        updated = value.get("updated_at")
        return cls(
            done=value["done"],
            total=value.get("total"),
            message=value.get("message") or "",
            attempt=value.get("attempt"),
            updated_at=parse_datetime(updated) if isinstance(updated, str) else None,
        )


class ProgressThrottle:
    """Pass on at most one progress value per ``interval`` seconds; never drop the last.

    ``offer()`` sends at once when the last send is ``interval`` old, else keeps the
    value (replacing any kept before); ``flush_due()`` sends a kept value once its time
    has come, and ``flush()`` sends it now (the job has ended). Thread-safe: the job's
    thread offers, another thread flushes.
    """

    def __init__(
        self,
        send: Callable[[dict[str, Any]], None],
        *,
        interval: float = 1.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._send = send
        self.interval = interval
        self._clock = clock
        self._lock = threading.Lock()
        self._last: float | None = None
        self._held: dict[str, Any] | None = None
        #: The last value offered (sent or not): what the job reported last.
        self.latest: dict[str, Any] | None = None

    def offer(self, payload: dict[str, Any]) -> None:
        with self._lock:
            self.latest = payload
            now = self._clock()
            if self._last is None or now - self._last >= self.interval:
                self._last, self._held = now, None
            else:
                self._held = payload
                return
        self._send(payload)

    def due_in(self) -> float | None:
        """Seconds until a kept value is due (0: now), or None when nothing is kept."""
        with self._lock:
            if self._held is None or self._last is None:
                return None
            return max(0.0, self._last + self.interval - self._clock())

    def flush_due(self) -> None:
        due = self.due_in()
        if due is not None and due <= 0:
            self.flush()

    def flush(self) -> None:
        payload = self.take()
        if payload is not None:
            self._send(payload)

    def take(self) -> dict[str, Any] | None:
        """The kept value, now counted as sent (the caller writes it), or None."""
        with self._lock:
            payload, self._held = self._held, None
            if payload is not None:
                self._last = self._clock()
        return payload
