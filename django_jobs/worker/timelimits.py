"""Soft time limits: raise SoftTimeLimitExceeded inside a task that runs too long.

In a process's main thread a timer signal (SIGALRM) does it, which also interrupts
blocking calls such as ``time.sleep``. In other threads Python offers only an
asynchronous exception, delivered at the next bytecode the thread runs: a thread
stuck in one long C call sees it only when the call returns. The hard limit (the
process is killed) covers what a soft limit cannot reach.
"""

import ctypes
import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager

from ..exceptions import SoftTimeLimitExceeded


def _raise_soft_limit(signum: int, frame: object) -> None:
    raise SoftTimeLimitExceeded("the job ran past its soft time limit")


@contextmanager
def soft_time_limit(seconds: float | None) -> Iterator[None]:
    """Raise SoftTimeLimitExceeded in the current thread after ``seconds``."""
    if not seconds:
        yield
        return
    if threading.current_thread() is threading.main_thread() and hasattr(signal, "setitimer"):
        previous = signal.signal(signal.SIGALRM, _raise_soft_limit)
        signal.setitimer(signal.ITIMER_REAL, seconds)
        try:
            yield
        finally:
            signal.setitimer(signal.ITIMER_REAL, 0)
            signal.signal(signal.SIGALRM, previous)
        return
    target = threading.get_ident()
    lock = threading.Lock()
    state = {"done": False, "fired": False}

    def interrupt() -> None:
        # Under the lock, so the exception is never set after the block has ended.
        with lock:
            if not state["done"]:
                state["fired"] = True
                _set_async_exc(target, SoftTimeLimitExceeded)

    timer = threading.Timer(seconds, interrupt)
    timer.daemon = True
    timer.start()
    try:
        yield
    finally:
        timer.cancel()
        with lock:
            state["done"] = True
            if state["fired"]:
                # Fired, but maybe not delivered yet (the thread was in a long C call):
                # withdraw it, or it would strike the code that runs after the job.
                _set_async_exc(target, None)


def _set_async_exc(thread_id: int, exception: type[BaseException] | None) -> None:
    ctypes.pythonapi.PyThreadState_SetAsyncExc(
        ctypes.c_ulong(thread_id), ctypes.py_object(exception) if exception else None
    )
