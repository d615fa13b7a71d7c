"""Cron expressions: parse, validate, explain, and step through fire times in a time zone.

A thin layer over `cronsim <https://github.com/cuu508/cronsim>`_, which does the
calendar work. We chose it over croniter because it is maintained, has no
dependencies, and sets out to fire exactly when Debian's cron would, DST quirks
included, with zoneinfo-aware datetimes. croniter was declared unmaintained by its
author in December 2024 (since adopted by pallets-eco) and pulls in python-dateutil.

cronsim has no ``@daily``-style nicknames, so :data:`ALIASES` maps them to five fields.

DST, as Debian cron does it (and as cronsim reproduces) for expressions that name a
fixed minute and hour (``30 2 * * *``):

- spring forward: a time that does not exist that night (02:30 in Berlin on the last
  Sunday of March) fires at the first minute that exists after it (03:00 local);
- fall back: a time that exists twice (02:30 in Berlin on the last Sunday of
  October) fires once, at its first occurrence (summer time).

Expressions that run every minute or every hour (``*/15 * * * *``) follow real
elapsed time instead: in the repeated hour they fire in both passes.

Every function here takes and returns aware datetimes; results are in UTC.
"""

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from cronsim import CronSim, CronSimError

ALIASES = {
    "@yearly": "0 0 1 1 *",
    "@annually": "0 0 1 1 *",
    "@monthly": "0 0 1 * *",
    "@weekly": "0 0 * * 0",
    "@daily": "0 0 * * *",
    "@midnight": "0 0 * * *",
    "@hourly": "0 * * * *",
}

_FIELDS = ("minute", "hour", "day of month", "month", "day of week")


class CronError(ValueError):
    """An expression or a time zone that cannot be used; the message says why."""


def normalize(expression: str) -> str:
    """Return the five-field form of ``expression``; raise CronError if it is not valid."""
    text = " ".join(str(expression).split())
    if not text:
        raise CronError("Enter a cron expression such as '30 2 * * *' or '@daily'.")
    if text.startswith("@"):
        try:
            return ALIASES[text.lower()]
        except KeyError:
            raise CronError(
                f"Unknown cron nickname {text!r}; use one of {', '.join(ALIASES)}."
            ) from None
    parts = text.split(" ")
    if len(parts) != 5:
        raise CronError(
            f"A cron expression has five fields (minute hour day-of-month month "
            f"day-of-week), {text!r} has {len(parts)}."
        )
    try:
        CronSim(text, datetime(2000, 1, 1, tzinfo=UTC))
    except CronSimError as exc:
        raise CronError(f"Invalid cron expression {text!r}: {_describe(exc)}.") from None
    return text


def _describe(exc: CronSimError) -> str:
    # cronsim says "Bad day-of-month"; we say which field and what is allowed.
    message = str(exc) or "not a valid expression"
    return message[0].lower() + message[1:]


def zone(name: str) -> ZoneInfo:
    """Return the IANA time zone ``name``; raise CronError if there is no such zone."""
    try:
        if not name or name != name.strip():
            raise ValueError(name)
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError, TypeError):
        raise CronError(
            f"Unknown time zone {name!r}; use an IANA name such as 'Europe/Berlin' or 'UTC'."
        ) from None


def explain(expression: str) -> str:
    """Return ``expression`` in words ("At 02:30"), or "" when cronsim cannot say."""
    try:
        return CronSim(normalize(expression), datetime(2000, 1, 1, tzinfo=UTC)).explain()
    except Exception:  # a description is a nicety; never fail over it
        return ""


def after(expression: str, tz: str, moment: datetime) -> Iterator[datetime]:
    """Yield the fire times strictly after ``moment``, in order, as UTC datetimes."""
    local_tz = zone(tz)
    fields = normalize(expression)
    last = moment.astimezone(UTC)
    for fire in CronSim(fields, moment.astimezone(local_tz)):
        fire = fire.astimezone(UTC)
        # At a fall-back a time can map back before `moment` (cronsim starts from the
        # wall clock); never step backwards.
        if fire > last:
            last = fire
            yield fire


def next_after(expression: str, tz: str, moment: datetime) -> datetime | None:
    """Return the first fire time strictly after ``moment``, or None if it never fires."""
    return next(after(expression, tz, moment), None)


def at_or_before(expression: str, tz: str, moment: datetime) -> Iterator[datetime]:
    """Yield the fire times at or before ``moment``, newest first, as UTC datetimes."""
    local_tz = zone(tz)
    fields = normalize(expression)
    # cronsim steps back before it compares; start one second late to include `moment`.
    start = moment.astimezone(local_tz).replace(microsecond=0) + timedelta(seconds=1)
    limit = moment.astimezone(UTC)
    last: datetime | None = None
    stray = 0
    for fire in CronSim(fields, start, reverse=True):
        fire = fire.astimezone(UTC)
        if fire > limit or (last is not None and fire >= last):
            # Only the first step (the extra second) or a DST fold can land here.
            stray += 1
            if stray > 100:
                return
            continue
        last = fire
        yield fire
