"""Schedules against PostgreSQL: the tick fires each run once, misfires, breakage, settings."""

import logging
import re
from datetime import UTC, datetime, timedelta

import pytest
from django.core.checks import run_checks
from django.core.exceptions import ValidationError
from django.db import IntegrityError, connection
from django.test import override_settings
from django.utils import timezone

from django_jobs.backend import JobsBackend
from django_jobs.compat import task_backends, task_enqueued
from django_jobs.models import MAX_CATCHUP, Job, Schedule, ScheduleRun
from django_jobs.protocol import schedules as protocol
from django_jobs.schedules import declared, firing
from django_jobs.schedules import timing as timings
from django_jobs.schedules.declared import sync_declared
from django_jobs.services.scheduler import Scheduler
from django_jobs.worker import dbconn

from ..conftest import run_worker

pytestmark = pytest.mark.django_db(transaction=True)

ADD = "testproject.example.tasks.add"


@pytest.fixture
def conn():
    """The worker's kind of connection: autocommit psycopg, outside Django's."""
    c = dbconn.connect("default", purpose="test")
    yield c
    c.close()


def tick(conn, backend: str = "default") -> list[firing.Fired]:
    with conn.cursor() as cur:
        return Scheduler(task_backends[backend], "test-worker").tick(cur)


def make(**fields) -> Schedule:
    fields.setdefault("name", "every-minute")
    fields.setdefault("task_path", ADD)
    fields.setdefault("args", [2, 3])
    if "cron" not in fields:
        fields.setdefault("interval_seconds", 60)
    fields.setdefault("next_run_at", timezone.now() - timedelta(seconds=1))
    return Schedule.objects.create(**fields)


def db_now() -> datetime:
    with connection.cursor() as cur:
        return protocol.database_now(cur)


def test_a_due_schedule_fires_once_and_moves_on(conn):
    schedule = make()
    due = schedule.next_run_at
    fired = tick(conn)
    assert [f.fire_at for f in fired] == [due]
    job = Job.objects.get()
    assert (job.task_path, job.args, job.queue_name, job.state) == (
        ADD,
        [2, 3],
        "default",
        "READY",
    )
    schedule.refresh_from_db()
    assert schedule.next_run_at == due + timedelta(seconds=60)
    assert schedule.last_job_id == job.id
    assert schedule.last_run_at is not None
    assert schedule.last_error == ""
    run = ScheduleRun.objects.get()
    assert (run.fire_at, run.job_id, run.manual) == (due, job.id, False)
    assert tick(conn) == []  # nothing is due any more
    assert Job.objects.count() == 1


def test_enqueued_signal_is_sent_after_commit(conn):
    make()
    seen = []

    def receiver(sender, task_result, **kwargs):
        seen.append((task_result.task.module_path, Job.objects.filter(pk=task_result.id).exists()))

    task_enqueued.connect(receiver)
    try:
        tick(conn)
    finally:
        task_enqueued.disconnect(receiver)
    assert seen == [(ADD, True)]


def test_a_schedule_locked_by_another_worker_is_skipped(conn):
    make()
    other = dbconn.connect("default", purpose="test")
    try:
        with other.transaction(), other.cursor() as cur:
            locked = protocol.lock_due_schedules(cur, backend="default", limit=10)
            assert len(locked) == 1
            assert tick(conn) == []  # SKIP LOCKED: the other worker has it
        # The other worker "died" (rolled back): the schedule is still due for us.
        assert len(tick(conn)) == 1
    finally:
        other.close()
    assert Job.objects.count() == 1


def test_a_fire_time_that_already_ran_enqueues_nothing(conn):
    schedule = make()
    ScheduleRun.objects.create(schedule=schedule, fire_at=schedule.next_run_at)
    assert tick(conn) == []
    assert Job.objects.count() == 0
    schedule.refresh_from_db()
    assert schedule.next_run_at > timezone.now()


