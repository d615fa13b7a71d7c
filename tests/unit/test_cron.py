"""Fire-time computation: cron in time zones (DST), month ends, leap days, intervals, misfires."""

from datetime import UTC, datetime, timedelta
from itertools import islice, pairwise
from zoneinfo import ZoneInfo

import pytest

from django_jobs.schedules import cron
from django_jobs.schedules.timing import MISFIRE_GRACE, Timing, plan, timing_problems

BERLIN = ZoneInfo("Europe/Berlin")
NEW_YORK = ZoneInfo("America/New_York")


def local(times, tz):
    return [t.astimezone(tz).strftime("%Y-%m-%d %H:%M %Z") for t in times]


def next_n(expression, tz, start, n=3):
    return list(islice(cron.after(expression, tz, start), n))


# ── DST: a 02:30 daily job on the nights the clocks change ─────────────────


@pytest.mark.parametrize(
    ("tz", "day", "expected"),
    [
        # Spring forward: 02:30 does not exist; the job runs at 03:00, once.
        (
            "Europe/Berlin",
            datetime(2026, 3, 28, 12, tzinfo=UTC),
            ["2026-03-29 03:00 CEST", "2026-03-30 02:30 CEST", "2026-03-31 02:30 CEST"],
        ),
        (
            "America/New_York",
            datetime(2026, 3, 7, 12, tzinfo=UTC),
            ["2026-03-08 03:00 EDT", "2026-03-09 02:30 EDT", "2026-03-10 02:30 EDT"],
        ),
        # Fall back in Berlin: 02:30 happens twice; the job runs once, the first time.
        (
            "Europe/Berlin",
            datetime(2026, 10, 24, 12, tzinfo=UTC),
            ["2026-10-25 02:30 CEST", "2026-10-26 02:30 CET", "2026-10-27 02:30 CET"],
        ),
        # Fall back in New York is at 02:00, so 02:30 exists once (after the change).
        (
            "America/New_York",
            datetime(2026, 10, 31, 12, tzinfo=UTC),
            ["2026-11-01 02:30 EST", "2026-11-02 02:30 EST", "2026-11-03 02:30 EST"],
        ),
    ],
)
def test_daily_0230_across_dst_changes(tz, day, expected):
    assert local(next_n("30 2 * * *", tz, day), ZoneInfo(tz)) == expected


def test_new_york_repeated_hour_fires_once():
    # 01:30 happens twice in New York on 1 November 2026.
    times = next_n("30 1 * * *", "America/New_York", datetime(2026, 10, 31, 12, tzinfo=UTC))
    assert local(times, NEW_YORK) == [
        "2026-11-01 01:30 EDT",
        "2026-11-02 01:30 EST",
        "2026-11-03 01:30 EST",
    ]


def test_starting_inside_the_repeated_hour_never_goes_back():
    # 01:40 EST, the second pass: 01:45 EDT is already an hour in the past.
    start = datetime(2026, 11, 1, 6, 40, tzinfo=UTC)
    first = cron.next_after("45 1 * * *", "America/New_York", start)
    assert first > start
    assert local([first], NEW_YORK) == ["2026-11-02 01:45 EST"]


def test_every_30_minutes_follows_elapsed_time_through_fall_back():
    # Sub-hourly jobs run in both passes of the repeated hour: 30 minutes apart in real time.
    start = datetime(2026, 10, 24, 23, 50, tzinfo=UTC)  # 01:50 CEST
    times = next_n("*/30 * * * *", "Europe/Berlin", start, 6)
    gaps = {b - a for a, b in pairwise(times)}
    assert gaps == {timedelta(minutes=30)}


def test_reverse_iteration_matches_forward_across_dst():
    forward = next_n("30 2 * * *", "Europe/Berlin", datetime(2026, 3, 27, tzinfo=UTC), 5)
    backward = list(islice(cron.at_or_before("30 2 * * *", "Europe/Berlin", forward[-1]), 5))
    assert backward == forward[::-1]


# ── calendars ───────────────────────────────────────────────────────────────


def test_month_ends_skip_short_months():
    times = next_n("0 12 31 * *", "UTC", datetime(2026, 1, 1, tzinfo=UTC), 4)
    assert [t.strftime("%m-%d") for t in times] == ["01-31", "03-31", "05-31", "07-31"]


def test_leap_day_fires_every_four_years():
    times = next_n("0 0 29 2 *", "UTC", datetime(2026, 1, 1, tzinfo=UTC), 2)
    assert [t.date().isoformat() for t in times] == ["2028-02-29", "2032-02-29"]


def test_yearly_alias_in_a_time_zone():
    times = next_n("@yearly", "Europe/Berlin", datetime(2026, 6, 1, tzinfo=UTC), 2)
    assert local(times, BERLIN) == ["2027-01-01 00:00 CET", "2028-01-01 00:00 CET"]
    assert times[0] == datetime(2026, 12, 31, 23, tzinfo=UTC)


