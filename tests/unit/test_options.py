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
    ],
)
def test_bad_values_are_named(raw, fragment):
    problems = validate(raw)
    assert any(fragment in p for p in problems), problems
    with pytest.raises(ImproperlyConfigured, match=r"POLL|MAX|LISTEN|TASK|RETRY"):
        JobsOptions.from_dict(raw)