def test_disabled_and_other_backends_schedules_do_not_fire(conn):
    make(name="off", enabled=False)
    make(name="elsewhere", backend="other")
    assert tick(conn) == []
    assert Job.objects.count() == 0


def test_a_finished_schedule_stops(conn):
    schedule = make(end_at=timezone.now())
    assert len(tick(conn)) == 1
    schedule.refresh_from_db()
    assert schedule.next_run_at is None


# ── misfire policies after a simulated 10-minute outage ─────────────────────


@pytest.mark.parametrize(
    ("policy", "cap", "jobs"),
    [("once", 10, 1), ("skip", 10, 0), ("all", 10, 3), ("all", 2, 2)],
)
def test_misfire_policy_after_an_outage(conn, policy, cap, jobs, caplog):
    # Every 5 minutes; the workers were away for 10 minutes and more, so three fire
    # times are due and the newest is 90 s late (past the 60 s grace).
    since = db_now() - timedelta(minutes=11, seconds=30)
    schedule = make(
        interval_seconds=300, next_run_at=since, misfire_policy=policy, max_catchup=cap
    )
    with caplog.at_level(logging.WARNING, logger="django_jobs"):
        fired = tick(conn)
    print(f"policy={policy} max_catchup={cap}: 3 fire times due, {len(fired)} job(s)")
    assert len(fired) == Job.objects.count() == jobs
    expected = [since + timedelta(minutes=m) for m in (0, 5, 10)][3 - jobs :]
    assert sorted(f.fire_at for f in fired) == expected
    schedule.refresh_from_db()
    assert schedule.next_run_at == since + timedelta(minutes=15)
    if jobs < 3:
        assert f"missed {3 - jobs} run(s)" in caplog.text


# ── broken schedules never crash the tick ──────────────────────────────────


def test_a_task_that_disappeared_is_skipped_and_flagged(conn, caplog):
    broken = make(name="gone", task_path="testproject.example.tasks.removed_long_ago")
    healthy = make(name="healthy")
    with caplog.at_level(logging.ERROR, logger="django_jobs"):
        fired = tick(conn)
    assert [f.schedule for f in fired] == ["healthy"]
    broken.refresh_from_db()
    assert "is not declared in this process" in broken.last_error
    assert broken.is_broken
    assert broken.next_run_at > timezone.now()  # its run was skipped, not retried in a loop
    assert "Schedule 'gone' could not fire" in caplog.text
    healthy.refresh_from_db()
    assert healthy.last_error == ""


def test_arguments_that_no_longer_fit_flag_the_schedule(conn):
    schedule = make(args=[1, 2, 3])
    assert tick(conn) == []
    schedule.refresh_from_db()
    assert "do not fit" in schedule.last_error
    assert Job.objects.count() == 0


def test_an_unreadable_timing_stops_the_schedule(conn):
    schedule = make(cron="@daily", interval_seconds=None, timezone="Nowhere/Special")
    assert tick(conn) == []
    schedule.refresh_from_db()
    assert "Unknown time zone" in schedule.last_error
    assert schedule.next_run_at is None


def test_a_fixed_schedule_is_healthy_again_after_its_next_fire(conn):
    schedule = make(last_error="an old problem")
    assert len(tick(conn)) == 1
    schedule.refresh_from_db()
    assert schedule.last_error == ""


# ── run now, enable / disable ───────────────────────────────────────────────


def test_run_now_enqueues_without_moving_the_schedule():
    schedule = make(next_run_at=timezone.now() + timedelta(hours=1))
    fired = firing.run_now(schedule.pk)
    job = Job.objects.get()
    assert fired.job_id == job.id
    run = ScheduleRun.objects.get()
    assert (run.manual, run.job_id) == (True, job.id)
    after = Schedule.objects.get(pk=schedule.pk)
    assert after.next_run_at == schedule.next_run_at
    assert after.last_job_id == job.id


