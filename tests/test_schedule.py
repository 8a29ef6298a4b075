"""The cron schedule: parsing, the next tick, daylight-saving changes and missed ticks."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from newsletter.schedule import ScheduleError, latest_tick, next_tick, parse_schedule, zone_named

UTC_ZONE = zone_named("UTC")
BERLIN = zone_named("Europe/Berlin")
NEW_YORK = zone_named("America/New_York")


def utc(*args: int) -> datetime:
    return datetime(*args, tzinfo=UTC)


@pytest.mark.parametrize(
    ("expression", "after", "expected"),
    [
        # every minute
        ("* * * * *", utc(2026, 11, 6, 8, 0, 30), utc(2026, 11, 6, 8, 1)),
        ("* * * * *", utc(2026, 11, 6, 8, 0), utc(2026, 11, 6, 8, 1)),  # strictly after
        # Fridays at 8 (2026-11-06 is a Friday)
        ("0 8 * * fri", utc(2026, 11, 2, 9, 0), utc(2026, 11, 6, 8, 0)),
        ("0 8 * * FRI", utc(2026, 11, 6, 8, 0), utc(2026, 11, 13, 8, 0)),
        ("0 8 * * 5", utc(2026, 11, 6, 7, 59), utc(2026, 11, 6, 8, 0)),
        # 0 and 7 are both Sunday (2026-11-08 is a Sunday)
        ("30 6 * * 0", utc(2026, 11, 6), utc(2026, 11, 8, 6, 30)),
        ("30 6 * * 7", utc(2026, 11, 6), utc(2026, 11, 8, 6, 30)),
        ("30 6 * * sun", utc(2026, 11, 6), utc(2026, 11, 8, 6, 30)),
        # lists, ranges and steps
        ("0,30 9-10 * * *", utc(2026, 11, 6, 9, 10), utc(2026, 11, 6, 9, 30)),
        ("0,30 9-10 * * *", utc(2026, 11, 6, 10, 30), utc(2026, 11, 7, 9, 0)),
        ("*/15 * * * *", utc(2026, 11, 6, 8, 16), utc(2026, 11, 6, 8, 30)),
        ("5/20 * * * *", utc(2026, 11, 6, 8, 26), utc(2026, 11, 6, 8, 45)),
        ("0 0-12/6 * * *", utc(2026, 11, 6, 6, 1), utc(2026, 11, 6, 12, 0)),
        ("0 9 * * mon-fri", utc(2026, 11, 6, 9, 0), utc(2026, 11, 9, 9, 0)),
        # months by name and number
        ("0 0 1 jan *", utc(2026, 11, 6), utc(2027, 1, 1)),
        ("0 0 1 2,mar *", utc(2026, 11, 6), utc(2027, 2, 1)),
        # Vixie: day-of-month and day-of-week both restricted -> either matches
        ("0 8 13 * fri", utc(2026, 11, 6, 9), utc(2026, 11, 13, 8)),  # the 13th (a Friday too)
        ("0 8 1 * mon", utc(2026, 11, 2, 9), utc(2026, 11, 9, 8)),  # a Monday before the 1st
        ("0 8 10 * mon", utc(2026, 11, 2, 9), utc(2026, 11, 9, 8)),  # Monday the 9th first
        # ... but a star in one of them means only the other counts
        ("0 8 */2 * fri", utc(2026, 11, 6, 9), utc(2026, 11, 13, 8)),  # odd days that are Fridays
        ("0 8 13 * *", utc(2026, 11, 6, 9), utc(2026, 11, 13, 8)),
        # Feb 29 only: the next leap year
        ("0 0 29 feb *", utc(2026, 3, 1), utc(2028, 2, 29)),
    ],
)
def test_next_tick_in_utc(expression: str, after: datetime, expected: datetime) -> None:
    assert next_tick(parse_schedule(expression), UTC_ZONE, after) == expected


@pytest.mark.parametrize(
    ("expression", "words"),
    [
        ("", "five fields"),
        ("0 8 * *", "five fields"),
        ("0 8 * * * *", "five fields"),
        ("60 8 * * *", "minute: 60 is outside 0-59"),
        ("0 24 * * *", "hour: 24 is outside 0-23"),
        ("0 8 0 * *", "day of month: 0 is outside 1-31"),
        ("0 8 * 13 *", "month: 13 is outside 1-12"),
        ("0 8 * * 8", "day of week: 8 is outside 0-7"),
        ("0 8 * * fry", "day of week: 'fry' is not a number or a name"),
        ("0 8 * * 5-1", "runs backwards"),
        ("*/0 8 * * *", "step"),
        ("1,,2 8 * * *", "empty item"),
        ("0 0 30 feb *", "never fires"),
    ],
)
def test_bad_schedules_say_what_is_wrong(expression: str, words: str) -> None:
    with pytest.raises(ScheduleError, match=words.replace("(", r"\(")):
        parse_schedule(expression)


def test_an_unknown_zone_is_refused_with_an_example() -> None:
    with pytest.raises(ScheduleError, match="Europe/Berlin"):
        zone_named("Mars/Olympus_Mons")


def test_local_time_follows_the_zone_across_the_seasons() -> None:
    friday_8 = parse_schedule("0 8 * * fri")
    # Winter (CET, +1) and summer (CEST, +2): 8:00 in Berlin is 7:00 and 6:00 UTC.
    assert next_tick(friday_8, BERLIN, utc(2026, 11, 2)) == utc(2026, 11, 6, 7)
    assert next_tick(friday_8, BERLIN, utc(2026, 6, 1)) == utc(2026, 6, 5, 6)


def test_a_time_skipped_by_spring_forward_runs_at_the_first_minute_after_the_gap() -> None:
    # Berlin, 29 March 2026: 02:00 CET becomes 03:00 CEST; 02:30 does not exist that day.
    half_past_two = parse_schedule("30 2 * * *")
    tick = next_tick(half_past_two, BERLIN, utc(2026, 3, 28, 12))
    assert tick == utc(2026, 3, 29, 1, 0)  # 03:00 CEST
    assert tick.astimezone(BERLIN).strftime("%H:%M") == "03:00"
    # And the next day it is 02:30 again.
    assert next_tick(half_past_two, BERLIN, tick) == utc(2026, 3, 30, 0, 30)


def test_every_minute_across_the_gap_fires_once_at_its_end() -> None:
    every_minute = parse_schedule("* * * * *")
    before_gap = utc(2026, 3, 29, 0, 59)  # 01:59 CET
    tick = next_tick(every_minute, BERLIN, before_gap)
    assert tick == utc(2026, 3, 29, 1, 0)  # 03:00 CEST, once
    assert next_tick(every_minute, BERLIN, tick) == utc(2026, 3, 29, 1, 1)


def test_a_time_repeated_by_fall_back_runs_once() -> None:
    # Berlin, 25 October 2026: 03:00 CEST becomes 02:00 CET; 02:30 happens twice.
    half_past_two = parse_schedule("30 2 * * *")
    first = next_tick(half_past_two, BERLIN, utc(2026, 10, 24, 12))
    assert first == utc(2026, 10, 25, 0, 30)  # the first 02:30 (CEST)
    assert next_tick(half_past_two, BERLIN, first) == utc(2026, 10, 26, 1, 30)  # next day


def test_new_york_changes_on_other_dates() -> None:
    # 8 March 2026, 02:00 EST -> 03:00 EDT; 1 November 2026, 02:00 EDT -> 01:00 EST.
    assert next_tick(parse_schedule("15 2 * * *"), NEW_YORK, utc(2026, 3, 8)) == utc(
        2026, 3, 8, 7, 0
    )  # 03:00 EDT
    assert next_tick(parse_schedule("30 1 * * *"), NEW_YORK, utc(2026, 11, 1)) == utc(
        2026, 11, 1, 5, 30
    )  # the first 01:30 (EDT)


def test_missed_ticks_collapse_into_the_latest_within_the_window() -> None:
    friday_8 = parse_schedule("0 8 * * fri")
    start = utc(2026, 11, 6, 9, 30)  # Friday 9:30, the worker was down at 8:00
    assert latest_tick(friday_8, UTC_ZONE, start, since=start - timedelta(hours=12)) == utc(
        2026, 11, 6, 8
    )
    # Too late to catch up: 12 hours after the tick.
    late = utc(2026, 11, 6, 20, 1)
    assert latest_tick(friday_8, UTC_ZONE, late, since=late - timedelta(hours=12)) is None
    # Down for an hour with a schedule of every minute: only the last one counts.
    every_minute = parse_schedule("* * * * *")
    now = utc(2026, 11, 6, 9, 30, 20)
    assert latest_tick(every_minute, UTC_ZONE, now, since=now - timedelta(hours=1)) == utc(
        2026, 11, 6, 9, 30
    )
