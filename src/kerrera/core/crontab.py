"""Cron expressions: parse the standard five fields and find the minutes they name.

`CronExpression.parse` validates an expression once, up front, so a typo fails when the
app is configured rather than silently never firing. `ticks` lists the matching minutes
of a UTC range (the cron service's catch-up after each minute), and `next_tick` finds the
next one for services that sleep until their schedule is due.

Times are matched on the wall clock of the entry's timezone and reported in UTC. Across
daylight-saving changes a wall minute that does not exist never fires, and a wall minute
that happens twice is reported twice (once per UTC instant) with the same local value;
the cron service dedupes on that local value so the job runs once.
"""

from __future__ import annotations

import zoneinfo
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, time, timedelta, tzinfo

from kerrera.core.errors import ConfigError

#: Longest range `ticks` accepts; it steps through minutes, so it refuses runaway ranges.
MAX_TICKS_RANGE = timedelta(days=31)
#: How far ahead `next_tick` looks; long enough for any leap day.
NEXT_TICK_HORIZON = timedelta(days=5 * 366)

_MINUTE = timedelta(minutes=1)
_DAY = timedelta(days=1)
# Offsets have changed by up to about a day at once (Alaska in 1867, Samoa in 2011), so
# searches that reason about wall clocks from UTC instants keep this much slack.
_SLACK = 2 * _DAY
# next_tick scans this much UTC time minute by minute around each wall-clock candidate.
_WINDOW = 3 * _DAY

_NICKNAMES = {
    "@yearly": "0 0 1 1 *",
    "@annually": "0 0 1 1 *",
    "@monthly": "0 0 1 * *",
    "@weekly": "0 0 * * 0",
    "@daily": "0 0 * * *",
    "@midnight": "0 0 * * *",
    "@hourly": "0 * * * *",
}
_MONTHS = ["JAN", "FEB", "MAR", "APR", "MAY", "JUN", "JUL", "AUG", "SEP", "OCT", "NOV", "DEC"]
_WEEKDAYS = ["SUN", "MON", "TUE", "WED", "THU", "FRI", "SAT"]


@dataclass(frozen=True)
class _Field:
    """How to read one of the five fields."""

    name: str
    low: int
    high: int
    # `*` and `a/n` stop here; only day-of-week differs, where 7 is a second Sunday that
    # must not make `1/2` mean Monday, Wednesday, Friday and Sunday.
    open_high: int
    names: Mapping[str, int]


_FIELDS = (
    _Field("minute", 0, 59, 59, {}),
    _Field("hour", 0, 23, 23, {}),
    _Field("day-of-month", 1, 31, 31, {}),
    _Field("month", 1, 12, 12, {name: i for i, name in enumerate(_MONTHS, start=1)}),
    _Field("day-of-week", 0, 7, 6, {name: i for i, name in enumerate(_WEEKDAYS)}),
)


class _Problem(Exception):
    """What is wrong with one part of an expression; `parse` adds the whole text."""


@dataclass(frozen=True)
class CronExpression:
    """A parsed cron expression: `minute hour day-of-month month day-of-week`.

    Build one with `CronExpression.parse(text)`, which accepts `*`, numbers, ranges
    (`1-5`), steps (`*/15`, `0-30/10`, `5/20` meaning 5 to the field's end), lists of
    those (`0,15,30-45/5`), month and weekday names (`JAN`, `mon-fri`), 0 or 7 for
    Sunday, and the nicknames `@yearly`, `@annually`, `@monthly`, `@weekly`, `@daily`,
    `@midnight`, `@hourly` and `@reboot` (which never matches a minute).

    As in Vixie cron, when both day fields are restricted (neither starts with `*`) a
    day matches if either does: `0 0 1 * MON` runs on the 1st and on every Monday.

    >>> CronExpression.parse("*/15 9-17 * * MON-FRI").matches(datetime(2026, 1, 5, 9, 30))
    True
    """

    text: str
    reboot: bool = False
    minutes: frozenset[int] = field(default=frozenset(), repr=False)
    hours: frozenset[int] = field(default=frozenset(), repr=False)
    days_of_month: frozenset[int] = field(default=frozenset(), repr=False)
    months: frozenset[int] = field(default=frozenset(), repr=False)
    #: 0 is Sunday; a 7 in the text is stored as 0.
    days_of_week: frozenset[int] = field(default=frozenset(), repr=False)
    any_day_of_month: bool = field(default=True, repr=False)
    any_day_of_week: bool = field(default=True, repr=False)

    @classmethod
    def parse(cls, text: str) -> CronExpression:
        """Parse `text`; a `ConfigError` quotes it and says what is wrong."""
        try:
            return cls._parse(text)
        except _Problem as exc:
            raise ConfigError(f"cron expression {text!r}: {exc}") from None

    @classmethod
    def _parse(cls, text: str) -> CronExpression:
        stripped = text.strip()
        if stripped.startswith("@"):
            if stripped.lower() == "@reboot":
                return cls(text, reboot=True)
            if stripped.lower() not in _NICKNAMES:
                known = ", ".join([*_NICKNAMES, "@reboot"])
                raise _Problem(f"unknown nickname {stripped!r} (use one of {known})")
            stripped = _NICKNAMES[stripped.lower()]
        parts = stripped.split()
        if len(parts) != len(_FIELDS):
            raise _Problem(
                f"expected 5 fields (minute hour day-of-month month day-of-week), got {len(parts)}"
            )
        minutes, hours, days, months, weekdays = (
            _parse_field(spec, part) for spec, part in zip(_FIELDS, parts, strict=True)
        )
        return cls(
            text,
            minutes=minutes,
            hours=hours,
            days_of_month=days,
            months=months,
            days_of_week=frozenset(day % 7 for day in weekdays),
            any_day_of_month=parts[2].startswith("*"),
            any_day_of_week=parts[4].startswith("*"),
        )

    def matches(self, local: datetime) -> bool:
        """Whether the wall-clock minute `local` (naive, seconds ignored) matches."""
        return (
            not self.reboot
            and local.minute in self.minutes
            and local.hour in self.hours
            and self.matches_day(local.date())
        )

    def matches_day(self, day: date) -> bool:
        """Whether some minute of `day` matches: its month and day fields agree."""
        if day.month not in self.months:
            return False
        by_month_day = day.day in self.days_of_month
        by_weekday = (day.weekday() + 1) % 7 in self.days_of_week
        if self.any_day_of_month or self.any_day_of_week:
            return by_month_day and by_weekday
        return by_month_day or by_weekday