def test_run_now_of_a_broken_schedule_says_why():
    schedule = make(task_path="nowhere.task")
    with pytest.raises(firing.ScheduleError, match="not declared"):
        firing.run_now(schedule.pk)
    assert Job.objects.count() == 0


def test_enabling_starts_afresh_from_now():
    schedule = make(enabled=False, next_run_at=timezone.now() - timedelta(days=3))
    next_run_at = firing.set_enabled(schedule.pk, True)
    schedule.refresh_from_db()
    assert schedule.enabled
    assert schedule.next_run_at == next_run_at > timezone.now()
    firing.set_enabled(schedule.pk, False)
    schedule.refresh_from_db()
    assert not schedule.enabled


# ── schedules declared in settings ──────────────────────────────────────────


def backend_with(schedules: dict) -> JobsBackend:
    return JobsBackend("default", {"QUEUES": [], "OPTIONS": {"SCHEDULES": schedules}})


def sync(conn, schedules: dict) -> None:
    with conn.cursor() as cur:
        sync_declared(cur, backend_with(schedules))


def test_declared_schedules_are_written_and_owned_by_settings(conn):
    sync(
        conn,
        {
            "nightly": {"task": ADD, "cron": "30 2 * * *", "timezone": "Europe/Berlin"},
            "often": {"task": ADD, "every": timedelta(minutes=5), "args": [1, 1]},
        },
    )
    nightly = Schedule.objects.get(name="nightly")
    assert (nightly.source, nightly.cron, nightly.timezone) == (
        "code",
        "30 2 * * *",
        "Europe/Berlin",
    )
    assert nightly.next_run_at.astimezone(UTC).minute == 30
    often = Schedule.objects.get(name="often")
    assert (often.interval_seconds, often.args) == (300, [1, 1])
    first_next = often.next_run_at

    # The operator disables one; a restart keeps that, and keeps the cadence.
    Schedule.objects.filter(name="nightly").update(enabled=False)
    sync(
        conn,
        {
            "nightly": {"task": ADD, "cron": "30 2 * * *", "timezone": "Europe/Berlin"},
            "often": {"task": ADD, "every": 300, "args": [7, 7]},
        },
    )
    assert not Schedule.objects.get(name="nightly").enabled
    often.refresh_from_db()
    assert often.args == [7, 7]  # settings own what they declare
    assert often.next_run_at == first_next  # same timing: same next run

    # Changing the timing recomputes the next run.
    sync(
        conn, {"nightly": {"task": ADD, "cron": "0 3 * * *"}, "often": {"task": ADD, "every": 60}}
    )
    often.refresh_from_db()
    assert often.next_run_at != first_next


def test_a_declaration_removed_from_settings_is_disabled_not_deleted(conn):
    sync(conn, {"weekly": {"task": ADD, "cron": "@weekly"}})
    sync(conn, {})
    row = Schedule.objects.get(name="weekly")
    assert (row.source, row.enabled) == ("removed", False)
    # Declared again: back under settings, with its declared `enabled`.
    sync(conn, {"weekly": {"task": ADD, "cron": "@weekly"}})
    row.refresh_from_db()
    assert (row.source, row.enabled) == ("code", True)


def test_settings_take_over_an_admin_schedule_of_the_same_name(conn):
    make(name="shared", enabled=False)
    sync(conn, {"shared": {"task": ADD, "cron": "@hourly"}})
    row = Schedule.objects.get(name="shared")
    assert (row.source, row.cron, row.interval_seconds, row.enabled) == (
        "code",
        "@hourly",
        None,
        True,
    )


def test_an_invalid_declaration_is_logged_and_leaves_its_row_alone(conn, caplog):
    sync(conn, {"kept": {"task": ADD, "cron": "@daily"}})
    with caplog.at_level(logging.ERROR, logger="django_jobs"):
        sync(conn, {"kept": {"task": ADD, "cron": "99 * * * *"}})
    row = Schedule.objects.get(name="kept")
    assert (row.cron, row.source, row.enabled) == ("@daily", "code", True)
    assert "bad minute" in caplog.text
    assert "django_jobs.E011" in caplog.text


