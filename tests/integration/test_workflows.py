"""Workflows written in one transaction: shapes, values passed on, results, bad input.

Steps run on an in-process worker (``run_worker``); what real ``runjobs`` processes
do with them (kills, cancels, progress) is in tests/process/test_workflows.py.
"""

import asyncio
from concurrent.futures import ThreadPoolExecutor
from itertools import pairwise

import pytest
from asgiref.sync import sync_to_async
from django.db import connection, connections, transaction
from django.test.utils import CaptureQueriesContext

from django_jobs import chain, chord, get_workflow, group, signature
from django_jobs.compat import InvalidTask, TaskResultDoesNotExist
from django_jobs.exceptions import InvalidWorkflow
from django_jobs.models import Job, Workflow
from django_jobs.workflows import plan
from django_jobs.workflows.canvas import Chain
from testproject.example import flow_tasks, tasks
from testproject.example.models import Execution

from ..conftest import run_worker

pytestmark = pytest.mark.django_db(transaction=True)


def states(result) -> dict[int, str]:
    return dict(Job.objects.filter(workflow_id=int(result.id)).values_list("id", "state"))


def test_a_chain_passes_each_return_value_to_the_next_step():
    result = chain(tasks.add.s(2, 2), tasks.add.s(4), tasks.mul.s(10)).enqueue()
    assert result.status == "READY"
    assert [r.status for r in result.results] == ["READY"] * 3  # BLOCKED maps to READY
    assert sorted(states(result).values()) == ["BLOCKED", "BLOCKED", "READY"]
    run_worker()
    result.refresh()
    assert (result.status, result.return_value) == ("SUCCESSFUL", 80)
    assert [r.return_value for r in result.results] == [4, 8, 80]
    # The step's own arguments stay what was enqueued; the received value comes first.
    assert result.results[2].args == [10]


def test_steps_of_a_limited_task_are_claimed_within_its_limits():
    result = chord([flow_tasks.per_account.s(7, n) for n in range(3)], tasks.collect.s()).enqueue()
    members = Job.objects.filter(workflow_id=int(result.id), task_path__endswith="per_account")
    assert {(j.flow, j.concurrency_key, j.concurrency_limit) for j in members} == {
        ("limited", "acct-7", 1)
    }
    run_worker()
    result.refresh()
    assert (result.status, result.return_value) == ("SUCCESSFUL", [0, 1, 2])
    spans = sorted(
        Execution.objects.filter(key__startswith="acct-7").values_list("started", "finished")
    )
    # One at a time for the account, as for jobs of the task enqueued alone.
    assert all(earlier[1] <= later[0] for earlier, later in pairwise(spans))


def test_a_group_and_map_return_their_values_in_order():
    squares = group(tasks.mul.s(i, i) for i in range(30)).enqueue()
    plus_one = tasks.add.starmap([(i, 1) for i in range(5)]).enqueue()
    doubled = tasks.total.map([[1, 1], [2, 2]]).enqueue()
    run_worker()
    for result in (squares, plus_one, doubled):
        result.refresh()
    assert squares.return_value == [i * i for i in range(30)]
    assert plus_one.return_value == [1, 2, 3, 4, 5]
    assert doubled.return_value == [2, 4]


def test_a_chord_callback_gets_every_result_in_the_header_order():
    result = chord(group(tasks.mul.s(i, 2) for i in range(200)), tasks.collect.s()).enqueue()
    callback = Job.objects.get(pk=int(result.results[-1].id))
    assert (callback.state, callback.pending_parents, callback.receives) == (
        "BLOCKED",
        200,
        "list",
    )
    run_worker()
    result.refresh()
    assert result.return_value == [2 * i for i in range(200)]
    # By reference: the callback's row holds the ids of its parents, not their values.
    callback.refresh_from_db()
    assert (callback.args, len(callback.parents)) == ([], 200)


def test_nested_shapes_and_immutable_signatures():
    # A group after a group: each member of the second gets the list of the first.
    two_groups = chain(
        group(tasks.add.s(1, 1), tasks.add.s(2, 2)), group(tasks.collect.s(), tasks.total.s())
    ).enqueue()
    # A group of chains, flattened into one list; a chord inside a chain.
    of_chains = group(chain(tasks.add.s(1, 1), tasks.mul.s(3)), tasks.add.s(5, 5)).enqueue()
    inner = chain(
        tasks.add.s(1, 2), chord(group(tasks.add.s(i) for i in range(3)), tasks.total.s())
    ).enqueue()
    # .si(): the step gets nothing from before it.
    immutable = chain(tasks.add.s(1, 1), tasks.add.si(10, 10)).enqueue()
    run_worker()
    for result in (two_groups, of_chains, inner, immutable):
        result.refresh()
        assert result.status == "SUCCESSFUL", result
    assert two_groups.return_value == [[2, 4], 6]
    assert of_chains.return_value == [6, 10]
    assert inner.return_value == 3 + 4 + 5  # add(3, i) for i in 0..2
    assert immutable.return_value == 20


def test_the_pipe_operator_and_signatures_by_path_build_the_same_chain():
    result = (tasks.add.s(1, 2) | signature("testproject.example.tasks.mul", args=(5,))).enqueue()
    run_worker()
    result.refresh()
    assert result.return_value == 15


