"""The job's states, which moves between them are legal, and how they look to django.tasks.

Also what a workflow step receives from its parents (``Receives``), a closed set of
column values like the states.

The table keeps the exact state; ``django.tasks`` only knows four statuses, so the
mapping to ``TaskResultStatus`` lives here and nowhere else.
"""

from django.db import models

from .compat import TaskResultStatus


class JobState(models.TextChoices):
    READY = "READY", "Ready"
    RUNNING = "RUNNING", "Running"
    SUCCESSFUL = "SUCCESSFUL", "Successful"
    FAILED = "FAILED", "Failed"
    CANCELLED = "CANCELLED", "Cancelled"
    # A workflow step waiting for its parents: the statement that finishes the last one
    # makes it READY (protocol/workflows.py).
    BLOCKED = "BLOCKED", "Blocked"


# Not a state, but a job column's closed set of values like them, and needed where the
# models may not be imported yet (a worker's child process before django.setup()).
class Receives(models.TextChoices):
    """What a workflow step is given from its parents, before its own arguments."""

    NOTHING = "", "nothing"
    #: The return value of its one parent (a step after a step in a chain).
    VALUE = "value", "the previous step's return value"
    #: The list of its parents' return values, in order (a chord's callback).
    LIST = "list", "the list of the previous steps' return values"


#: The states a job never leaves by itself, in the order the partial index on finished
#: rows names them (models.Job.Meta.indexes).
FINISHED = (JobState.SUCCESSFUL, JobState.FAILED, JobState.CANCELLED)
FINISHED_STATES = frozenset(FINISHED)


def sql_list(states: tuple[str, ...]) -> str:
    """``('A', 'B')``: states as SQL literals, for predicates that must match a partial
    index's own (the planner proves an index applies only from literals)."""
    return "(" + ", ".join(f"'{JobState(s).value}'" for s in states) + ")"


#: The finished states as an SQL list, spelled as in the finished-rows index.
FINISHED_SQL = sql_list(FINISHED)

# Which moves the queue protocol may make. tests/integration/test_transitions.py puts a
# job in each state, runs every state-changing protocol function on it, and checks that
# each move it sees is listed here.
TRANSITIONS: dict[JobState, frozenset[JobState]] = {
    JobState.BLOCKED: frozenset({JobState.READY, JobState.CANCELLED}),
    JobState.READY: frozenset({JobState.RUNNING, JobState.CANCELLED}),
    # RUNNING -> READY is a retry (or a release at shutdown).
    JobState.RUNNING: frozenset(
        {JobState.SUCCESSFUL, JobState.FAILED, JobState.READY, JobState.CANCELLED}
    ),
    JobState.SUCCESSFUL: frozenset(),
    # An operator may re-queue a failed or cancelled job. A workflow step re-queued with
    # its workflow waits again (BLOCKED) for parents that have not succeeded.
    JobState.FAILED: frozenset({JobState.READY, JobState.BLOCKED}),
    JobState.CANCELLED: frozenset({JobState.READY, JobState.BLOCKED}),
}

_TO_TASK_STATUS = {
    JobState.READY: TaskResultStatus.READY,
    # A blocked step has not run yet and will run later: READY is the honest coarse answer.
    JobState.BLOCKED: TaskResultStatus.READY,
    JobState.RUNNING: TaskResultStatus.RUNNING,
    JobState.SUCCESSFUL: TaskResultStatus.SUCCESSFUL,
    JobState.FAILED: TaskResultStatus.FAILED,
    # Cancelled jobs will never produce a value: FAILED is what callers polling a result need.
    JobState.CANCELLED: TaskResultStatus.FAILED,
}


def to_task_status(state: str) -> TaskResultStatus:
    """Map a table state onto the four statuses ``django.tasks`` knows."""
    return _TO_TASK_STATUS[JobState(state)]


def can_move(source: str, target: str) -> bool:
    """Whether the protocol may move a job from ``source`` to ``target``."""
    return JobState(target) in TRANSITIONS[JobState(source)]
