"""Pure parts of workflows and progress: planning a canvas, the throttle, bad values."""

import pytest

from django_jobs import chain, chord, group
from django_jobs.context import JobContext, ProgressThrottle, cancel_requested, running
from django_jobs.context import set_progress as report
from django_jobs.exceptions import InvalidWorkflow
from django_jobs.workflows.plan import describe, plan
from testproject.example import tasks


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_the_throttle_sends_at_most_once_a_second_and_never_drops_the_last():
    sent: list[dict] = []
    clock = Clock()
    throttle = ProgressThrottle(sent.append, clock=clock)
    throttle.offer({"done": 1})  # the first goes at once
    clock.now += 0.2
    throttle.offer({"done": 2})
    throttle.offer({"done": 3})  # kept, replacing 2
    throttle.flush_due()
    assert sent == [{"done": 1}]
    assert throttle.due_in() == pytest.approx(0.8)
    clock.now += 0.8
    throttle.flush_due()  # its second has come: the latest kept value goes
    assert sent == [{"done": 1}, {"done": 3}]
    clock.now += 0.1
    throttle.offer({"done": 4})
    throttle.flush()  # the job ended: the last value goes now
    assert sent[-1] == {"done": 4}
    assert throttle.due_in() is None
    assert throttle.latest == {"done": 4}


@pytest.mark.parametrize(
    ("args", "says"),
    [
        ((-1,), "done must be a number >= 0"),
        ((True,), "done must be a number >= 0"),
        ((float("nan"),), "done must be a number >= 0"),
        ((1, 0), "total must be None or a number > 0"),
        ((11, 10), "done (11) is more than total (10)"),
        ((1, 10, 5), "message must be a str"),
    ],
)
def test_bad_progress_is_refused_with_the_value(args, says):
    with pytest.raises((TypeError, ValueError), match=None) as raised:
        report(*args)
    assert says in str(raised.value)


def test_outside_a_job_progress_and_cancellation_are_quiet():
    report(1, 2, "nobody listens")  # no job here: nothing happens
    assert cancel_requested() is False

    class Control:
        cancel_requested = True
        reported: list = []

        def set_progress(self, progress):
            self.reported.append(progress)

    control = Control()
    with running(control):
        assert cancel_requested() is True
        report(1, 2, "x" * 600)
    assert cancel_requested() is False
    assert control.reported == [{"done": 1, "total": 2, "message": "x" * 500}]
    context = JobContext(task_result=None, control=control)
    context.set_progress(2, 2)
    assert context.cancel_requested is True


def test_planning_gives_each_step_its_parents_and_what_it_receives():
    built = plan(
        chain(
            tasks.add.s(1, 1),
            chord(group(tasks.add.s(i) for i in range(3)), tasks.total.s()),
            tasks.mul.si(2, 3),
        )
    )
    shape = [(s.parents, s.receives, s.dependents) for s in built.steps]
    assert shape == [
        ([], "", [1, 2, 3]),
        ([0], "value", [4]),
        ([0], "value", [4]),
        ([0], "value", [4]),
        ([1, 2, 3], "list", [5]),
        ([4], "", []),  # .si(): it waits for its parent but receives nothing
    ]
    assert (built.outputs, built.returns_list) == ([5], False)
    assert built.steps[4].where == "chain step 2 > chord body"
    assert describe(chord(group(tasks.add.s(i, i) for i in range(9)), tasks.total.s())) == (
        "9 x add -> total"
    )


def test_a_group_at_the_end_returns_a_list_and_nested_groups_flatten():
    built = plan(group(group(tasks.add.s(1, 1), tasks.add.s(2, 2)), tasks.add.s(3, 3)))
    assert (built.outputs, built.returns_list) == ([0, 1, 2], True)
    with pytest.raises(InvalidWorkflow, match="not a signature"):
        plan(group([tasks.add]))
