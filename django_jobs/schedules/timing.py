"""When a schedule fires: cron or interval timing, missed runs, and validating a timing.

Pure functions of their arguments (no database, no clock of their own): the tick, the
admin's preview and the system checks all call them with the database's ``now``.
"""

from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from ..models import MAX_CATCHUP, MisfirePolicy
from . import cron

#: A fire time no later than this behind the database clock is on time, not missed:
#: the "skip" policy still runs it.
MISFIRE_GRACE = timedelta(seconds=60)
#: Cron fire times counted at most, when reporting how many runs were missed.
COUNT_CAP = 10_000
#: The longest interval a schedule may have: ten years. Rarer runs are a cron
#: expression's job (@yearly); the column is a 32-bit integer (at most 2,147,483,647 s).
MAX_INTERVAL_SECONDS = 10 * 365 * 24 * 3600


@dataclass(frozen=True, slots=True)
class Timing:
    """When a schedule fires: a cron expression in a time zone, or every N seconds."""

    cron: str = ""
    interval_seconds: int | None = None
    timezone: str = "UTC"
    start_at: datetime | None = None
    end_at: datetime | None = None

    @classmethod
    def of(cls, schedule: Any) -> "Timing":
        """Read the timing fields of a Schedule model instance or a ScheduleRow."""
        return cls(
            cron=schedule.cron or "",
            interval_seconds=schedule.interval_seconds,
            timezone=schedule.timezone or "UTC",
            start_at=schedule.start_at,
            end_at=schedule.end_at,
        )

    def _ended(self, moment: datetime | None) -> datetime | None:
        if moment is None or (self.end_at is not None and moment > self.end_at):
            return None
        return moment

    def first_after(self, now: datetime, anchor: datetime | None = None) -> datetime | None:
        """Return the first fire time strictly after ``now``, or None if there is none.

        Intervals keep their cadence from ``anchor`` (the last fire time), else from
        ``start_at``, else they start one interval from ``now``.
        """
        if self.start_at is not None and self.start_at > now:
            if self.interval_seconds:
                return self._ended(self.start_at)
            return self._ended(cron.next_after(self.cron, self.timezone, self.start_at - _TICK))
        if self.interval_seconds:
            step = timedelta(seconds=self.interval_seconds)
            base = anchor if anchor is not None else self.start_at
            if base is None:
                return self._ended(now + step)
            if base > now:
                return self._ended(base)
            return self._ended(base + step * ((now - base) // step + 1))
        return self._ended(cron.next_after(self.cron, self.timezone, now))

    def upcoming(self, now: datetime, count: int) -> list[datetime]:
        """Return the next ``count`` fire times after ``now`` (fewer if it ends)."""
        times: list[datetime] = []
        try:
            moment = self.first_after(now)
            while moment is not None and len(times) < count:
                times.append(moment)
                if self.interval_seconds:
                    moment = self._ended(moment + timedelta(seconds=self.interval_seconds))
                else:
                    moment = self.first_after(moment)
        except OverflowError:
            pass  # the calendar ends (year 9999) before `count` fire times
        return times

    def due(self, since: datetime, now: datetime, keep: int) -> tuple[list[datetime], int]:
        """Return the newest ``keep`` fire times in [since, now], oldest first, and how
        many there are in all (counted up to COUNT_CAP for cron).

        ``since`` is the stored next_run_at: intervals count from it; for cron it is due
        itself when no grid time falls in the window (it was set off the grid).
        """
        until = now if self.end_at is None else min(now, self.end_at)
        if since > until:
            return [], 0
        if self.interval_seconds:
            step = timedelta(seconds=self.interval_seconds)
            total = (until - since) // step + 1
            first = max(0, total - keep)
            # Counted like cron's, up to COUNT_CAP, so the log reads the same for both.
            return [since + step * n for n in range(first, total)], min(total, COUNT_CAP)
        newest: list[datetime] = []
        total = 0
        for fire in cron.at_or_before(self.cron, self.timezone, until):
            if fire < since or total >= COUNT_CAP:
                break
            total += 1
            if len(newest) < keep:
                newest.append(fire)
        if total == 0:
            # `since` is off the grid (the expression changed, or it was set by hand),
            # and no grid time has come since: it is still due.
            return [since], 1
        return sorted(newest), total


_TICK = timedelta(microseconds=1)


@dataclass(frozen=True, slots=True)
class Plan:
    #: Fire times to enqueue a job for, oldest first.
    fire_times: list[datetime]
    #: Due fire times that get no job (skipped, coalesced, or past max_catchup).
    missed: int
    #: The next fire time after now, or None when the schedule has ended.
    next_run_at: datetime | None


def plan(timing: Timing, policy: str, max_catchup: int, since: datetime, now: datetime) -> Plan:
    """Decide which due fire times in [since, now] get a job.

    The newest due fire time is the current run; older ones were missed (a later one
    has come since). Policies:

    - ``once``: one job, for the newest fire time, however many were missed;
    - ``skip``: a job only for the newest fire time, and only if it is on time (no more
      than MISFIRE_GRACE behind the clock);
    - ``all``: a job for each due fire time, the newest ``max_catchup`` of them (never
      more than MAX_CATCHUP, whatever the row says, cron or interval).
    """
    keep = min(max(1, max_catchup), MAX_CATCHUP) if policy == MisfirePolicy.ALL else 1
    recent, total = timing.due(since, now, keep)
    if not recent:
        fire: list[datetime] = []
    elif policy == MisfirePolicy.ALL:
        fire = recent
    elif policy == MisfirePolicy.SKIP and now - recent[-1] > MISFIRE_GRACE:
        fire = []
    else:
        fire = recent[-1:]
    anchor = recent[-1] if recent else since
    return Plan(fire, max(0, total - len(fire)), timing.first_after(now, anchor=anchor))


def timing_problems(cron_text: str, interval_seconds: Any, timezone: str) -> dict[str, str]:
    """Return {field: message} for what is wrong with a schedule's timing fields."""
    problems = {}
    if cron_text and interval_seconds is not None:
        problems["cron"] = "Give a cron expression or an interval, not both."
    elif not cron_text and interval_seconds is None:
        problems["cron"] = "Give a cron expression or an interval."
    elif cron_text:
        try:
            cron.normalize(cron_text)
        except cron.CronError as exc:
            problems["cron"] = str(exc)
    elif (
        not isinstance(interval_seconds, int)
        or isinstance(interval_seconds, bool)
        or interval_seconds < 1
    ):
        problems["interval_seconds"] = (
            f"The interval must be a whole number of seconds >= 1, got {interval_seconds!r}."
        )
    elif interval_seconds > MAX_INTERVAL_SECONDS:
        problems["interval_seconds"] = (
            f"The interval must be at most {MAX_INTERVAL_SECONDS:,} seconds (10 years), got "
            f"{interval_seconds:,} seconds. For rarer runs use a cron expression such as "
            "@yearly."
        )
    try:
        cron.zone(timezone)
    except cron.CronError as exc:
        problems["timezone"] = str(exc)
    return problems
