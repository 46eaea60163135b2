"""Cron expressions: parsing, errors, matching, and ticks across daylight saving."""

from __future__ import annotations

import dataclasses
from datetime import UTC, date, datetime, timedelta, tzinfo

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from kerrera.core.crontab import CronExpression, load_zone, next_tick, ticks
from kerrera.core.errors import ConfigError

LONDON = load_zone("Europe/London")


def utc(
    year: int, month: int, day: int, hour: int = 0, minute: int = 0, second: int = 0
) -> datetime:
    return datetime(year, month, day, hour, minute, second, tzinfo=UTC)


@pytest.mark.parametrize(
    ("field", "expected"),
    [
        ("*", set(range(60))),
        ("7", {7}),
        ("05", {5}),
        ("10-13", {10, 11, 12, 13}),
        ("*/15", {0, 15, 30, 45}),
        ("10-30/10", {10, 20, 30}),
        ("50/3", {50, 53, 56, 59}),
        ("1,5-6,*/20", {0, 1, 5, 6, 20, 40}),
        ("0-59/100", {0}),
    ],
)
def test_minute_field_forms(field: str, expected: set[int]) -> None:
    assert CronExpression.parse(f"{field} * * * *").minutes == expected


@pytest.mark.parametrize(
    ("text", "months", "weekdays"),
    [
        ("0 0 * JAN *", {1}, set(range(7))),
        ("0 0 * jan-Mar,dec *", {1, 2, 3, 12}, set(range(7))),
        ("0 0 * FEB/4 MON-FRI", {2, 6, 10}, {1, 2, 3, 4, 5}),
        ("0 0 * * sat,SUN", set(range(1, 13)), {6, 0}),
        ("0 0 * * 7", set(range(1, 13)), {0}),
        ("0 0 * * 0", set(range(1, 13)), {0}),
        ("0 0 * * 5-7", set(range(1, 13)), {5, 6, 0}),
        ("0 0 * * 1/2", set(range(1, 13)), {1, 3, 5}),
    ],
)
def test_names_and_sunday(text: str, months: set[int], weekdays: set[int]) -> None:
    expr = CronExpression.parse(text)
    assert (set(expr.months), set(expr.days_of_week)) == (months, weekdays)


def test_seven_and_zero_both_match_sunday() -> None:
    sunday = datetime(2026, 3, 1, 0, 0)
    assert sunday.weekday() == 6
    for text in ("0 0 * * 0", "0 0 * * 7", "0 0 * * SUN"):
        assert CronExpression.parse(text).matches(sunday)
        assert not CronExpression.parse(text).matches(sunday + timedelta(days=1))


@pytest.mark.parametrize(
    ("nickname", "equivalent"),
    [
        ("@yearly", "0 0 1 1 *"),
        ("@annually", "0 0 1 1 *"),
        ("@monthly", "0 0 1 * *"),
        ("@weekly", "0 0 * * 0"),
        ("@daily", "0 0 * * *"),
        ("@midnight", "0 0 * * *"),
        ("@hourly", "0 * * * *"),
        (" @Daily ", "0 0 * * *"),
    ],
)
def test_nicknames(nickname: str, equivalent: str) -> None:
    expr = CronExpression.parse(nickname)
    assert expr.text == nickname
    assert not expr.reboot
    assert dataclasses.replace(expr, text=equivalent) == CronExpression.parse(equivalent)


def test_reboot_never_matches() -> None:
    expr = CronExpression.parse("@reboot")
    assert expr.reboot
    assert not expr.matches(datetime(2026, 1, 1))
    assert ticks(expr, UTC, utc(2026, 1, 1), utc(2026, 1, 2)) == []
    assert next_tick(expr, UTC, utc(2026, 1, 1)) is None


def test_whitespace_is_flexible() -> None:
    expr = CronExpression.parse("  0   12 *\t* *  ")
    assert expr.text == "  0   12 *\t* *  "
    assert expr.matches(datetime(2026, 5, 5, 12, 0, 42))
    assert not CronExpression.parse("0 12 * * *").reboot


