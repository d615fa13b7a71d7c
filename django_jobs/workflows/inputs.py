"""What a workflow step receives from the steps before it, read when it starts.

Values are passed by reference: a step's row names its parents, and their return
values are read from their own rows here, once, when the step runs. A chord's callback
over 10,000 members reads 10,000 values in one query; none is copied into other rows.
"""

from typing import Any

from ..exceptions import ParentResultMissing
from ..models import Job, Receives
from ..protocol.jobs import ClaimedJob
from ..states import JobState


def step_inputs(job: ClaimedJob, database: str) -> list[Any]:
    """The values to pass before the step's own arguments: none, one, or one list."""
    if not job.receives or not job.parents:
        return []
    found = {
        row[0]: row[1:]
        for row in Job.objects.using(database)
        .filter(pk__in=job.parents)
        .values_list("id", "state", "return_value")
    }
    gone = [parent for parent in job.parents if found.get(parent, ("",))[0] != JobState.SUCCESSFUL]
    if gone:
        listed = ", ".join(str(p) for p in gone[:10]) + (" ..." if len(gone) > 10 else "")
        raise ParentResultMissing(
            f"Step {job.id} needs the results of the steps before it, but step(s) {listed} "
            "are gone or have not succeeded (deleted by hand, or retried meanwhile)."
        )
    values = [found[parent][1] for parent in job.parents]
    return [values[0]] if job.receives == Receives.VALUE else [values]