@pytest.mark.parametrize(
    ("alias", "fields"),
    [
        ("@hourly", "0 * * * *"),
        ("@daily", "0 0 * * *"),
        ("@midnight", "0 0 * * *"),
        ("@weekly", "0 0 * * 0"),
        ("@monthly", "0 0 1 * *"),
        ("@annually", "0 0 1 1 *"),
        ("@YEARLY", "0 0 1 1 *"),
    ],
)
def test_aliases(alias, fields):
    assert cron.normalize(alias) == fields


@pytest.mark.parametrize(
    ("expression", "fragment"),
    [
        ("61 * * * *", "bad minute"),
        ("* * *", "five fields"),
        ("@often", "Unknown cron nickname"),
        ("0 0 31 2 *", "bad day-of-month"),
        ("", "Enter a cron expression"),
    ],
)
def test_invalid_expressions_say_why(expression, fragment):
    with pytest.raises(cron.CronError, match=fragment):
        cron.normalize(expression)


def test_unknown_time_zone():
    with pytest.raises(cron.CronError, match="Unknown time zone 'Mars/Olympus'"):
        cron.zone("Mars/Olympus")
    assert timing_problems("@daily", None, "Nowhere/Special")["timezone"].startswith("Unknown")


def test_timing_needs_exactly_one_of_cron_and_interval():
    assert "not both" in timing_problems("@daily", 60, "UTC")["cron"]
    assert "cron expression or an interval" in timing_problems("", None, "UTC")["cron"]
    assert "whole number" in timing_problems("", 0, "UTC")["interval_seconds"]
    assert timing_problems("*/5 * * * *", None, "UTC") == {}


# ── intervals, start and end ────────────────────────────────────────────────

NOW = datetime(2026, 5, 1, 12, 0, 0, tzinfo=UTC)


def test_interval_keeps_its_cadence_from_the_last_fire():
    timing = Timing(interval_seconds=600)
    anchor = NOW - timedelta(minutes=25)
    assert timing.first_after(NOW, anchor=anchor) == NOW + timedelta(minutes=5)
    assert timing.first_after(NOW) == NOW + timedelta(minutes=10)


def test_start_and_end_bound_the_fire_times():
    start = NOW + timedelta(hours=1)
    timing = Timing(cron="0 * * * *", start_at=start, end_at=start + timedelta(hours=2))
    assert timing.upcoming(NOW, 5) == [
        start,
        start + timedelta(hours=1),
        start + timedelta(hours=2),
    ]
    assert Timing(interval_seconds=60, start_at=start).first_after(NOW) == start
    assert Timing(cron="@daily", end_at=NOW).first_after(NOW) is None


# ── misfire policies after a 10-minute outage ──────────────────────────────

# Every 5 minutes; next_run_at was 11.5 minutes ago: three fire times are due, and the
# newest one (90 s ago) is past the 60 s grace, so it counts as missed too.
OUTAGE = Timing(interval_seconds=300)
SINCE = NOW - timedelta(minutes=11, seconds=30)
DUE = [SINCE, SINCE + timedelta(minutes=5), SINCE + timedelta(minutes=10)]


def test_policy_once_runs_the_newest_missed_run_once():
    p = plan(OUTAGE, "once", 10, SINCE, NOW)
    assert (p.fire_times, p.missed) == ([DUE[-1]], 2)
    assert p.next_run_at == DUE[-1] + timedelta(minutes=5)


def test_policy_skip_runs_nothing_missed():
    p = plan(OUTAGE, "skip", 10, SINCE, NOW)
    assert (p.fire_times, p.missed) == ([], 3)
    assert p.next_run_at == NOW + timedelta(seconds=210)


def test_policy_skip_still_runs_an_on_time_fire():
    p = plan(OUTAGE, "skip", 10, NOW - MISFIRE_GRACE + timedelta(seconds=1), NOW)
    assert len(p.fire_times) == 1


@pytest.mark.parametrize(("cap", "expected"), [(10, DUE), (2, DUE[1:])])
def test_policy_all_runs_each_missed_run_up_to_the_cap(cap, expected):
    p = plan(OUTAGE, "all", cap, SINCE, NOW)
    assert p.fire_times == expected
    assert p.missed == 3 - len(expected)


def test_policy_all_for_cron_counts_without_walking_forever():
    since = NOW - timedelta(days=30)
    p = plan(Timing(cron="* * * * *"), "all", 3, since, NOW)
    assert p.fire_times == [NOW - timedelta(minutes=2), NOW - timedelta(minutes=1), NOW]
    assert p.missed > 9_000
    assert p.next_run_at == NOW + timedelta(minutes=1)
