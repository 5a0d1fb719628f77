"""Date surface formats: render a date in a format, parse a string back to (date, format).

Why shared: the corpus writes dates in many clinical formats ("3/4/21", "04-MAR-2021",
"March 4th") and the surrogate step must shift every one of them by the patient's offset
*and write it back in the same format*. Using one format table for both guarantees that
every format the generator produces is one the shifter understands (a test checks this).

A format is a string of fields in braces, e.g. ``"{Month} {d}, {yyyy}"``. Fields:
``d dd dth`` day (plain, zero-padded, ordinal), ``m mm Mon Month`` month, ``yy yyyy`` year,
``Weekday``. Case is carried separately (upper/title/lower) so "MARCH" shifts to "APRIL".
"""

from __future__ import annotations

import calendar
import datetime as dt
import re
from dataclasses import dataclass
from functools import cache

MONTHS = list(calendar.month_name)[1:]
MONS = list(calendar.month_abbr)[1:]
WEEKDAYS = list(calendar.day_name)

FORMATS: tuple[str, ...] = (
    "{mm}/{dd}/{yyyy}", "{m}/{d}/{yyyy}", "{m}/{d}/{yy}", "{mm}/{dd}/{yy}",
    "{yyyy}-{mm}-{dd}", "{mm}-{dd}-{yyyy}", "{m}-{d}-{yy}", "{dd}.{mm}.{yyyy}",
    "{Month} {d}, {yyyy}", "{Month} {dth}, {yyyy}", "{d} {Month} {yyyy}",
    "{Mon} {d}, {yyyy}", "{Mon} {d} {yyyy}", "{dd}-{Mon}-{yyyy}", "{dd}-{Mon}-{yy}",
    "{d} {Mon} {yyyy}", "{Month} {d}", "{Month} {dth}", "{Mon} {d}", "{dth} of {Month}",
    "{m}/{d}", "{mm}/{dd}", "{Month} {yyyy}", "{Mon} {yyyy}", "{m}/{yyyy}", "{mm}/{yyyy}",
    "{yyyy}", "{yyyy}{mm}{dd}", "{Weekday}", "{Weekday}, {Month} {d}, {yyyy}",
    "{Weekday} {m}/{d}",
)
"""Every format the corpus emits and the shifter parses (US month-first order)."""

_FIELD_RE = re.compile(r"\{(\w+)\}")
_FIELD_PATTERNS = {
    "d": r"(?P<d>[12]\d|3[01]|0?[1-9])",
    "dd": r"(?P<d>0[1-9]|[12]\d|3[01])",
    "dth": r"(?P<d>[12]\d|3[01]|0?[1-9])(?:st|nd|rd|th)",
    "m": r"(?P<m>1[0-2]|0?[1-9])",
    "mm": r"(?P<m>0[1-9]|1[0-2])",
    "Mon": r"(?P<mon>" + "|".join(MONS) + r")\.?",
    "Month": r"(?P<month>" + "|".join(MONTHS) + ")",
    "yy": r"(?P<yy>\d{2})",
    "yyyy": r"(?P<y>(?:18|19|20|21)\d{2})",
    "Weekday": r"(?P<wd>" + "|".join(WEEKDAYS) + ")",
}
_LEAP_YEAR = 2000  # placeholder year for formats without a year: Feb 29 stays valid


@dataclass(frozen=True)
class ParsedDate:
    """A date read from text: the value, which parts were present, format and case."""

    value: dt.date
    fmt: str
    case: str  # "upper" | "lower" | "as-is"


def _ordinal(day: int) -> str:
    if 10 <= day % 100 <= 20:
        return f"{day}th"
    return f"{day}{ {1: 'st', 2: 'nd', 3: 'rd'}.get(day % 10, 'th')}"


def render(date: dt.date, fmt: str, case: str = "as-is") -> str:
    """Write ``date`` in ``fmt`` (see module docstring), then apply ``case``."""
    values = {
        "d": str(date.day), "dd": f"{date.day:02d}", "dth": _ordinal(date.day),
        "m": str(date.month), "mm": f"{date.month:02d}", "Mon": MONS[date.month - 1],
        "Month": MONTHS[date.month - 1], "yy": f"{date.year % 100:02d}",
        "yyyy": str(date.year), "Weekday": WEEKDAYS[date.weekday()],
    }
    out = _FIELD_RE.sub(lambda m: values[m.group(1)], fmt)
    if case == "upper":
        return out.upper()
    if case == "lower":
        return out.lower()
    return out