def test_days_are_or_when_both_restricted() -> None:
    friday_13th, friday, the_13th, neither = (
        date(2026, 3, 13),
        date(2026, 3, 20),
        date(2026, 4, 13),
        date(2026, 4, 14),
    )
    either = CronExpression.parse("0 0 13 * FRI")
    assert [either.matches_day(d) for d in (friday_13th, friday, the_13th, neither)] == [
        True,
        True,
        True,
        False,
    ]
    # A field starting with `*` counts as unrestricted even with a step: both must match.
    both = CronExpression.parse("0 0 */1 * FRI")
    assert [both.matches_day(d) for d in (friday_13th, friday, the_13th)] == [True, True, False]
    only_13th = CronExpression.parse("0 0 13 * *")
    assert [only_13th.matches_day(d) for d in (friday_13th, friday, the_13th)] == [
        True,
        False,
        True,
    ]


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ("61 * * * *", "minute 61 is out of range 0-59"),
        ("* 24 * * *", "hour 24 is out of range 0-23"),
        ("* * 0 * *", "day-of-month 0 is out of range 1-31"),
        ("* * * 13 *", "month 13 is out of range 1-12"),
        ("* * * * 8", "day-of-week 8 is out of range 0-7"),
        ("* * * *", "expected 5 fields"),
        ("* * * * * *", "got 6"),
        ("", "got 0"),
        ("1,,2 * * * *", "empty list item in minute field"),
        ("* 1, * * *", "empty list item in hour field"),
        ("*/0 * * * *", "minute step 0 is not allowed"),
        ("*/x * * * *", "minute step 'x' is not a number"),
        ("*/2/3 * * * *", "minute step '2/3' is not a number"),
        ("* 5-1 * * *", "hour range '5-1' is reversed"),
        ("* * * * FRI-MON", "day-of-week range 'FRI-MON' is reversed"),
        ("* * * FOO *", "unknown month name 'FOO'"),
        ("* * * * funday", "unknown day-of-week name 'funday'"),
        ("JAN * * * *", "minute 'JAN' is not a number"),
        ("-1 * * * *", "minute item '-1' is missing a value"),
        ("1- * * * *", "minute item '1-' is missing a value"),
        ("@fortnightly", "unknown nickname '@fortnightly'"),
        ("@", "unknown nickname '@'"),
    ],
)
def test_errors_quote_expression_and_name_problem(text: str, problem: str) -> None:
    with pytest.raises(ConfigError) as info:
        CronExpression.parse(text)
    assert str(info.value).startswith(f"cron expression {text!r}: ")
    assert problem in str(info.value)


def test_load_zone() -> None:
    assert load_zone("Europe/London").key == "Europe/London"
    for bad in ("Mars/Base", "", "../etc/passwd", "Europe"):
        with pytest.raises(ConfigError, match=f"unknown timezone {bad!r}"):
            load_zone(bad)


def test_ticks_in_utc_exclude_start_include_end() -> None:
    expr = CronExpression.parse("*/15 * * * *")
    found = ticks(expr, UTC, utc(2026, 1, 1, 10, 0), utc(2026, 1, 1, 11, 0))
    assert [u for u, _ in found] == [utc(2026, 1, 1, 10, m) for m in (15, 30, 45)] + [
        utc(2026, 1, 1, 11, 0)
    ]
    assert found[0][1] == datetime(2026, 1, 1, 10, 15)
    # Seconds in the bounds: minutes strictly after `after`, up to and including `until`.
    seconds = ticks(expr, UTC, utc(2026, 1, 1, 10, 14, 59), utc(2026, 1, 1, 10, 15, 1))
    assert [u for u, _ in seconds] == [utc(2026, 1, 1, 10, 15)]
    assert ticks(expr, UTC, utc(2026, 1, 1, 11), utc(2026, 1, 1, 10)) == []


def test_ticks_in_a_zone() -> None:
    found = ticks(
        CronExpression.parse("0 9 * * MON-FRI"),
        load_zone("America/New_York"),
        utc(2026, 1, 2),
        utc(2026, 1, 6),
    )
    # Friday the 2nd and Monday the 5th, at 09:00 EST = 14:00 UTC.
    assert found == [
        (utc(2026, 1, 2, 14), datetime(2026, 1, 2, 9)),
        (utc(2026, 1, 5, 14), datetime(2026, 1, 5, 9)),
    ]


def test_ticks_spring_forward_skips_missing_minute() -> None:
    found = ticks(CronExpression.parse("30 1 * * *"), LONDON, utc(2026, 3, 28), utc(2026, 3, 31))
    # 01:30 on 29 March does not exist in London (01:00 GMT jumps to 02:00 BST).
    assert found == [
        (utc(2026, 3, 28, 1, 30), datetime(2026, 3, 28, 1, 30)),
        (utc(2026, 3, 30, 0, 30), datetime(2026, 3, 30, 1, 30)),
    ]


def test_ticks_fall_back_repeats_local_minute() -> None:
    expr = CronExpression.parse("30 1 * * *")
    found = ticks(expr, LONDON, utc(2026, 10, 24, 12), utc(2026, 10, 25, 12))
    # 01:30 on 25 October happens in BST (00:30 UTC) and again in GMT (01:30 UTC).
    assert found == [
        (utc(2026, 10, 25, 0, 30), datetime(2026, 10, 25, 1, 30)),
        (utc(2026, 10, 25, 1, 30), datetime(2026, 10, 25, 1, 30)),
    ]
    assert found[0][1].fold == found[1][1].fold == 0


def test_ticks_rejects_long_or_naive_ranges() -> None:
    expr = CronExpression.parse("0 * * * *")
    with pytest.raises(ValueError, match="longer than"):
        ticks(expr, UTC, utc(2026, 1, 1), utc(2026, 2, 2))
    with pytest.raises(ValueError, match="aware"):
        ticks(expr, UTC, datetime(2026, 1, 1), utc(2026, 1, 2))
    assert len(ticks(expr, UTC, utc(2026, 1, 1), utc(2026, 2, 1))) == 31 * 24