def _parse_field(spec: _Field, text: str) -> frozenset[int]:
    values: set[int] = set()
    for item in text.split(","):
        if not item:
            raise _Problem(f"empty list item in {spec.name} field {text!r}")
        values.update(_parse_item(spec, item))
    return frozenset(values)


def _parse_item(spec: _Field, item: str) -> range:
    base, slash, step_text = item.partition("/")
    step = _parse_step(spec, step_text) if slash else 1
    if base == "*":
        return range(spec.low, spec.open_high + 1, step)
    start_text, dash, end_text = base.partition("-")
    start = _parse_value(spec, start_text, item)
    if dash:
        end = _parse_value(spec, end_text, item)
    else:
        end = max(start, spec.open_high) if slash else start
    if start > end:
        raise _Problem(f"{spec.name} range {base!r} is reversed (start after end)")
    return range(start, end + 1, step)


def _parse_step(spec: _Field, text: str) -> int:
    if not (text.isascii() and text.isdigit()):
        raise _Problem(f"{spec.name} step {text!r} is not a number")
    if int(text) == 0:
        raise _Problem(f"{spec.name} step 0 is not allowed (use 1 or more)")
    return int(text)


def _parse_value(spec: _Field, text: str, item: str) -> int:
    if text.isascii() and text.isdigit():
        value = int(text)
    elif text.upper() in spec.names:
        return spec.names[text.upper()]
    elif not text:
        raise _Problem(f"{spec.name} item {item!r} is missing a value")
    elif spec.names:
        raise _Problem(f"unknown {spec.name} name {text!r}")
    else:
        raise _Problem(f"{spec.name} {text!r} is not a number")
    if not spec.low <= value <= spec.high:
        raise _Problem(f"{spec.name} {value} is out of range {spec.low}-{spec.high}")
    return value


def load_zone(name: str) -> zoneinfo.ZoneInfo:
    """The IANA timezone `name` (e.g. `"Europe/London"`); `ConfigError` if unknown."""
    if not isinstance(name, str):
        raise ConfigError(f"timezone must be a string such as 'Europe/London', got {name!r}")
    try:
        return zoneinfo.ZoneInfo(name)
    # ValueError covers keys that are not zone names at all ("", "../x", a corrupt file).
    except (zoneinfo.ZoneInfoNotFoundError, ValueError, OSError):
        raise ConfigError(f"unknown timezone {name!r}") from None


def ticks(
    expr: CronExpression, zone: tzinfo, after: datetime, until: datetime
) -> list[tuple[datetime, datetime]]:
    """Every whole UTC minute in `(after, until]` whose wall clock in `zone` matches.

    Returns `(utc_minute, local_minute)` pairs in UTC order: `utc_minute` is aware, in
    UTC; `local_minute` is the naive wall-clock minute in `zone`. A repeated wall minute
    (clocks going back) appears twice with the same `local_minute`. `after` and `until`
    must be aware; a range over `MAX_TICKS_RANGE` (31 days) raises `ValueError`.

    >>> start = datetime(2026, 1, 1, tzinfo=UTC)
    >>> len(ticks(CronExpression.parse("*/15 * * * *"), UTC, start, start + timedelta(days=1)))
    96
    """
    start, end = _as_utc(after, "after"), _as_utc(until, "until")
    if end - start > MAX_TICKS_RANGE:
        raise ValueError(f"ticks: range {start} to {end} is longer than {MAX_TICKS_RANGE}")
    return list(_iter_ticks(expr, zone, start, end))


