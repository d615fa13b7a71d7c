"""What goes into the job table's JSON columns: arguments, return values, error records.

Everything stored must be JSON that PostgreSQL's ``jsonb`` accepts, so this module is
the one place that encodes it and says, in the error, which value was at fault. It sits
below the backend (enqueue), the runtime (return values and errors) and the schedules
(declared arguments), and imports none of them.
"""

import inspect
import json
import re
import traceback
from collections.abc import Callable, Mapping, Sequence
from functools import lru_cache
from typing import Any

from .compat import Task, normalize_json

# A JSON escape of NUL (not preceded by an escaped backslash): jsonb refuses it.
_JSON_NUL = re.compile(r"(?<!\\)(?:\\\\)*\\u0000")


# allow_nan=False: PostgreSQL's jsonb has no NaN or Infinity. One encoder for every call:
# json.dumps() with options builds a new JSONEncoder each time, which costs as much as
# encoding a short argument list (the encoder keeps no state between calls).
_dumps = json.JSONEncoder(allow_nan=False, ensure_ascii=False, separators=(",", ":")).encode


def _to_text(value: Any) -> str:
    """JSON text of ``value`` as Django's Tasks framework normalizes it.

    ``json.dumps`` alone gives the same text whenever it succeeds (tuples become arrays,
    keys become strings); only what it refuses (bytes, other mappings and sequences) is
    worth ``normalize_json``'s recursive walk, which costs more than the dump itself.
    """
    try:
        return _dumps(value)
    except (TypeError, ValueError):
        return _dumps(normalize_json(value))


def _storable(text: str, what: str) -> str:
    if text.isascii():
        pass  # nothing to check but the escapes below
    else:
        try:
            text.encode("utf-8")
        except UnicodeEncodeError:
            raise TypeError(
                f"{what} contains text that is not valid Unicode (a lone surrogate such as "
                "'\\ud800'), which PostgreSQL cannot store; clean the text before "
                "enqueueing."
            ) from None
    # The substring test is a fast memchr; the pattern sorts out escaped backslashes.
    if "\\u0000" in text and _JSON_NUL.search(text):
        raise TypeError(
            f"{what} contains a NUL character (\\x00), which PostgreSQL cannot store in "
            "JSON; remove it or encode the text (for example as base64)."
        )
    return text


def encode_json(value: Any, what: str) -> str:
    """Return ``value`` as JSON text, or raise TypeError saying which value is not JSON."""
    try:
        text = _to_text(value)
    except (TypeError, ValueError) as exc:
        raise TypeError(
            f"{what} is not JSON-serialisable ({exc}); got {type(value).__name__} "
            f"{preview(value)}. Pass plain data such as ids, strings and numbers, and "
            "load objects inside the task."
        ) from None
    return _storable(text, what)


def preview(value: Any, width: int = 80) -> str:
    """A ``repr`` short enough for an error message."""
    text = repr(value)
    return text if len(text) <= width else text[: width - 3] + "..."


def encode_arguments(
    task: Task, args: Sequence[Any], kwargs: Mapping[str, Any]
) -> tuple[str, str]:
    """Return args and kwargs as JSON text; an error names the argument at fault.

    The common case (everything is JSON) encodes each list once, and no arguments at
    all (or no keyword arguments) costs nothing; only a failure pays for checking the
    arguments one by one to say which one it was.
    """
    for name in kwargs:
        if not isinstance(name, str):
            raise TypeError(
                f"Keyword argument names must be strings; task {task.module_path!r} got {name!r}."
            )
    try:
        # json takes a tuple as an array and a dict as itself: no copies needed.
        args_json = (
            encode_json(args if isinstance(args, list | tuple) else list(args), "args")
            if args
            else "[]"
        )
        kwargs_json = (
            encode_json(kwargs if isinstance(kwargs, dict) else dict(kwargs), "kwargs")
            if kwargs
            else "{}"
        )
        return args_json, kwargs_json
    except TypeError:
        for index, value in enumerate(args):
            encode_json(value, f"Argument {index} of task {task.module_path!r}")
        for name, value in kwargs.items():
            encode_json(value, f"Keyword argument {name!r} of task {task.module_path!r}")
        raise


