"""Rescue the jobs of lost workers: RUNNING under a worker silent for ``WORKER_TIMEOUT``.

Each goes back to READY after its task's backoff, or to FAILED on its last attempt, with
a ``WorkerLost`` error: the policy (``policy.py``) decides, as for any failed attempt
that raised nothing in our hands. The jobs are locked, decided and moved in one
transaction; SKIP LOCKED passes over a job its live worker is finishing right now.
"""

import logging
from collections.abc import Callable

from .. import registry, signals
from ..backend import get_backend
from ..codec import class_path, encode_json, error_record
from ..compat import InvalidTaskBackend
from ..conf import JobsOptions
from ..exceptions import WorkerLost
from ..policy import Policy
from ..protocol import Cursor, jobs, workers

logger = logging.getLogger(__name__)


def backend_options(alias: str) -> JobsOptions:
    """The options of the jobs backend ``alias``; the defaults if it is not configured."""
    try:
        return get_backend(alias).jobs_options
    except InvalidTaskBackend:
        return JobsOptions()


_FATE = {
    "READY": "will run again",
    "FAILED": "no attempts left, FAILED",
    "CANCELLED": "it had been asked to cancel, CANCELLED",
}


class Rescuer:
    #: Jobs rescued per round (one transaction); a larger backlog takes several rounds.
    BATCH = 1000

    def __init__(
        self,
        *,
        worker_timeout: float,
        options_for: Callable[[str], JobsOptions] = backend_options,
    ) -> None:
        self.worker_timeout = worker_timeout
        self.options_for = options_for

    def run_once(self, cursor: Cursor) -> list[tuple[int, str, str]]:
        """Rescue up to BATCH lost jobs; return (job id, new state, lost worker) each."""
        with cursor.connection.transaction():
            gone = workers.mark_lost_workers(cursor, stale_after=self.worker_timeout)
            lost = workers.lock_lost_jobs(
                cursor, stale_after=self.worker_timeout, limit=self.BATCH
            )
            moved = jobs.fail(cursor, [self._failure(job) for job in lost])
        # Signals only once the moves are committed: a receiver never sees a rescue that
        # was rolled back.
        for worker in gone:
            if "/" in worker.id:
                continue  # a child's row: lost with its supervisor, announced once for both
            logger.warning(
                "Worker %s (host %s, pid %s) is lost: no heartbeat since %s",
                worker.id, worker.host, worker.pid, worker.last_heartbeat,
                extra={"action": "worker_lost"},
            )  # fmt: skip
            signals.send(
                signals.worker_lost, Rescuer, worker_id=worker.id, backend=worker.backend,
                host=worker.host, pid=worker.pid, last_heartbeat=worker.last_heartbeat,
            )  # fmt: skip
        rescued = []
        for job in lost:
            if job.id not in moved:
                continue
            state = moved[job.id][0]
            rescued.append((job.id, state, job.worker_id))
            logger.warning(
                "Rescued job %s from lost worker %s: %s", job.id, job.worker_id,
                _FATE.get(state, state),
                extra={"action": "job_rescued", "job_id": job.id},
            )  # fmt: skip
            signals.send(
                signals.job_rescued, Rescuer, job_id=job.id, task_path=job.task_path,
                queue_name=job.queue_name, backend=job.backend, attempt=job.attempts,
                lost_worker_id=job.worker_id, state=state,
            )  # fmt: skip
        return rescued

    def _failure(self, job: workers.LostJob) -> jobs.Failure:
        message = (
            f"worker {job.worker_id} was lost (no heartbeat for {self.worker_timeout:g} s) "
            f"while running attempt {job.attempts} of this job"
        )
        return failed_attempt(job, class_path(WorkerLost), message, self.options_for(job.backend))


def failed_attempt(
    job: workers.LostJob, exception_class: str, message: str, options: JobsOptions
) -> jobs.Failure:
    """An attempt that raised nothing in our hands (its worker or process was lost, or
    killed at its hard limit), as a failure: the policy retries it while attempts
    remain, whatever the task's retry_on says."""
    # find(), not get(): the leader and the supervisor settle jobs of tasks whose modules
    # they have not imported.
    policy = Policy.for_task(registry.find(job.task_path, job.task_proof), options)
    error = error_record(
        None,
        attempt=job.attempts,
        worker_id=job.worker_id,
        exception_class=exception_class,
        message=message,
    )
    return jobs.Failure(
        job.id,
        job.attempts,
        encode_json(error, "error"),
        policy.next_attempt_in(job.attempts, job.max_attempts),
    )
