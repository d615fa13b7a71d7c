"""Signals of ours, for what Django's three task signals do not carry.

Django sends ``task_enqueued`` (in the process that enqueues, after the row is written),
``task_started`` (where the job runs, before the function is called) and
``task_finished`` (where the outcome is recorded, after the database took it, only once
the job is final: SUCCESSFUL, FAILED, or CANCELLED while it ran). An attempt after which
the job runs again is not "finished": it is announced by ``job_retrying`` or
``job_snoozed`` below. These add the rest. Every receiver gets ``sender``
(the backend class, or the class named below) and keyword arguments; accept
``**kwargs`` so that arguments added later do not break you.

Each is documented with the process it fires in (docs/reference/signals.md). Receivers
run synchronously in that process: keep them short, and never let them raise: a
receiver's exception is logged and swallowed (``send_robust``) so monitoring can never
change a job's outcome.
"""

import logging
from typing import Any

from django.dispatch import Signal

logger = logging.getLogger(__name__)

#: A failed attempt was recorded and the job will run again (status READY). Sent
#: instead of ``task_finished``, which is only for final states.
#: Fires where outcomes are recorded (the worker), after the database took it.
#: Arguments: ``task_result`` (status READY), ``error`` (the error record: exception
#: class path, message, traceback, attempt), ``delay`` (seconds until the next attempt).
job_retrying = Signal()

#: A job raised ``Snooze``: it runs again after ``delay`` seconds, no error counted.
#: Sent instead of ``task_finished`` (the job is READY, not finished).
#: Fires where outcomes are recorded. Arguments: ``task_result`` (status READY),
#: ``delay``.
job_snoozed = Signal()

#: A RUNNING job of a lost worker was rescued by the maintenance leader.
#: Fires in the leader's ``runjobs`` process. Arguments: ``job_id``, ``task_path``,
#: ``queue_name``, ``backend`` (alias), ``attempt`` (the attempt that was lost),
#: ``lost_worker_id``, ``state`` ("READY" if it will run again, else "FAILED").
job_rescued = Signal()

#: Jobs were cancelled by an operator (admin, ``jobs cancel``, the HTTP API).
#: Fires in that process once the cancel has committed, once per job. Arguments:
#: ``job_id``, ``task_path``, ``queue_name``, ``backend`` (alias).
job_cancelled = Signal()

#: A maintenance chore failed in the leader: a service (``"Rescuer"``, ``"Pruner"``,
#: ``"LimitKeeper"``) raised, or the lease statement did (``"the maintenance lease"``).
#: The worker goes on, and the next round tries again; the error is also logged with its
#: traceback. Fires in that ``runjobs`` process (the supervisor). Sender: the Leader
#: class. Arguments: ``worker_id``, ``service`` (the name above), ``exception``.
maintenance_failed = Signal()

#: A ``runjobs`` process registered and is about to serve. Fires in that process.
#: Sender: the Supervisor class. Arguments: ``worker_id``, ``backend`` (alias),
#: ``queues`` (list, or None for all), ``concurrency`` (job slots).
worker_started = Signal()

#: A ``runjobs`` process stopped cleanly and deregistered. Fires in that process.
#: Sender: the Supervisor class. Arguments: ``worker_id``, ``backend``, ``stats`` (a
#: dict of counts: claimed, succeeded, failed, retried, snoozed, released, lost).
worker_stopped = Signal()

#: The maintenance leader declared a worker lost (no heartbeat for WORKER_TIMEOUT),
#: once per loss. Fires in the leader's ``runjobs`` process. Arguments: ``worker_id``,
#: ``backend``, ``host``, ``pid``, ``last_heartbeat`` (aware datetime).
worker_lost = Signal()


def send(signal: Signal, sender: Any, **kwargs: Any) -> None:
    """Send ``signal``, logging (never raising) what a receiver raises."""
    if not signal.has_listeners(sender):
        return
    for receiver, result in signal.send_robust(sender, **kwargs):
        if isinstance(result, Exception):
            logger.error(
                "Receiver %r of a django_jobs signal raised; ignored", receiver,
                exc_info=result, extra={"action": "signal_receiver_failed"},
            )  # fmt: skip
