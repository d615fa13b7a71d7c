"""Every state-changing protocol call, on a job in every state, moves it only as
``states.TRANSITIONS`` allows.

The table of legal moves is checked against what the statements do to real rows, not
against itself: a statement that could, say, bring a SUCCESSFUL job back to READY
fails here whatever its comment says.
"""

from datetime import timedelta
from types import SimpleNamespace

import pytest
from django.db import connection
from django.utils import timezone

from django_jobs.models import Job, Workflow
from django_jobs.protocol import jobs, limiters, operator, workflows
from django_jobs.services.rescuer import Rescuer
from django_jobs.states import TRANSITIONS, JobState, can_move
from testproject.example import tasks

pytestmark = pytest.mark.django_db

WORKER = "transitions-test-worker"


def finish_a_parent(cur, job_id: int) -> None:
    """Complete a running parent that the job waits on (its last one)."""
    parent = int(tasks.add.enqueue(1, 1).id)
    Job.objects.filter(pk=parent).update(state="RUNNING", attempts=1, dependents=[job_id])
    Job.objects.filter(pk=job_id).update(pending_parents=1)
    jobs.complete(cur, [jobs.Success(parent, 1, "2")])


def retry_its_workflow(cur, job_id: int) -> None:
    """Retry the workflow of a step whose parent has not run yet."""
    workflow = Workflow.objects.create(backend="default", step_count=2)
    parent = int(tasks.add.enqueue(1, 1).id)
    Job.objects.filter(pk__in=[parent, job_id]).update(workflow=workflow)
    Job.objects.filter(pk=job_id).update(parents=[parent])
    workflows.retry_steps(cur, [workflow.pk], grant=1)


def limited_claim(cur):
    """The claim of a process that declares limits (jobs with none go through it too)."""
    saved = limiters.activation
    limiters.activation = limiters.Activation(lambda backend: ([], [], True))
    try:
        return jobs.claim(cur, worker_id="another", backend="default", queues=None, limit=10)
    finally:
        limiters.activation = saved


#: name -> the call, given a cursor and the job's id. Each names the job's attempt 1,
#: which is what a job in the table holds after one claim.
MOVES = {
    "claim": lambda cur, job_id: jobs.claim(
        cur, worker_id="another", backend="default", queues=None, limit=10
    ),
    # django_jobs.testing's claim: its horizon reaches the READY job due in an hour.
    "claim in test": lambda cur, job_id: jobs.claim_in_test(
        cur,
        worker_id="another",
        backend="default",
        ids=[job_id],
        due_by=timezone.now() + timedelta(hours=2),
    ),
    "claim, limited": lambda cur, job_id: limited_claim(cur),
    "complete": lambda cur, job_id: jobs.complete(cur, [jobs.Success(job_id, 1, "1")]),
    "fail, retry": lambda cur, job_id: jobs.fail(cur, [jobs.Failure(job_id, 1, "{}", 5.0)]),
    "fail, final": lambda cur, job_id: jobs.fail(cur, [jobs.Failure(job_id, 1, "{}", None)]),
    "snooze": lambda cur, job_id: jobs.snooze(cur, [jobs.Snoozed(job_id, 1, 5.0, 2)]),
    "stopped after a cancel": lambda cur, job_id: jobs.cancelled(
        cur, [jobs.Cancelled(job_id, 1, "{}")]
    ),
    "a parent finishes": finish_a_parent,
    "workflow retry": retry_its_workflow,
    "release": lambda cur, job_id: jobs.release(cur, [SimpleNamespace(id=job_id, attempts=1)]),
    "release orphans": lambda cur, job_id: jobs.release_orphans(cur, worker_id=WORKER, held=[]),
    # No worker row for WORKER: the job's worker is lost.
    "rescue": lambda cur, job_id: Rescuer(worker_timeout=30).run_once(cur),
    "operator retry": lambda cur, job_id: operator.retry_jobs(cur, [job_id]),
    # On a RUNNING job it only records the request: its worker ends it ("stopped ...").
    "operator cancel": lambda cur, job_id: operator.cancel_jobs(cur, [job_id], by="t"),
    "operator run now": lambda cur, job_id: operator.run_jobs_now(cur, [job_id]),
}

#: What each call does from which state: the moves seen must be exactly these, so a
#: statement that silently stops moving jobs (or starts moving more) is noticed too.
EXPECTED = {
    ("claim", "READY", "RUNNING"),
    ("claim in test", "READY", "RUNNING"),
    ("claim, limited", "READY", "RUNNING"),
    ("complete", "RUNNING", "SUCCESSFUL"),
    ("fail, retry", "RUNNING", "READY"),
    ("fail, final", "RUNNING", "FAILED"),
    ("snooze", "RUNNING", "READY"),
    ("stopped after a cancel", "RUNNING", "CANCELLED"),
    ("a parent finishes", "BLOCKED", "READY"),
    ("workflow retry", "FAILED", "BLOCKED"),
    ("workflow retry", "CANCELLED", "BLOCKED"),
    ("release", "RUNNING", "READY"),
    ("release orphans", "RUNNING", "READY"),
    ("rescue", "RUNNING", "FAILED"),
    ("operator retry", "FAILED", "READY"),
    ("operator retry", "CANCELLED", "READY"),
    ("operator cancel", "READY", "CANCELLED"),
    ("operator cancel", "BLOCKED", "CANCELLED"),
}


def job_in(state: str) -> int:
    job_id = int(tasks.add.enqueue(1, 1).id)
    now = timezone.now()
    started = state not in ("READY", "BLOCKED")
    Job.objects.filter(pk=job_id).update(
        state=state,
        attempts=1 if started else 0,
        worker_id=WORKER if started else "",
        worker_ids=[WORKER] if started else [],
        started_at=now if started else None,
        last_attempted_at=now if started else None,
        finished_at=now - timedelta(days=1)
        if state in ("SUCCESSFUL", "FAILED", "CANCELLED")
        else None,
        # Due in the future, so that "run now" has something to do on a READY job.
        available_at=now + timedelta(hours=1) if state == "READY" else now,
    )
    return job_id


def moves_seen() -> set[tuple[str, str, str]]:
    seen = set()
    for name, move in MOVES.items():
        for state in JobState.values:
            with connection.cursor() as cur:
                cur.execute("SAVEPOINT move")
                job_id = job_in(state)
                if name.startswith("claim"):
                    # Due before the transaction began: now() is its start.
                    past = timezone.now() - timedelta(hours=1)
                    Job.objects.filter(pk=job_id).update(available_at=past)
                move(cur, job_id)
                after = Job.objects.filter(pk=job_id).values_list("state", flat=True).first()
                cur.execute("ROLLBACK TO SAVEPOINT move")
            if after != state:
                seen.add((name, state, after))
    return seen


def test_every_move_the_statements_make_is_a_legal_transition():
    seen = moves_seen()
    illegal = sorted(m for m in seen if not can_move(m[1], m[2]))
    assert not illegal, f"moves not in states.TRANSITIONS: {illegal}"
    assert seen == EXPECTED


def test_every_legal_transition_is_made_by_some_statement_or_waits_for_one():
    made = {(source, target) for _, source, target in moves_seen()}
    allowed = {(s, t) for s, targets in TRANSITIONS.items() for t in targets}
    assert allowed - made == set()
