from datetime import timedelta

import pytest
from django.core.exceptions import ImproperlyConfigured

from django_jobs.conf import JobsOptions, validate


def test_defaults():
    options = JobsOptions.from_dict(None)
    assert options.DATABASE == "default"
    assert options.MAX_ATTEMPTS == 1
    assert options.LISTEN is True


@pytest.mark.parametrize(
    ("raw", "fragment"),
    [
        ({"MAX_ATTEMPTS": 0}, "MAX_ATTEMPTS must be a whole number >= 1, got 0"),
        ({"MAX_ATTEMPTS": True}, "MAX_ATTEMPTS"),
        ({"POLL_INTERVAL": -1}, "POLL_INTERVAL must be a number of seconds > 0, got -1"),
        ({"LISTEN": "yes"}, "LISTEN must be True or False, got 'yes'"),
        ({"TASK_MODULES": "myapp.jobs"}, "TASK_MODULES must be a list"),
        ({"RETRY_FACTOR": 0.5}, "RETRY_FACTOR must be a number >= 1"),
        ({"POLL_INTERVALL": 1}, "unknown option 'POLL_INTERVALL'"),
        ({"RETENTION": 7}, "RETENTION must be a dict"),
        ({"RETENTION": {"READY": 60}}, "RETENTION has 'READY'; only finished jobs"),
        ({"RETENTION": {"FAILED": 0}}, "RETENTION['FAILED'] must be None (keep forever)"),
        ({"RETENTION": {"FAILED": timedelta(0)}}, "RETENTION['FAILED'] must be None"),
    ],
)
def test_bad_values_are_named(raw, fragment):
    problems = validate(raw)
    assert any(fragment in p for p in problems), problems
    with pytest.raises(ImproperlyConfigured, match=r"POLL|MAX|LISTEN|TASK|RETRY|RETENTION"):
        JobsOptions.from_dict(raw)


def test_retention_takes_timedeltas_and_keeps_the_defaults_of_states_left_out():
    options = JobsOptions.from_dict(
        {"RETENTION": {"SUCCESSFUL": timedelta(hours=1), "FAILED": None}}
    )
    assert options.RETENTION == {"SUCCESSFUL": 3600.0, "FAILED": None, "CANCELLED": 30 * 86400.0}
    assert JobsOptions.from_dict(None).RETENTION["SUCCESSFUL"] == 7 * 86400.0


# ── durations that PostgreSQL's (or the OS's) clock arithmetic cannot take ──────────
#: Each of these passed the checks once, then failed every maintenance round (or every
#: wait) with "timestamp out of range".
FIFTY_THOUSAND_YEARS = timedelta(days=365 * 50_000)


@pytest.mark.parametrize(
    ("raw", "fragments"),
    [
        (
            {"RETENTION": {"SUCCESSFUL": timedelta.max}},
            ["RETENTION['SUCCESSFUL'] is", "longer than the 100 years", "set it to None"],
        ),
        (
            {"RETENTION": {"FAILED": FIFTY_THOUSAND_YEARS}},
            ["RETENTION['FAILED'] is", "100 years", "keep FAILED jobs forever"],
        ),
        ({"RETENTION": {"FAILED": float("inf")}}, ["RETENTION['FAILED'] must be more than 0"]),
        (
            {"WORKER_TIMEOUT": 1e13},
            ["WORKER_TIMEOUT is 1e+13 s, longer than the 1 day", "would wait this long"],
        ),
        ({"HEARTBEAT_INTERVAL": 2 * 86_400}, ["HEARTBEAT_INTERVAL is 172,800 s", "1 day"]),
        ({"MAINTENANCE_INTERVAL": 1e14}, ["MAINTENANCE_INTERVAL is", "(the default is 5)"]),
        ({"POLL_INTERVAL": float("inf")}, ["POLL_INTERVAL must be more than 0 seconds and"]),
        ({"RETRY_BASE_DELAY": 1e12}, ["RETRY_BASE_DELAY is", "give a shorter delay"]),
        ({"RETRY_MAX_DELAY": float("inf")}, ["RETRY_MAX_DELAY must be more than 0"]),
        ({"TIMEOUT": 1e12}, ["TIMEOUT is", "set TIMEOUT to None"]),
        ({"SOFT_TIMEOUT": 1e12, "TIMEOUT": 2e12}, ["SOFT_TIMEOUT is"]),
    ],
)
def test_durations_past_what_the_database_can_compute_are_refused(raw, fragments):
    problems = validate(raw)
    assert any(all(f in p for f in fragments) for p in problems), problems
    with pytest.raises(ImproperlyConfigured):
        JobsOptions.from_dict(raw)


def test_the_longest_durations_allowed_pass():
    assert not validate(
        {
            "RETENTION": {"SUCCESSFUL": timedelta(days=36_500), "FAILED": None},
            "WORKER_TIMEOUT": 86_400,
            "HEARTBEAT_INTERVAL": 43_200,
            "MAINTENANCE_INTERVAL": 86_400,
            "POLL_INTERVAL": 86_400,
            "RETRY_MAX_DELAY": 36_500 * 86_400,
            "TIMEOUT": 36_500 * 86_400,
        }
    )


@pytest.mark.parametrize(
    ("options", "fragment"),
    [
        ({"timeout": 1e12}, "timeout is 1e+12"),
        ({"soft_timeout": float("inf")}, "soft_timeout must be more than 0 seconds and finite"),
        ({"retry_max_delay": 1e300}, "retry_max_delay is 1e+300"),
        ({"retry_base_delay": 1e11}, "retry_base_delay is"),
        ({"cancel_grace": float("inf")}, "cancel_grace must be more than 0 seconds and finite"),
        ({"unique_for": timedelta.max}, "unique_for is"),
        ({"unique_for": 1e12}, "unique_for is"),
    ],
)
def test_task_durations_past_what_the_database_can_compute_are_refused(options, fragment):
    from django_jobs import job
    from django_jobs.compat import InvalidTask

    def task_function() -> None:
        pass

    with pytest.raises(InvalidTask, match="task_function") as caught:
        job(**options)(task_function)
    assert fragment in str(caught.value)


def test_a_timedelta_as_run_after_gets_a_clear_error():
    from django_jobs.compat import InvalidTask
    from testproject.example import tasks

    with pytest.raises(InvalidTask, match=r"run_after must be an aware datetime.*timedelta"):
        tasks.add.using(run_after=timedelta.max)


def test_backoff_of_a_very_late_attempt_is_the_cap_not_an_overflow():
    from django_jobs.policy import backoff_delay

    delay = backoff_delay(5000, base=1.0, factor=2.0, cap=3600.0, rand=lambda: 1.0)
    assert delay == 3600.0