@cache
def _compiled(fmt: str) -> re.Pattern[str]:
    parts, pos = [], 0
    for m in _FIELD_RE.finditer(fmt):
        parts.append(re.escape(fmt[pos:m.start()]).replace(r"\ ", r"\s+"))
        parts.append(_FIELD_PATTERNS[m.group(1)])
        pos = m.end()
    parts.append(re.escape(fmt[pos:]).replace(r"\ ", r"\s+"))
    return re.compile("".join(parts), re.IGNORECASE)


def _case_of(text: str) -> str:
    letters = [c for c in text if c.isalpha()]
    if letters and all(c.isupper() for c in letters) and len(letters) > 1:
        return "upper"
    if letters and all(c.islower() for c in letters):
        return "lower"
    return "as-is"


def _month_index(name: str, names: list[str]) -> int:
    low = name.lower().rstrip(".")
    return [n.lower() for n in names].index(low) + 1


def parse(text: str, reference: dt.date | None = None) -> ParsedDate | None:
    """Read ``text`` (the whole string) as a date in one of :data:`FORMATS`, else None.

    Missing parts are filled from ``reference`` (default: the leap placeholder year,
    day 15 for month-year, July 1 for a bare year) so the date can be shifted.
    """
    stripped = text.strip()
    first: ParsedDate | None = None
    for fmt in FORMATS:
        m = _compiled(fmt).fullmatch(stripped)
        if not m:
            continue
        try:
            value = _build(m.groupdict(), reference)
        except ValueError:
            continue
        parsed = ParsedDate(value, fmt, _case_of(stripped))
        # prefer the format that writes the text back exactly (zero padding, "Mar." etc.)
        if _squash(render(value, fmt)) == _squash(stripped):
            return parsed
        first = first or parsed
    return first


def _squash(text: str) -> str:
    return re.sub(r"\s+", " ", text).lower()


def _build(g: dict[str, str | None], reference: dt.date | None) -> dt.date:
    ref = reference or dt.date(_LEAP_YEAR, 7, 1)
    if g.get("y"):
        year = int(g["y"])  # type: ignore[arg-type]
    elif g.get("yy"):
        yy = int(g["yy"])  # type: ignore[arg-type]
        year = 2000 + yy if yy <= 30 else 1900 + yy
    else:
        year = ref.year
    if g.get("m"):
        month = int(g["m"])  # type: ignore[arg-type]
    elif g.get("mon"):
        month = _month_index(g["mon"], MONS)  # type: ignore[arg-type]
    elif g.get("month"):
        month = _month_index(g["month"], MONTHS)  # type: ignore[arg-type]
    elif g.get("wd"):
        # A bare weekday: pick the reference week's matching day so shifts keep weekday math.
        target = [w.lower() for w in WEEKDAYS].index(g["wd"].lower())  # type: ignore[union-attr]
        return ref + dt.timedelta(days=(target - ref.weekday()) % 7)
    else:
        month = 7
    day = int(g["d"]) if g.get("d") else (15 if (g.get("m") or g.get("mon") or g.get("month"))
                                          else 1)
    if g.get("wd") and not (g.get("y") or g.get("yy")):
        # "Thursday 3/7": pick the nearest year in which that day is that weekday
        target = [w.lower() for w in WEEKDAYS].index(g["wd"].lower())  # type: ignore[union-attr]
        for delta in sorted(range(-14, 15), key=abs):
            try:
                candidate = dt.date(year + delta, month, day)
            except ValueError:
                continue
            if candidate.weekday() == target:
                return candidate
    return dt.date(year, month, day)


def shift(text: str, days: int) -> str | None:
    """``text`` shifted by ``days`` and rewritten in its own format; None if unparseable.

    Formats without a day (``"March 2021"``, ``"2021"``) shift their mid-point, so the
    coarse value moves consistently with the patient's other dates.
    """
    parsed = parse(text)
    if parsed is None:
        return None
    moved = parsed.value + dt.timedelta(days=days)
    return render(moved, parsed.fmt, parsed.case)