@pytest.mark.parametrize(
    ("text", "after", "expected"),
    [
        ("0 0 1 * *", utc(2026, 1, 31, 12), utc(2026, 2, 1)),
        ("0 0 1 1 *", utc(2026, 6, 1), utc(2027, 1, 1)),
        ("59 23 31 12 *", utc(2026, 12, 31, 23, 59), utc(2027, 12, 31, 23, 59)),
        ("0 0 29 2 *", utc(2024, 3, 1), utc(2028, 2, 29)),
        ("0 0 29 2 *", utc(2024, 2, 28, 23, 59, 59), utc(2024, 2, 29)),
        ("0 0 31 * *", utc(2026, 1, 31, 0, 0, 1), utc(2026, 3, 31)),
        ("*/5 * * * *", utc(2026, 1, 1, 10, 0), utc(2026, 1, 1, 10, 5)),
        ("*/5 * * * *", utc(2026, 1, 1, 10, 4, 30), utc(2026, 1, 1, 10, 5)),
        ("0 0 13 * FRI", utc(2026, 3, 13, 0, 0), utc(2026, 3, 20)),
        ("0 0 30 2 *", utc(2026, 1, 1), None),
        ("0 0 31 4,6,9,11 *", utc(2026, 1, 1), None),
    ],
)
def test_next_tick_utc(text: str, after: datetime, expected: datetime | None) -> None:
    assert next_tick(CronExpression.parse(text), UTC, after) == expected


def test_next_tick_in_zones() -> None:
    nine = CronExpression.parse("0 9 * * *")
    assert next_tick(nine, load_zone("America/New_York"), utc(2026, 1, 1)) == utc(2026, 1, 1, 14)
    assert next_tick(nine, load_zone("Asia/Kolkata"), utc(2026, 1, 1)) == utc(2026, 1, 1, 3, 30)
    # 01:30 on 29 March 2026 does not exist in London; in 2027 it is BST (00:30 UTC).
    march = CronExpression.parse("30 1 29 3 *")
    assert next_tick(march, LONDON, utc(2026, 1, 1)) == utc(2027, 3, 29, 0, 30)
    # Within the repeated hour, the second pass is the next tick after the first.
    fall = CronExpression.parse("30 1 * * *")
    assert next_tick(fall, LONDON, utc(2026, 10, 25, 0, 30)) == utc(2026, 10, 25, 1, 30)


ZONES = [UTC, LONDON, *(load_zone(n) for n in ("America/New_York", "Australia/Lord_Howe"))]
TRANSITIONS = [utc(2026, 3, 28, 22), utc(2026, 10, 24, 22), utc(2026, 4, 4, 12), utc(2024, 2, 28)]

expressions = st.builds(
    " ".join,
    st.tuples(
        st.sampled_from(["*", "0", "30", "*/15", "5-10", "59", "0,30", "1/20"]),
        st.sampled_from(["*", "0", "1", "2", "23", "*/6", "1-3", "9-17"]),
        st.sampled_from(["*", "1", "15", "29", "31", "*/10", "28-31"]),
        st.sampled_from(["*", "1", "2", "3", "10", "*/3", "FEB", "MAR-OCT"]),
        st.sampled_from(["*", "0", "7", "MON-FRI", "SAT,SUN", "*/2", "3"]),
    ),
).map(CronExpression.parse)
moments = st.builds(
    lambda base, minutes: base + timedelta(minutes=minutes, seconds=minutes % 3 * 20),
    st.sampled_from([*TRANSITIONS, utc(2025, 12, 31, 12)]),
    st.integers(-3 * 24 * 60, 3 * 24 * 60) | st.integers(0, 2 * 365 * 24 * 60),
)


@settings(max_examples=50, deadline=None)
@given(expressions, st.sampled_from(ZONES), moments)
def test_next_tick_is_first_of_ticks(expr: CronExpression, zone: tzinfo, after: datetime) -> None:
    span = timedelta(days=8)
    window = ticks(expr, zone, after, after + span)
    found = next_tick(expr, zone, after)
    if window:
        assert found == window[0][0]
    else:
        assert found is None or found > after + span


@settings(max_examples=30, deadline=None)
@given(expressions, st.sampled_from(ZONES), moments)
def test_ticks_agree_with_minute_by_minute_matching(
    expr: CronExpression, zone: tzinfo, after: datetime
) -> None:
    until = after + timedelta(hours=26)
    start = after.replace(second=0) + timedelta(minutes=1)
    minutes = (start + timedelta(minutes=i) for i in range(26 * 60))
    expected = []
    for minute in (m for m in minutes if m <= until):
        local = minute.astimezone(zone).replace(tzinfo=None, fold=0)
        if expr.matches(local):
            expected.append((minute, local))
    assert ticks(expr, zone, after, until) == expected
