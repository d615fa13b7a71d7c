"""The retry policy (pure functions) and the mapping of states onto django.tasks.

Which moves between states the statements make is tested against real rows in
tests/integration/test_transitions.py.
"""

from django_jobs import policy as retry
from django_jobs.compat import TaskResultStatus
from django_jobs.conf import JobsOptions
from django_jobs.exceptions import Retry
from django_jobs.policy import MAX_DELAY, Policy
from django_jobs.states import FINISHED, FINISHED_SQL, JobState, to_task_status


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


class FakeTask:
    max_attempts = 3
    retry_on = (ConnectionError,)
    retry_base_delay = 10.0
    retry_factor = None
    retry_max_delay = None
    timeout = 30.0
    soft_timeout = None
    atomic = True


def test_a_tasks_own_options_win_and_the_backends_fill_in_the_rest():
    options = JobsOptions(MAX_ATTEMPTS=5, RETRY_FACTOR=3.0, SOFT_TIMEOUT=4.0)
    p = Policy.of(FakeTask(), options)
    assert (p.max_attempts, p.base_delay, p.factor, p.max_delay) == (3, 10.0, 3.0, 3600.0)
    assert (p.timeout, p.soft_timeout, p.atomic) == (30.0, 4.0, True)
    unknown = Policy.of(None, options)
    assert (unknown.max_attempts, unknown.retry_on, unknown.timeout) == (5, None, None)


def test_retry_on_decides_for_exceptions_the_task_raised_only():
    p = Policy.of(FakeTask(), JobsOptions())
    assert p.next_attempt_in(1, 3, ConnectionError()) is not None
    assert p.next_attempt_in(1, 3, ValueError()) is None  # not listed: final
    # Raised nothing in our hands (process died, worker lost): retried while attempts last.
    assert p.next_attempt_in(1, 3, None) is not None
    assert p.next_attempt_in(3, 3, None) is None


def test_retry_sets_its_own_delay_but_not_past_the_last_attempt_or_the_table():
    p = Policy.of(FakeTask(), JobsOptions())
    assert p.next_attempt_in(1, 3, Retry(after=42)) == 42
    assert p.next_attempt_in(1, 3, Retry(after=10**12)) == MAX_DELAY
    assert p.next_attempt_in(3, 3, Retry(after=42)) is None
    assert p.next_attempt_in(1, 3, Retry()) is not None  # backoff, whatever retry_on says


def test_snoozes_and_operator_retries_give_attempts_back():
    assert retry.max_attempts_after_snooze(3) == 4
    assert retry.snooze_delay(-1) == 0.0
    assert retry.snooze_delay(10**12) == MAX_DELAY
    assert retry.OPERATOR_RETRY_ATTEMPTS >= 1


def test_every_state_maps_to_a_django_status():
    assert {to_task_status(state) for state in JobState} == set(TaskResultStatus)
    assert to_task_status("CANCELLED") == TaskResultStatus.FAILED
    assert to_task_status("BLOCKED") == TaskResultStatus.READY


def test_the_finished_states_are_spelled_once_for_python_and_sql():
    assert FINISHED_SQL == "('SUCCESSFUL', 'FAILED', 'CANCELLED')"
    assert [s.value for s in FINISHED] == ["SUCCESSFUL", "FAILED", "CANCELLED"]
