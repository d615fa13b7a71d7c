"""Webhook deliveries: a job of its own for each finished job that names a callback URL.

The delivery is enqueued by the very statement that records the outcome (a
data-modifying CTE appended to it), so it commits with the outcome or not at all: no
finished job loses its webhook to a crash between two statements, and no webhook is
sent for an outcome that was rolled back. The payload is built there, from the row as
the statement leaves it, and stored in the delivery's arguments: what is sent does not
depend on the job still existing (or being unchanged) when the delivery runs.

Rows without a callback URL cost the statement a NULL test each.
"""

from ..conf import DELIVERY_TASK
from . import NOTIFY_CHANNEL

__all__ = ["DELIVERY_MAX_ATTEMPTS", "DELIVERY_TASK", "RETURNING", "deliveries"]
#: Attempts of one delivery: with the task's backoff (5 s doubling, at most an hour
#: apart, each a random point in the upper half of its window) the last one comes
#: five to six hours after the first.
DELIVERY_MAX_ATTEMPTS = 16

# Columns the outcome statements return for the delivery CTE, from the row as updated.
# The payload is built only for rows with a callback URL (CASE): the others carry NULLs.
RETURNING = """
j.callback_url AS callback_url, j.queue_name AS hook_queue, j.backend AS hook_backend,
j.priority AS hook_priority,
CASE WHEN j.callback_url IS NOT NULL THEN jsonb_build_object(
    'id', j.id::text,
    'task', j.task_path,
    'queue', j.queue_name,
    'backend', j.backend,
    'state', j.state,
    'attempts', j.attempts,
    'max_attempts', j.max_attempts,
    'enqueued_at', j.enqueued_at,
    'started_at', j.started_at,
    'finished_at', j.finished_at,
    'return_value', j.return_value,
    'error', CASE WHEN jsonb_array_length(j.errors) > 0 THEN jsonb_build_object(
        'exception_class', j.errors -> -1 -> 'exception_class_path',
        'message', j.errors -> -1 -> 'message',
        'attempt', j.errors -> -1 -> 'attempt')
    END
) END AS hook_job
"""


def deliveries(source: str, event: str) -> str:
    """A CTE (``deliveries AS (...)``) enqueueing one delivery per finished row of
    ``source`` (a CTE returning :data:`RETURNING`) that has a callback URL, and waking
    the workers of its queue."""
    return f"""
deliveries AS (
    INSERT INTO django_jobs_job (
        task_path, queue_name, priority, state, backend, args, kwargs,
        available_at, enqueued_at, attempts, max_attempts, worker_ids, errors
    )
    SELECT '{DELIVERY_TASK}', s.hook_queue, s.hook_priority, 'READY', s.hook_backend,
           jsonb_build_array(
               s.callback_url,
               jsonb_build_object('type', '{event}', 'timestamp', now(), 'data', s.hook_job)
           ),
           '{{}}'::jsonb, now(), now(), 0, {DELIVERY_MAX_ATTEMPTS}, '[]'::jsonb, '[]'::jsonb
    FROM {source} AS s
    WHERE s.callback_url IS NOT NULL AND s.hook_job ->> 'state' IN ('SUCCESSFUL', 'FAILED',
                                                                    'CANCELLED')
    -- Evaluated for every row inserted, though nothing reads it: the wake-up, delivered
    -- on commit.
    RETURNING pg_notify('{NOTIFY_CHANNEL}', queue_name)
)"""
