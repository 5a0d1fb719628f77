"""Date formats: every format renders, parses back and shifts keeping its format."""

from __future__ import annotations

import datetime as dt

import pytest

from fedmed.deid import dates


@pytest.mark.parametrize("fmt", dates.FORMATS)
def test_render_parse_round_trip(fmt: str) -> None:
    day = dt.date(2019, 3, 7)
    text = dates.render(day, fmt)
    parsed = dates.parse(text)
    assert parsed is not None, text
    assert dates.render(parsed.value, parsed.fmt) == text
    shifted = dates.shift(text, 40)
    assert shifted is not None and shifted != text or fmt == "{yyyy}"
    assert dates.parse(shifted).fmt == parsed.fmt  # type: ignore[union-attr]


def test_shift_keeps_intervals_and_case() -> None:
    a, b = "03/01/2020", "03/15/2020"
    sa, sb = dates.shift(a, -100), dates.shift(b, -100)
    pa, pb = dates.parse(sa), dates.parse(sb)  # type: ignore[arg-type]
    assert (pb.value - pa.value).days == 14  # type: ignore[union-attr]
    assert dates.shift("MARCH 3, 2020", 31) == "APRIL 3, 2020"
    assert dates.shift("120/80", 3) is None and dates.parse("2/6 murmur") is None
