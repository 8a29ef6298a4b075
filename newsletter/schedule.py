"""Cron schedules: a five-field expression in a time zone, and when it next fires.

Pure functions of (schedule, zone, now), so the worker and the tests drive time themselves.
The syntax is Vixie cron's: ``*``, lists, ranges, steps, names (``mon``-``sun``,
``jan``-``dec``), 0 and 7 for Sunday, and the day rule where a restricted day-of-month and a
restricted day-of-week match when *either* matches.

Daylight saving: a local time that does not exist (the clocks spring forward over it) fires at
the first minute after the gap; a local time that happens twice (the clocks fall back) fires
once, at its first occurrence.
"""

from __future__ import annotations

from bisect import bisect_left
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from .errors import NewsletterError

MONTH_NAMES = ("jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec")
DAY_NAMES = ("sun", "mon", "tue", "wed", "thu", "fri", "sat")
# The longest a valid schedule can take to fire again: Feb 29 on a given weekday (28 years)
# is covered by the day-of-week OR rule; eight years covers Feb 29 alone.
SEARCH_DAYS = 8 * 366


class ScheduleError(NewsletterError, ValueError):
    """A cron expression or time zone that cannot be used; the message says what to fix."""


@dataclass(frozen=True)
class Schedule:
    """A parsed five-field cron expression."""

    text: str
    minutes: tuple[int, ...]
    hours: tuple[int, ...]
    days: frozenset[int]
    months: frozenset[int]
    weekdays: frozenset[int]  # 0 = Sunday
    any_day: bool  # the day-of-month field starts with "*"
    any_weekday: bool  # the day-of-week field starts with "*"

    def day_matches(self, day: date) -> bool:
        """Whether the schedule fires on ``day`` (month, then Vixie's day rule)."""
        if day.month not in self.months:
            return False
        in_month = day.day in self.days
        in_week = (day.weekday() + 1) % 7 in self.weekdays
        if self.any_day or self.any_weekday:
            return in_month and in_week
        return in_month or in_week


_FIELDS = (  # name, low, high, names (index + offset = value)
    ("minute", 0, 59, (), 0),
    ("hour", 0, 23, (), 0),
    ("day of month", 1, 31, (), 0),
    ("month", 1, 12, MONTH_NAMES, 1),
    ("day of week", 0, 7, DAY_NAMES, 0),
)


def _value(word: str, field: str, low: int, high: int, names: tuple[str, ...], offset: int) -> int:
    word = word.strip().lower()
    if word in names:
        return names.index(word) + offset
    if not word.isdigit():
        known = f" or a name ({', '.join(names)})" if names else ""
        raise ScheduleError(f"{field}: {word!r} is not a number{known}")
    number = int(word)
    if not low <= number <= high:
        raise ScheduleError(f"{field}: {number} is outside {low}-{high}")
    return number


def _parse_field(
    text: str, field: str, low: int, high: int, names: tuple[str, ...], offset: int
) -> set[int]:
    values: set[int] = set()
    for item in text.split(","):
        if not item:
            raise ScheduleError(f"{field}: empty item in {text!r}")
        span, _, step_text = item.partition("/")
        step = 1
        if step_text:
            if not step_text.isdigit() or int(step_text) < 1:
                raise ScheduleError(f"{field}: the step in {item!r} must be a whole number from 1")
            step = int(step_text)
        if span == "*":
            start, end = low, high
        elif "-" in span:
            first, _, last = span.partition("-")
            start = _value(first, field, low, high, names, offset)
            end = _value(last, field, low, high, names, offset)
            if end < start:
                raise ScheduleError(f"{field}: the range {span!r} runs backwards")
        else:
            start = _value(span, field, low, high, names, offset)
            # "5/15" means from 5 to the end in steps of 15, as in Vixie cron.
            end = high if step_text else start
        values.update(range(start, end + 1, step))
    return values


