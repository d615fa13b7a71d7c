import pytest
from django.tasks import TaskResultStatus

from django_jobs import policy as retry
from django_jobs.states import TRANSITIONS, JobState, can_move, to_task_status


def test_backoff_grows_exponentially_within_the_jitter_band():
    delays = [
        retry.backoff_delay(n, base=1.0, factor=2.0, cap=1000.0, rand=lambda: 0.0)
        for n in range(1, 6)
    ]
    assert delays == [0.5, 1.0, 2.0, 4.0, 8.0]
    top = retry.backoff_delay(3, base=1.0, factor=2.0, cap=1000.0, rand=lambda: 1.0)
    assert top == 4.0


def test_backoff_is_capped():
    assert retry.backoff_delay(50, base=1.0, factor=2.0, cap=60.0, rand=lambda: 1.0) == 60.0


def test_no_retry_after_the_last_attempt():
    assert retry.retry_in(3, 3, base=1, factor=2, cap=10) is None
    assert retry.retry_in(2, 3, base=1, factor=2, cap=10) is not None


def test_every_state_maps_to_a_django_status():
    assert {to_task_status(state) for state in JobState} == set(TaskResultStatus)
    assert to_task_status("CANCELLED") == TaskResultStatus.FAILED
    assert to_task_status("BLOCKED") == TaskResultStatus.READY


@pytest.mark.parametrize(
    ("source", "target", "allowed"),
    [
        ("READY", "RUNNING", True),
        ("RUNNING", "SUCCESSFUL", True),
        ("RUNNING", "READY", True),
        ("SUCCESSFUL", "READY", False),
        ("FAILED", "READY", True),
        ("READY", "SUCCESSFUL", False),
    ],
)
def test_transitions(source, target, allowed):
    assert can_move(source, target) is allowed
    assert set(TRANSITIONS) == set(JobState)
