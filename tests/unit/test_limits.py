"""Flow control's rules without a database: rates, keys, options, task declarations."""

from datetime import timedelta

import pytest
from django.core.exceptions import ImproperlyConfigured

from django_jobs import job
from django_jobs.compat import InvalidTask
from django_jobs.conf import JobsOptions, validate
from django_jobs.limits import (
    MAX_KEY_BYTES,
    QueueLimit,
    RateLimit,
    check_key,
    parse_rate,
    unique_states_problem,
)

# ── rates ───────────────────────────────────────────────────────────────────


@pytest.mark.parametrize(
    ("text", "count", "period"),
    [
        ("100/m", 100, 60.0),
        ("5/s", 5, 1.0),
        ("1000/h", 1000, 3600.0),
        ("10/30s", 10, 30.0),
        ("2/1.5m", 2, 90.0),
        (" 7 / day ", 7, 86400.0),
        ("3/minutes", 3, 60.0),
        ("1/D", 1, 86400.0),
    ],
)
def test_rates_read_as_count_per_period(text, count, period):
    rate = parse_rate(text)
    assert (rate.count, rate.period) == (count, period)
    assert str(rate) == text.strip()


@pytest.mark.parametrize(
    ("value", "fragment"),
    [
        ("100", "is not a rate"),
        ("100/fortnight", "is not a rate"),
        ("ten/s", "is not a rate"),
        ("-1/s", "is not a rate"),
        ("0/s", "the count must be from 1"),
        ("5/0s", "the period must be more than 0"),
        ("5/400d", "at most a year"),
        ("2000000/s", "the count must be from 1 to 1,000,000"),
        (100, "is not a rate"),
        (None, "is not a rate"),
    ],
)
def test_a_rate_that_is_not_one_says_what_a_rate_looks_like(value, fragment):
    with pytest.raises(ValueError, match=fragment) as caught:
        parse_rate(value)
    assert repr(value) in str(caught.value)


# ── keys ────────────────────────────────────────────────────────────────────