def parse_schedule(text: str) -> Schedule:
    """Parse a five-field cron expression; raises ScheduleError naming the bad field."""
    parts = text.split()
    if len(parts) != 5:
        raise ScheduleError(
            f"expected five fields (minute hour day-of-month month "
            f"day-of-week), such as '0 8 * * fri'; got {text!r}"
        )
    parsed = [_parse_field(part, *spec) for part, spec in zip(parts, _FIELDS, strict=True)]
    minutes, hours, days, months, weekdays = parsed
    if 7 in weekdays:  # 7 is Sunday too
        weekdays = (weekdays - {7}) | {0}
    schedule = Schedule(
        text=" ".join(parts),
        minutes=tuple(sorted(minutes)),
        hours=tuple(sorted(hours)),
        days=frozenset(days),
        months=frozenset(months),
        weekdays=frozenset(weekdays),
        any_day=parts[2].startswith("*"),
        any_weekday=parts[4].startswith("*"),
    )
    if not any(day <= _MONTH_DAYS[month] for month in months for day in days) and (
        schedule.any_weekday or not weekdays
    ):
        raise ScheduleError(f"{text!r} never fires: no month in it has that day")
    return schedule


_MONTH_DAYS = {
    1: 31,
    2: 29,
    3: 31,
    4: 30,
    5: 31,
    6: 30,
    7: 31,
    8: 31,
    9: 30,
    10: 31,
    11: 30,
    12: 31,
}


def zone_named(name: str) -> ZoneInfo:
    """The IANA time zone ``name`` (``Europe/Berlin``, ``UTC``); raises ScheduleError."""
    try:
        return ZoneInfo(str(name).strip())
    except (ZoneInfoNotFoundError, ValueError):
        raise ScheduleError(
            f"unknown time zone {name!r}: use an IANA name such as "
            "Europe/Berlin or America/New_York (on systems without a zone "
            "database, the tzdata package provides one)"
        ) from None


def local_to_utc(naive: datetime, zone: ZoneInfo) -> datetime:
    """The UTC instant of a local wall-clock time: the first occurrence of a repeated time,
    and for a time inside a spring-forward gap the first minute after the gap."""
    first = naive.replace(tzinfo=zone, fold=0)
    second = naive.replace(tzinfo=zone, fold=1)
    if first.utcoffset() == second.utcoffset():
        return first.astimezone(UTC)
    if first.astimezone(UTC).astimezone(zone).replace(tzinfo=None) == naive:
        return first.astimezone(UTC)  # repeated: the earlier of the two
    # In the gap: fold=1 reads it with the offset after the change, fold=0 with the one
    # before, and the change lies between those two instants.
    low, high = sorted((first.astimezone(UTC), second.astimezone(UTC)))
    instant = low.replace(second=0, microsecond=0)
    while instant < high and instant.astimezone(zone).replace(tzinfo=None) <= naive:
        instant += timedelta(minutes=1)
    return instant


def next_tick(schedule: Schedule, zone: ZoneInfo, after: datetime) -> datetime:
    """The first time (aware, UTC) the schedule fires strictly after ``after``."""
    if after.tzinfo is None:
        raise ValueError("naive datetime given; use an aware datetime")
    start = after.astimezone(zone).replace(tzinfo=None, second=0, microsecond=0)
    day = start.date()
    for offset in range(SEARCH_DAYS):
        if offset:
            day = start.date() + timedelta(days=offset)
        if not schedule.day_matches(day):
            continue
        first_day = offset == 0
        for hour in schedule.hours:
            if first_day and hour < start.hour:
                continue
            minutes = schedule.minutes
            if first_day and hour == start.hour:
                minutes = minutes[bisect_left(minutes, start.minute) :]
            for minute in minutes:
                instant = local_to_utc(datetime.combine(day, time(hour, minute)), zone)
                if instant > after:
                    return instant
    raise ScheduleError(f"{schedule.text!r} does not fire within {SEARCH_DAYS // 366} years")


def latest_tick(
    schedule: Schedule, zone: ZoneInfo, now: datetime, since: datetime
) -> datetime | None:
    """The last time the schedule fired at or before ``now`` and not before ``since``; None
    when it did not fire in that window. Missed ticks collapse into this one."""
    latest = None
    tick = next_tick(schedule, zone, since - timedelta(microseconds=1))
    while tick <= now:
        latest = tick
        tick = next_tick(schedule, zone, tick)
    return latest
