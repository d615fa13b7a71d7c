"""Rescue the jobs of lost workers: RUNNING under a worker silent for ``WORKER_TIMEOUT``.

Each goes back to READY after its task's backoff, or to FAILED on its last attempt, with
a ``WorkerLost`` error: the policy (``policy.py``) decides, as for any failed attempt
that raised nothing in our hands. The jobs are locked, decided and moved in one
transaction; SKIP LOCKED passes over a job its live worker is finishing right now.
"""

import logging
from collections.abc import Callable

from .. import registry
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
            lost = workers.lock_lost_jobs(
                cursor, stale_after=self.worker_timeout, limit=self.BATCH
            )
            moved = jobs.fail(cursor, [self._failure(job) for job in lost])
        rescued = [(job.id, moved[job.id][0], job.worker_id) for job in lost if job.id in moved]
        for job_id, state, worker in rescued:
            logger.warning(
                "Rescued job %s from lost worker %s: %s", job_id, worker,
                _FATE.get(state, state), extra={"action": "job_rescued", "job_id": job_id},
            )  # fmt: skip
        return rescued

    def _failure(self, job: workers.LostJob) -> jobs.Failure:
        """The lost attempt as a failure that raised nothing: the policy retries it if
        attempts remain, whatever the task's retry_on says."""
        policy = Policy.for_task(registry.get(job.task_path), self.options_for(job.backend))
        error = error_record(
            None,
            attempt=job.attempts,
            worker_id=job.worker_id,
            exception_class=class_path(WorkerLost),
            message=f"worker {job.worker_id} was lost (no heartbeat for "
            f"{self.worker_timeout:g} s) while running attempt {job.attempts} of this job",
        )
        return jobs.Failure(
            job.id,
            job.attempts,
            encode_json(error, "error"),
            policy.next_attempt_in(job.attempts, job.max_attempts),
        )
