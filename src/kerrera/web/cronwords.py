"""Cron expressions in plain words for the cron page: `*/15 9-17 * * MON-FRI` reads
"every 15 minutes from 09:00 to 17:59, Monday to Friday". Common forms only; anything
else is shown as the expression itself (`describe` returns None for it).

>>> describe("30 2 * * *")
'every day at 02:30'
"""

from __future__ import annotations

import re

_NICKNAMES = {
    "@yearly": "every year on 1 January at 00:00",
    "@annually": "every year on 1 January at 00:00",
    "@monthly": "on the 1st of every month at 00:00",
    "@weekly": "every Sunday at 00:00",
    "@daily": "every day at 00:00",
    "@midnight": "every day at 00:00",
    "@hourly": "every hour at :00",
    "@reboot": "once, when the cluster's leader boots",
}
_DAYS = ["Sunday", "Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday"]
_DAY_NAMES = {d[:3].upper(): i for i, d in enumerate(_DAYS[:7])}
_MONTHS = ["January", "February", "March", "April", "May", "June", "July", "August",
           "September", "October", "November", "December"]  # fmt: skip
_MONTH_NAMES = {m[:3].upper(): i for i, m in enumerate(_MONTHS, start=1)}
_NUMBER = re.compile(r"^\d{1,2}$")
_STEP = re.compile(r"^\*/(\d{1,2})$")
_RANGE = re.compile(r"^(\w{1,3})-(\w{1,3})$")


def describe(expression: str) -> str | None:
    """`expression` in words, or None when it is not one of the forms known here."""
    text = expression.strip()
    if text.startswith("@"):
        return _NICKNAMES.get(text.lower())
    parts = text.split()
    if len(parts) != 5:
        return None
    minute, hour, dom, month, dow = parts
    when = _time(minute, hour)
    days = _days(dom, month, dow)
    if when is None or days is None:
        return None
    if not days:
        return f"every day {when}" if when.startswith("at ") else when
    return f"{when}, {days}" if not when.startswith("at ") else f"{days} {when}"


def _time(minute: str, hour: str) -> str | None:
    if minute == "*" and hour == "*":
        return "every minute"
    step = _STEP.match(minute)
    if step and hour == "*":
        return f"every {int(step.group(1))} minutes"
    if _NUMBER.match(minute) and hour == "*":
        return f"every hour at :{int(minute):02d}"
    hours = _STEP.match(hour)
    if _NUMBER.match(minute) and hours:
        return f"every {int(hours.group(1))} hours at :{int(minute):02d}"
    span = _RANGE.match(hour)
    if span and span.group(1).isdigit() and span.group(2).isdigit():
        low, high = int(span.group(1)), int(span.group(2))
        within = f"from {low:02d}:00 to {high:02d}:59"
        if minute == "*":
            return f"every minute {within}"
        if step:
            return f"every {int(step.group(1))} minutes {within}"
        if _NUMBER.match(minute):
            return f"every hour at :{int(minute):02d} {within}"
        return None
    minutes, hour_list = _numbers(minute), _numbers(hour)
    if minutes is None or hour_list is None or len(minutes) * len(hour_list) > 4:
        return None
    times = [f"{h:02d}:{m:02d}" for h in hour_list for m in minutes]
    return "at " + _and(times)


def _days(dom: str, month: str, dow: str) -> str | None:
    if dom == "*" and month == "*" and dow == "*":
        return ""
    if dom == "*" and month == "*":
        return _weekdays(dow)
    if dow != "*":
        return None  # both day fields restricted: either matches (rarely meant; show it)
    days = _numbers(dom) if dom != "*" else None
    if dom != "*" and days is None:
        return None
    if month == "*":
        assert days is not None
        return f"on the {_and([_ordinal(d) for d in days])} of every month"
    months = _numbers(month, _MONTH_NAMES)
    if months is None or not all(1 <= m <= 12 for m in months):
        return None
    names = _and([_MONTHS[m - 1] for m in months])
    if days is None:
        return f"every day in {names}"
    return f"on {_and([str(d) for d in days])} {names}"


def _weekdays(dow: str) -> str | None:
    span = _RANGE.match(dow)
    if span:
        low, high = _value(span.group(1), _DAY_NAMES), _value(span.group(2), _DAY_NAMES)
        if low is None or high is None or not 0 <= low < high <= 7:
            return None
        return f"{_DAYS[low]} to {_DAYS[high]}"
    days = _numbers(dow, _DAY_NAMES)
    if days is None or not all(0 <= d <= 7 for d in days):
        return None
    return "every " + _and([_DAYS[d] for d in days])


def _numbers(text: str, names: dict[str, int] | None = None) -> list[int] | None:
    """A comma list of plain values (numbers or names), or None for anything else."""
    values = [_value(item, names or {}) for item in text.split(",")]
    if any(v is None for v in values):
        return None
    return [v for v in values if v is not None]


def _value(text: str, names: dict[str, int]) -> int | None:
    if _NUMBER.match(text):
        return int(text)
    return names.get(text.upper())


def _ordinal(n: int) -> str:
    suffix = "th" if 10 <= n % 100 <= 20 else {1: "st", 2: "nd", 3: "rd"}.get(n % 10, "th")
    return f"{n}{suffix}"


def _and(items: list[str]) -> str:
    return items[0] if len(items) == 1 else ", ".join(items[:-1]) + " and " + items[-1]
