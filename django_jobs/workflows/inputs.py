"""What a workflow step receives from the steps before it, read when it starts.

Values are passed by reference: a step's row names its parents, and their return
values are read from their own rows here, once, when the step runs. A chord's callback
over 10,000 members reads 10,000 values in one query; none is copied into other rows.
(Read through the protocol, not the models: a worker's child imports this before
Django is set up.)
"""

from typing import Any

from django.db import connections

from ..exceptions import ParentResultMissing
from ..protocol.jobs import ClaimedJob
from ..protocol.workflows import parent_results
from ..states import JobState, Receives


def step_inputs(job: ClaimedJob, database: str) -> list[Any]:
    """The values to pass before the step's own arguments: none, one, or one list."""
    if not job.receives or not job.parents:
        return []
    with connections[database].cursor() as cursor:
        found = parent_results(cursor, job.parents)
    gone = [parent for parent in job.parents if found.get(parent, ("",))[0] != JobState.SUCCESSFUL]
    if gone:
        listed = ", ".join(str(p) for p in gone[:10]) + (" ..." if len(gone) > 10 else "")
        raise ParentResultMissing(
            f"Step {job.id} needs the results of the steps before it, but step(s) {listed} "
            "are gone or have not succeeded (deleted by hand, or retried meanwhile)."
        )
    values = [found[parent][1] for parent in job.parents]
    return [values[0]] if job.receives == Receives.VALUE else [values]
