"""The SSE trading calendar, and the YYYYMMDD dates Tushare sends."""

import datetime as dt

# Weekday closures of the SSE (ranges may run over weekends). The per-year
# trading-day counts match akshare's calendar: 2019 244, 2020 243, 2021 243,
# 2022 242, 2023 242, 2024 242, 2025 243, 2026 242.
_HOLIDAYS = {
    2019: "0101 0204-0210 0405 0501-0504 0607 0913 1001-1007",
    2020: "0101 0124-0202 0404-0406 0501-0505 0625-0626 1001-1008",
    2021: "0101 0211-0217 0403-0405 0501-0505 0614 0920-0921 1001-1007",
    2022: "0103 0131-0206 0403-0405 0430-0504 0603 0912 1001-1007",
    2023: "0102 0121-0127 0405 0429-0503 0622-0623 0929-1006",
    2024: "0101 0209-0217 0404-0406 0501-0505 0610 0915-0917 1001-1007",
    2025: "0101 0128-0204 0404-0406 0501-0505 0531-0602 1001-1008",
    2026: "0101-0103 0215-0223 0404-0406 0501-0505 0619 0925 1001-1007",
}
_FIXED_HOLIDAYS = "0101 0501-0503 1001-1007"  # other years: the lunar holidays are not modelled


def _closures(year):
    out = set()
    for part in _HOLIDAYS.get(year, _FIXED_HOLIDAYS).split():
        first, _, last = part.partition("-")
        day = dt.date(year, int(first[:2]), int(first[2:]))
        end = dt.date(year, int(last[:2]), int(last[2:])) if last else day
        while day <= end:
            out.add(day)
            day += dt.timedelta(days=1)
    return out


def is_trading_day(day):
    """True for a weekday that is not an exchange holiday (``day``: date or YYYYMMDD)."""
    if isinstance(day, str):
        day = to_date(day)
    return day.weekday() < 5 and day not in _closures(day.year)


def trading_days(start, count):
    """The first ``count`` trading days on or after ``start``, as YYYYMMDD strings."""
    day, out, closed, year = to_date(start), [], set(), None
    while len(out) < count:
        if day.year != year:
            year, closed = day.year, _closures(day.year)
        if day.weekday() < 5 and day not in closed:
            out.append(to_ymd(day))
        day += dt.timedelta(days=1)
    return out


def to_date(s):
    return dt.date(int(s[:4]), int(s[4:6]), int(s[6:8]))


def to_ymd(d):
    return f"{d.year:04d}{d.month:02d}{d.day:02d}"


def shift(ymd, days):
    return to_ymd(to_date(ymd) + dt.timedelta(days=days))