def test_a_10000_member_chord_is_written_with_two_statements_in_one_transaction():
    header = group(tasks.noop.si() for _ in range(10_000))
    with CaptureQueriesContext(connection) as queries, transaction.atomic():
        result = chord(header, tasks.collect.s()).enqueue()
    statements = [q["sql"] for q in queries.captured_queries]
    writes = [s for s in statements if "SAVEPOINT" not in s and "django_jobs" in s]
    assert len(writes) == 2, statements  # draw the ids, then one INSERT of everything
    assert Job.objects.filter(workflow_id=int(result.id)).count() == 10_001
    assert Job.objects.filter(workflow_id=int(result.id), state="READY").count() == 10_000
    callback = Job.objects.get(pk=int(result.results[-1].id))
    assert (callback.state, callback.pending_parents) == ("BLOCKED", 10_000)
    assert Workflow.objects.get(pk=int(result.id)).step_count == 10_001


def test_a_rolled_back_transaction_leaves_no_workflow():
    def request() -> None:
        with transaction.atomic():
            chord(group(tasks.add.s(i, i) for i in range(10)), tasks.total.s()).enqueue()
            raise RuntimeError("the request failed")

    with pytest.raises(RuntimeError):
        request()
    assert not Job.objects.exists()
    assert not Workflow.objects.exists()


def self_containing_chain() -> Chain:
    looped = chain(tasks.add.s(1, 1))
    object.__setattr__(looped, "members", (*looped.members, looped))
    return looped


@pytest.mark.parametrize(
    ("build", "error", "says"),
    [
        (self_containing_chain, InvalidWorkflow, "chain step 2 contains itself"),
        (
            lambda: chord(group(), tasks.total.s()),
            InvalidWorkflow,
            "empty header group",
        ),
        (lambda: chain(), InvalidWorkflow, "empty chain"),
        (
            lambda: chain(signature("testproject.example.tasks.nope"), tasks.add.s(1)),
            InvalidTask,
            "'testproject.example.tasks.nope' is not a declared task",
        ),
        (
            # The first step receives nothing, so add(1) lacks an argument.
            lambda: chain(tasks.add.s(1), tasks.add.s(2)),
            TypeError,
            "chain step 1 (testproject.example.tasks.add): The arguments do not fit",
        ),
        (
            # A step after a step receives one value first: add(prev, 1, 2) is one too many.
            lambda: chain(tasks.add.s(1, 1), tasks.add.s(1, 2)),
            TypeError,
            "chain step 2 (testproject.example.tasks.add): The arguments do not fit",
        ),
        (
            lambda: group(tasks.add.s(1, 1), tasks.add.s(object(), 1)),
            TypeError,
            "group member 2 (testproject.example.tasks.add): Argument 0",
        ),
        (
            # Django's own check, when the step's options are set.
            lambda: chain(tasks.add.s(1, 1), tasks.sleep_for.s().using(queue_name="nowhere")),
            InvalidTask,
            "Queue 'nowhere' is not valid",
        ),
        (
            lambda: chain(
                tasks.add.s(1, 1), chain(tasks.add.s(1), on_error=tasks.report_failure.s())
            ),
            InvalidWorkflow,
            "only the outermost",
        ),
        (
            lambda: chain(tasks.add.s(1, 1), on_error=tasks.total.s()),
            TypeError,
            "on_error (testproject.example.tasks.total)",
        ),
        (lambda: group(tasks.add.s(1, 1), 42), InvalidWorkflow, "group() member 1 is 42"),
    ],
    ids=[
        "cycle",
        "empty chord header",
        "empty chain",
        "undeclared task",
        "first step missing an argument",
        "too many arguments with the received value",
        "not JSON",
        "unknown queue",
        "nested on_error",
        "on_error that cannot take the error",
        "not a step",
    ],
)
def test_bad_input_is_refused_naming_the_step_and_nothing_is_written(build, error, says):
    with pytest.raises(error, match=None) as raised:
        build().enqueue()
    assert says in str(raised.value)
    assert not Job.objects.exists()
    assert not Workflow.objects.exists()


def test_too_many_edges_are_refused(monkeypatch):
    monkeypatch.setattr(plan, "MAX_EDGES", 50)
    first = group(tasks.add.s(i, i) for i in range(10))
    second = group(tasks.collect.s() for _ in range(10))  # 10 x 10 = 100 edges
    with pytest.raises(InvalidWorkflow, match="more than 50 dependencies"):
        chain(first, second).enqueue()
    assert not Job.objects.exists()


def test_get_workflow_reads_it_back_and_says_when_there_is_none():
    result = chain(tasks.add.s(1, 1), tasks.add.s(1)).enqueue()
    again = get_workflow(result.id)
    assert (again.id, again.description, again.status) == (result.id, "add -> add", "READY")
    assert [r.id for r in again.results] == [r.id for r in result.results]
    assert again.counts == {"READY": 1, "BLOCKED": 1}
    with pytest.raises(ValueError, match="has not finished yet"):
        _ = again.return_value
    for missing in ("999999", "nope", "-1"):
        with pytest.raises(TaskResultDoesNotExist):
            get_workflow(missing)


def in_async(coroutine_function):
    """Run it as async code would (in a thread of its own, with its own event loop, since
    another test may have left one running in this thread), then close the connection
    its sync calls opened."""

    async def run():
        try:
            return await coroutine_function()
        finally:
            await sync_to_async(connections.close_all, thread_sensitive=True)()

    with ThreadPoolExecutor(max_workers=1) as pool:
        return pool.submit(asyncio.run, run()).result(timeout=60)


def test_aenqueue_writes_the_workflow_too():
    result = in_async(chain(tasks.add.s(1, 1), tasks.add.s(1)).aenqueue)
    assert Job.objects.filter(workflow_id=int(result.id)).count() == 2
    run_worker()
    in_async(result.arefresh)
    assert result.return_value == 3