def _iter_ticks(
    expr: CronExpression, zone: tzinfo, start: datetime, end: datetime
) -> Iterator[tuple[datetime, datetime]]:
    # A generator so that next_tick can stop at the first match of a dense expression.
    minute = start.replace(second=0, microsecond=0) + _MINUTE
    while minute <= end and not expr.reboot:
        local = _wall(minute, zone)
        gap = _minutes_to_candidate(expr, local)
        if gap == 0:
            yield minute, local
            minute += _MINUTE
        else:
            minute = _skip(minute, gap, zone)


def next_tick(expr: CronExpression, zone: tzinfo, after: datetime) -> datetime | None:
    """The first whole UTC minute strictly after `after` (aware) that matches in `zone`.

    Looks up to `NEXT_TICK_HORIZON` (about 5 years) ahead; `None` for `@reboot` and for
    expressions that never match, such as `0 0 30 2 *`.

    >>> next_tick(CronExpression.parse("@yearly"), UTC, datetime(2026, 3, 1, tzinfo=UTC))
    datetime.datetime(2027, 1, 1, 0, 0, tzinfo=datetime.timezone.utc)
    """
    cursor = _as_utc(after, "after")
    horizon = cursor + NEXT_TICK_HORIZON
    while cursor < horizon and not expr.reboot:
        # Skip by calendar on the wall clock (cheap), then let `_iter_ticks` settle the exact
        # UTC instant near the candidate, where daylight saving makes the mapping tricky.
        wall = _next_wall_match(expr, _wall(cursor, zone) - _SLACK, _naive(horizon) + _SLACK)
        if wall is None:
            return None
        # No minute at or after `wall` on the wall clock comes before this UTC instant.
        cursor = max(cursor, wall.replace(tzinfo=UTC) - _SLACK)
        first = next(_iter_ticks(expr, zone, cursor, cursor + _WINDOW), None)
        if first is not None:
            return first[0]
        cursor += _WINDOW
    return None


def _as_utc(moment: datetime, name: str) -> datetime:
    if moment.utcoffset() is None:
        raise ValueError(f"{name} must be an aware datetime, got {moment!r}")
    return moment.astimezone(UTC)


def _naive(moment: datetime) -> datetime:
    return moment.replace(tzinfo=None)


def _wall(utc_minute: datetime, zone: tzinfo) -> datetime:
    # fold=0 so both passes of a repeated wall minute give identical local values;
    # seconds go because a few historical offsets are not whole minutes.
    local = utc_minute.astimezone(zone)
    return local.replace(tzinfo=None, second=0, microsecond=0, fold=0)


def _minutes_to_candidate(expr: CronExpression, local: datetime) -> int:
    """Wall-clock minutes from `local` to the next minute that could match; 0 if it does."""
    if not expr.matches_day(local.date()):
        return 24 * 60 - local.hour * 60 - local.minute
    if local.hour not in expr.hours:
        return 60 - local.minute
    later = [m for m in expr.minutes if m >= local.minute]
    return (min(later) if later else 60) - local.minute


def _skip(minute: datetime, gap: int, zone: tzinfo) -> datetime:
    landing = minute + timedelta(minutes=gap)
    # `gap` real minutes move the wall clock `gap` minutes only if the offset is the same
    # at both ends. Near a transition, step one minute instead: jumping could otherwise
    # carry us past a matching wall minute when the clocks go forward.
    if landing.astimezone(zone).utcoffset() == minute.astimezone(zone).utcoffset():
        return landing
    return minute + _MINUTE


def _next_wall_match(expr: CronExpression, start: datetime, limit: datetime) -> datetime | None:
    """The first naive wall minute at or after `start` that matches, if before `limit`."""
    moment = start.replace(second=0, microsecond=0)
    while moment <= limit:
        if moment.month not in expr.months:
            moment = datetime(moment.year + moment.month // 12, moment.month % 12 + 1, 1)
        elif not expr.matches_day(moment.date()):
            moment = datetime.combine(moment.date() + _DAY, time())
        elif moment.hour not in expr.hours:
            moment = moment.replace(minute=0) + timedelta(hours=1)
        elif moment.minute not in expr.minutes:
            moment += _MINUTE
        else:
            return moment
    return None