def test_the_first_tick_writes_the_declared_schedules(conn):
    settings = {
        "default": {
            "BACKEND": "django_jobs.backend.JobsBackend",
            "QUEUES": ["default"],
            "OPTIONS": {"SCHEDULES": {"soon": {"task": ADD, "every": 1, "args": [1, 2]}}},
        }
    }
    with override_settings(TASKS=settings):
        tick(conn)
    assert Schedule.objects.get(name="soon").source == "code"


# ── system checks ───────────────────────────────────────────────────────────


def test_declared_schedules_are_checked():
    settings = {
        "default": {
            "BACKEND": "django_jobs.backend.JobsBackend",
            "OPTIONS": {
                "SCHEDULES": {
                    "ok": {"task": ADD, "cron": "@daily", "args": [1, 2]},
                    "bad-cron": {"task": ADD, "cron": "0 25 * * *"},
                    "bad-zone": {"task": ADD, "cron": "@daily", "timezone": "Mars/Base"},
                    "no-task": {"task": "nowhere.gone", "every": 60},
                    "bad-args": {"task": ADD, "every": 60, "args": [1, 2, 3]},
                    "not-json": {"task": ADD, "every": 60, "args": [object()]},
                    "both": {"task": ADD, "every": 60, "cron": "@daily"},
                    "typo": {"task": ADD, "every": 60, "misfire": "sometimes", "evry": 1},
                }
            },
        }
    }
    with override_settings(TASKS=settings):
        messages = [m for m in run_checks() if m.id.startswith("django_jobs.E01")]
    found = {(m.id, re.search(r"\['SCHEDULES'\]\['([^']+)'\]", m.msg)[1]) for m in messages}
    assert found == {
        ("django_jobs.E011", "bad-cron"),
        ("django_jobs.E012", "bad-zone"),
        ("django_jobs.E013", "no-task"),
        ("django_jobs.E014", "bad-args"),
        ("django_jobs.E014", "not-json"),
        ("django_jobs.E011", "both"),
        ("django_jobs.E015", "typo"),
        ("django_jobs.E010", "typo"),
    }
    text = "\n".join(m.msg for m in messages)
    assert "TASKS['default']['OPTIONS']['SCHEDULES']['bad-cron']" in text
    assert "'nowhere.gone' is not a declared task" in text


def test_a_worker_fires_schedules_and_survives_a_broken_one():
    make(name="gone", task_path="nowhere.gone")
    make(name="healthy")
    run_worker()
    job = Job.objects.get()
    assert (job.state, job.return_value) == ("SUCCESSFUL", 5)
    assert "not declared" in Schedule.objects.get(name="gone").last_error


# ── declarations the database would refuse ──────────────────────────────────


def test_an_oversized_interval_is_refused_and_the_other_declarations_are_written(conn, caplog):
    with caplog.at_level(logging.INFO, logger="django_jobs"):
        sync(
            conn,
            {"huge": {"task": ADD, "every": 3_000_000_000}, "fine": {"task": ADD, "every": 60}},
        )
    assert list(Schedule.objects.values_list("name", flat=True)) == ["fine"]
    assert "at most 315,360,000 seconds (10 years), got 3,000,000,000" in caplog.text
    assert "django_jobs.E011" in caplog.text
    assert "'huge' declared in settings was added" not in caplog.text
    assert "'fine' declared in settings was added" in caplog.text