def test_keys_are_non_empty_strings_that_fit_an_index_entry():
    assert check_key("acct-1", "key") == "acct-1"
    assert check_key("é" * (MAX_KEY_BYTES // 2), "key")
    with pytest.raises(TypeError, match=r"the key must be a str, got int 5"):
        check_key(5, "the key")
    with pytest.raises(ValueError, match="empty string"):
        check_key("", "the key")
    with pytest.raises(ValueError, match=r"1,002 bytes long in UTF-8, more than the 1,000"):
        check_key("é" * 501, "the key")
    with pytest.raises(ValueError, match="NUL"):
        check_key("a\x00b", "the key")


def test_unique_states_keep_the_waiting_and_running_ones():
    assert unique_states_problem(("READY", "BLOCKED", "RUNNING", "FAILED")) is None
    assert "must include READY, BLOCKED, RUNNING (missing RUNNING)" in unique_states_problem(
        ("READY", "BLOCKED")
    )
    assert "unknown states ['DONE']" in unique_states_problem(("READY", "DONE"))
    assert "must be a tuple" in unique_states_problem("READY")


# ── QUEUE_LIMITS ────────────────────────────────────────────────────────────


def test_queue_limits_are_parsed():
    options = JobsOptions.from_dict(
        {
            "QUEUE_LIMITS": {
                "emails": {"rate_limit": "20/s", "concurrency": 5},
                "slow": {"concurrency": 1},
            }
        }
    )
    assert {
        "emails": QueueLimit(rate=RateLimit(20, 1.0, "20/s"), concurrency=5),
        "slow": QueueLimit(rate=None, concurrency=1),
    } == options.QUEUE_LIMITS
    assert JobsOptions.from_dict(None).QUEUE_LIMITS == {}


@pytest.mark.parametrize(
    ("raw", "fragment"),
    [
        ([("emails", "20/s")], "QUEUE_LIMITS must be a dict of queue name"),
        ({"emails": "20/s"}, "QUEUE_LIMITS['emails'] must be a dict with 'rate_limit'"),
        ({"emails": {}}, "QUEUE_LIMITS['emails'] must be a dict with 'rate_limit'"),
        ({"emails": {"rate": "20/s"}}, "QUEUE_LIMITS['emails'] has an unknown key 'rate'"),
        ({"emails": {"rate_limit": "20"}}, "QUEUE_LIMITS['emails']['rate_limit']: '20' is not"),
        ({"emails": {"concurrency": 0}}, "QUEUE_LIMITS['emails']['concurrency'] must be"),
        ({"emails": {"concurrency": True}}, "got True"),
        ({"": {"concurrency": 1}}, "QUEUE_LIMITS keys must be queue names"),
    ],
)
def test_bad_queue_limits_are_named(raw, fragment):
    problems = validate({"QUEUE_LIMITS": raw})
    assert any(fragment in p for p in problems), problems
    with pytest.raises(ImproperlyConfigured, match="QUEUE_LIMITS"):
        JobsOptions.from_dict({"QUEUE_LIMITS": raw})


# ── declarations ────────────────────────────────────────────────────────────


def limited_example(account_id: int) -> None: ...


def declare(**options):
    return job(**options)(limited_example)


@pytest.mark.parametrize(
    ("options", "fragment"),
    [
        ({"rate_limit": "100/x"}, "rate_limit for task '.*limited_example': '100/x' is not"),
        ({"rate_limit": "0/s"}, "the count must be from 1"),
        ({"concurrency_limit": 0}, "concurrency_limit must be a whole number from 1"),
        ({"concurrency_limit": -2}, "got -2 for task"),
        ({"concurrency_limit": 1.5}, "got 1.5 for task"),
        ({"concurrency_key": 5}, "concurrency_key must be a str, got int 5"),
        ({"concurrency_key": ""}, "concurrency_key is an empty string"),
        ({"unique_key": "x" * 1001}, "unique_key is 1,001 bytes long"),
        ({"unique_for": timedelta(0)}, "unique_for must be a timedelta or a number of seconds"),
        ({"unique_for": -5}, "got -5 for task"),
        ({"unique_for": True}, "got True"),
        ({"unique_states": ("READY",)}, "unique_states must include READY, BLOCKED, RUNNING"),
        ({"unique": "yes"}, "unique must be True or False"),
    ],
)
def test_bad_flow_options_fail_at_declaration_naming_task_and_value(options, fragment):
    with pytest.raises(InvalidTask, match=fragment):
        declare(**options)


def test_flow_options_declare():
    task = declare(
        unique_for=timedelta(minutes=10),
        unique_states=["READY", "BLOCKED", "RUNNING", "SUCCESSFUL", "FAILED"],
        rate_limit="100/m",
        concurrency_key=lambda account_id: f"acct-{account_id}",
        concurrency_limit=2,
    )
    assert task.is_unique
    assert task.unique_seconds == 600.0
    assert task.counted_states == ("READY", "BLOCKED", "RUNNING", "SUCCESSFUL", "FAILED")
    assert task.is_limited  # the rate; the concurrency limit is per key
    assert not declare(concurrency_key="reports").is_limited
    assert declare(concurrency_limit=3).is_limited
    assert not declare().is_unique
    assert declare(unique=True).counted_states == ("READY", "BLOCKED", "RUNNING", "SUCCESSFUL")


def test_using_gives_a_copy_a_unique_key_and_checks_it():
    task = declare()
    keyed = task.using(unique_key="feed-1")
    assert keyed.is_unique
    assert keyed.unique_key == "feed-1"
    assert not task.is_unique
    with pytest.raises(ValueError, match=r"unique_key for task '.*limited_example' is"):
        task.using(unique_key="")


def test_queue_limits_for_an_unknown_queue_are_flagged():
    from django.test import override_settings

    from django_jobs.compat import task_backends

    settings = {
        "default": {
            "BACKEND": "django_jobs.backend.JobsBackend",
            "QUEUES": ["default", "emails"],
            "OPTIONS": {"QUEUE_LIMITS": {"emials": {"concurrency": 1}}},
        }
    }
    with override_settings(TASKS=settings):
        messages = task_backends["default"].check()
    assert [m.id for m in messages] == ["django_jobs.W004"]
    assert "limits 'emials', not in this backend's QUEUES ('default', 'emails')" in messages[0].msg
