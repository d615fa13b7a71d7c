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