def test_a_declaration_the_database_refuses_is_skipped_alone(conn, caplog, monkeypatch):
    upsert = protocol.upsert_declared_schedule

    def refuse_one(cursor, schedule):
        if schedule.name == "refused":
            cursor.execute("SELECT 1 / 0")  # a real error: the transaction is aborted
        return upsert(cursor, schedule)

    monkeypatch.setattr(protocol, "upsert_declared_schedule", refuse_one)
    schedules = {name: {"task": ADD, "every": 60} for name in ("before", "refused", "after")}
    with caplog.at_level(logging.INFO, logger="django_jobs"), conn.cursor() as cur:
        written = sync_declared(cur, backend_with(schedules))
    assert written == ["before", "after"]
    assert sorted(Schedule.objects.values_list("name", flat=True)) == ["after", "before"]
    assert "Schedule 'refused' in TASKS['default']['OPTIONS']['SCHEDULES'] is not written" in (
        caplog.text
    )
    assert "DivisionByZero" in caplog.text
    assert "'refused' declared in settings was added" not in caplog.text


def test_the_scheduler_tries_the_settings_again_after_a_failed_sync(conn, monkeypatch):

    calls = []

    def failing(cursor, backend):
        calls.append(backend.alias)
        raise RuntimeError("the table is not there yet")

    monkeypatch.setattr(declared, "sync_declared", failing)
    s = Scheduler(task_backends["default"], "test-worker")
    with conn.cursor() as cur:
        s.tick(cur)
        assert not s._synced
        s.tick(cur)  # not again at once: it waits FAILED_SLEEP
        assert calls == ["default"]
        monkeypatch.undo()
        s._sync_retry_at = 0.0  # the pause is over
        s.tick(cur)
    assert s._synced


def test_declared_intervals_above_ten_years_fail_the_checks():
    settings = {
        "default": {
            "BACKEND": "django_jobs.backend.JobsBackend",
            "OPTIONS": {"SCHEDULES": {"huge": {"task": ADD, "every": timedelta(days=4000)}}},
        }
    }
    with override_settings(TASKS=settings):
        messages = [m for m in run_checks() if m.id.startswith("django_jobs.E01")]
    assert [m.id for m in messages] == ["django_jobs.E011"]
    assert "at most 315,360,000 seconds" in messages[0].msg


def test_preview_of_a_timing_that_runs_past_year_9999_stops_there():
    timing = timings.Timing(
        interval_seconds=timings.MAX_INTERVAL_SECONDS,
        start_at=datetime(9985, 1, 1, tzinfo=UTC),
    )
    assert len(timing.upcoming(datetime(2026, 1, 1, tzinfo=UTC), 5)) == 2


# ── catch-up is bounded ─────────────────────────────────────────────────────


@pytest.mark.parametrize(
    "timing",
    [timings.Timing(interval_seconds=1), timings.Timing(cron="* * * * *")],
    ids=["interval", "cron"],
)
def test_catch_up_never_enqueues_more_than_max_catchup_allows(timing):
    now = datetime(2026, 3, 1, tzinfo=UTC)
    since = now - timedelta(days=30)  # 2.6 million seconds, 43,200 minutes
    p = timings.plan(timing, "all", 50_000, since, now)
    assert len(p.fire_times) == MAX_CATCHUP == 1000
    assert p.fire_times[-1] == now
    assert p.missed == timings.COUNT_CAP - 1000  # counted up to the cap, for both kinds


def test_max_catchup_has_a_maximum_everywhere():
    schedule = Schedule(name="greedy", task_path=ADD, interval_seconds=60, max_catchup=1001)
    with pytest.raises(ValidationError) as raised:
        schedule.full_clean()
    assert "max_catchup" in raised.value.message_dict
    with pytest.raises(IntegrityError, match="django_jobs_schedule_catchup_max"):
        schedule.save()  # and the table refuses what skips validation
    settings = {
        "default": {
            "BACKEND": "django_jobs.backend.JobsBackend",
            "OPTIONS": {
                "SCHEDULES": {
                    "greedy": {"task": ADD, "every": 60, "misfire": "all", "max_catchup": 5000}
                }
            },
        }
    }
    with override_settings(TASKS=settings):
        messages = [m for m in run_checks() if m.id.startswith("django_jobs.E01")]
    assert [m.id for m in messages] == ["django_jobs.E015"]
    assert "'max_catchup' must be an int 1..1000, got 5000" in messages[0].msg