def encode_calls(calls: Sequence[tuple[Task, Sequence[Any], Mapping[str, Any], int]]) -> str:
    """One JSON document for a batch of calls: ``[[args, kwargs, n], ...]``.

    A bulk enqueue sends its arguments as this one text, which PostgreSQL takes apart
    (``jsonb_array_elements``): one encoding for the batch instead of two per job. A
    value that is not JSON is looked for call by call only when the batch fails, so the
    error still names the task and the argument.
    """
    for task, _, kwargs, _ in calls:
        for name in kwargs:
            if not isinstance(name, str):
                raise TypeError(
                    "Keyword argument names must be strings; task "
                    f"{task.module_path!r} got {name!r}."
                )
    try:
        text = _dumps([(args, kwargs, n) for _, args, kwargs, n in calls])
    except (TypeError, ValueError):
        for task, args, kwargs, _ in calls:
            encode_arguments(task, args, kwargs)  # raises, naming the argument at fault
        # Every call is JSON once normalized (bytes, other mappings): take that path.
        text = _dumps(
            [(normalize_json(list(a)), normalize_json(dict(k)), n) for _, a, k, n in calls]
        )
    try:
        return _storable(text, "the batch")
    except TypeError:
        for task, args, kwargs, _ in calls:
            encode_arguments(task, args, kwargs)
        raise


def call_problem(task: Task, args: Any, kwargs: Any) -> str | None:
    """Return why ``task(*args, **kwargs)`` cannot be enqueued, or None if it can.

    Checks that the arguments are a list and a mapping of JSON values, and that they
    bind to the function's signature (a context argument first, when it takes one).
    """
    if not isinstance(args, list | tuple):
        return f"args must be a JSON list, got {type(args).__name__}."
    if not isinstance(kwargs, Mapping):
        return f"kwargs must be a JSON object, got {type(kwargs).__name__}."
    try:
        encode_arguments(task, args, kwargs)
    except TypeError as exc:
        return str(exc)
    return binding_problem(task, args, kwargs)


@lru_cache(maxsize=1024)
def _signature(func: Callable[..., Any]) -> inspect.Signature | None:
    try:
        return inspect.signature(func)
    except (TypeError, ValueError):
        return None  # No signature to check against (a builtin, say): let it run.


def binding_problem(
    task: Task, args: Sequence[Any], kwargs: Mapping[str, Any], *, leading: int = 0
) -> str | None:
    """Return why ``args``/``kwargs`` do not bind to the task's function, or None.

    ``leading`` values are passed in front of them (a workflow step's inputs), after
    the context when the task takes one.
    """
    signature = _signature(task.func)
    if signature is None:
        return None
    placeholders = (None,) * ((1 if task.takes_context else 0) + leading)
    try:
        signature.bind(*placeholders, *args, **kwargs)
    except TypeError as exc:
        return f"The arguments do not fit {task.module_path}{signature}: {exc}."
    return None


def storable_text(text: str) -> str:
    """Text as jsonb can hold it: no NUL characters, no lone surrogates."""
    text = text.replace("\x00", "\\x00")
    return text.encode("utf-8", "backslashreplace").decode("utf-8")


def class_path(kind: type[BaseException]) -> str:
    """The dotted path an error record names an exception class by."""
    return f"{kind.__module__}.{kind.__qualname__}"


def error_record(
    exc: BaseException | None,
    *,
    attempt: int,
    worker_id: str,
    exception_class: str | None = None,
    message: str | None = None,
) -> dict[str, Any]:
    """The dict stored in ``Job.errors`` for one failed attempt.

    From an exception (class, message and traceback), or, for a failure that raised
    nothing in this process (a child killed at its time limit), from the class path
    and message given.
    """
    if exc is not None:
        exception_class = class_path(type(exc))
        message = str(exc)
        trace = "".join(traceback.format_exception(exc))
    else:
        trace = ""
    return {
        "exception_class_path": exception_class,
        "message": storable_text(message or ""),
        "traceback": storable_text(trace),
        "worker_id": worker_id,
        "attempt": attempt,
    }
