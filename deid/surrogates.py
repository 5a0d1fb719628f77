"""Replace detected PHI with realistic, format-keeping, consistent surrogates.

Why realistic surrogates instead of ``[NAME]`` tags (ANCHORS "Surrogates"): a PHI string
the detector missed hides among fakes of the same shape, so a reader cannot tell which
name is real. Rules:

- consistency: the surrogate of a value is a function of HMAC(site secret, scope, value),
  where scope is the patient id for patient-level PHI (names of patients/relatives,
  addresses, contacts, IDs) and the site for site-level entities (clinicians, user names,
  hospitals, departments, organisations). The same patient keeps the same fake name in
  every note; "Smith" and "John Smith" map word by word, so partial mentions agree;
- a surrogate never repeats the original: drawing "Smith" for "Smith" (about one chance
  in a thousand per word), "J." for "J." (one in 26) or "Ohio" for "Ohio" (one in fifty)
  would release the real value as if it were a fake;
- dates: every date of a patient is shifted by one secret offset (:meth:`SiteKey.date_offset`)
  and rewritten in its own format (:mod:`fedmed.deid.dates`), so intervals and order are
  kept; unparseable date phrases get a consistent fake date;
- ages over 89 become ``"90+"`` (Safe Harbor item C); ages up to 89 are kept;
- IDs, phones, zips, rooms keep their shape (digits stay digits, letters letters,
  punctuation kept);
- redaction mode writes ``[SUBTYPE]`` instead.

The replacement itself runs through presidio-anonymizer with one custom operator per
subtype; the returned item positions say where surrogates sit in the output (the residual
check skips them). Presidio rebuilds the whole text for every replacement (time quadratic
in the note's length: a 50 MB note with its ~10^5 spans would copy petabytes), so a long
note is scrubbed in pieces of about :data:`SCRUB_PIECE_CHARS` cut between spans, never
between two spans Presidio would join (same type, only spaces between): same output.
"""

from __future__ import annotations

import datetime as dt
import random
import re
import string
from collections.abc import Callable
from dataclasses import dataclass
from functools import lru_cache

from presidio_anonymizer import AnonymizerEngine
from presidio_anonymizer.entities import OperatorConfig, RecognizerResult

from fedmed.deid import dates
from fedmed.deid.fakes import FakePHI
from fedmed.deid.phi import SUBTYPES, Span, age_value
from fedmed.deid.sitekey import SiteKey

SITE_LEVEL = frozenset({"DOCTOR", "USERNAME", "HOSPITAL", "DEPARTMENT", "ORGANIZATION",
                        "PROFESSION"})
"""Subtypes whose surrogate is consistent site-wide rather than per patient."""

SHAPE_KEPT = frozenset({"ZIP", "ROOM", "PHONE", "FAX", "SSN", "MEDICALRECORD", "HEALTHPLAN",
                        "ACCOUNT", "LICENSE", "VEHICLE", "DEVICE", "BIOID", "IDNUM",
                        "USERNAME"})
_NAME_PARTS = re.compile(r"([^\W\d_]+)")
SCRUB_PIECE_CHARS = 50_000
_SPACES = re.compile(r" +")


@lru_cache(maxsize=1)
def _name_pools() -> tuple[tuple[str, ...], tuple[str, ...], frozenset[str]]:
    from faker.providers.person.en_US import Provider

    firsts = tuple(Provider.first_names)
    return firsts, tuple(Provider.last_names), frozenset(f.lower() for f in firsts)


def _other_than(original: str, draw: Callable[[], str], tries: int = 32) -> str:
    """``draw()`` again while it equals ``original`` (case and outer spaces aside).

    A surrogate equal to the value it replaces would release that value looking like a
    fake; every pool here is far larger than ``tries`` values, so one redraw or two do.
    """
    value = draw()
    for _ in range(tries):
        if value.strip().lower() != original.strip().lower():
            break
        value = draw()
    return value


def _match_case(new: str, old: str) -> str:
    letters = [c for c in old if c.isalpha()]
    if letters and all(c.isupper() for c in letters) and (len(letters) > 1 or len(old) == 1):
        return new.upper()
    if letters and all(c.islower() for c in letters):
        return new.lower()
    return new


@dataclass(frozen=True)
class ScrubResult:
    """The scrubbed text and where each surrogate sits in it."""

    text: str
    replaced: tuple[Span, ...]


class SurrogateGenerator:
    """Surrogate strings for one site (see the module docstring for the rules)."""

    def __init__(self, key: SiteKey, max_shift_days: int = 1095) -> None:
        self.key = key
        self.max_shift_days = max_shift_days

    def _scope(self, subtype: str, patient_id: str) -> str:
        return "site" if subtype in SITE_LEVEL else f"patient:{patient_id}"

    def _rng(self, *parts: str) -> random.Random:
        return random.Random(self.key.number(*parts))

    def date_offset(self, patient_id: str) -> int:
        return self.key.date_offset(patient_id, self.max_shift_days)

    def surrogate(self, subtype: str, original: str, patient_id: str) -> str:
        scope = self._scope(subtype, patient_id)
        if subtype in ("PATIENT", "DOCTOR"):
            return self._name(original, scope)
        if subtype == "DATE":
            return self._date(original, patient_id)
        if subtype == "AGE":
            value = age_value(original)
            return "90+" if value is None or value > 89 else original
        if subtype in SHAPE_KEPT:
            return self._shape(subtype, original, scope)
        return self._fake(subtype, original, scope)

    def _name(self, original: str, scope: str) -> str:
        firsts, lasts, first_set = _name_pools()

        def word(m: re.Match[str]) -> str:
            w = m.group()
            rng = self._rng("name", scope, w.lower())
            if len(w) == 1 or (w.isupper() and len(w) <= 3 and original.strip() == w):
                return _other_than(
                    w, lambda: "".join(rng.choice(string.ascii_uppercase) for _ in w)
                )
            pool = firsts if w.lower() in first_set else lasts
            return _match_case(_other_than(w, lambda: rng.choice(pool)), w)

        return _NAME_PARTS.sub(word, original)

    def _date(self, original: str, patient_id: str) -> str:
        offset = self.date_offset(patient_id)
        shifted = dates.shift(original, offset)
        if shifted is not None:
            return shifted
        # "Christmas", "last spring": a consistent fake day, written as "Month d"
        rng = self._rng("date-fallback", patient_id, original.lower())
        day = dt.date(2000, 1, 1) + dt.timedelta(days=rng.randint(0, 365))
        return dates.render(day, "{Month} {d}")

    def _shape(self, subtype: str, original: str, scope: str, attempt: int = 0) -> str:
        """Same shape, other characters; retried (salted) in the rare case of a collision."""
        if not any(ch.isalnum() for ch in original):
            return original
        rng = self._rng("shape", subtype, scope, original, str(attempt))
        out = []
        for i, ch in enumerate(original):
            if ch.isdigit():
                lo = 1 if i == 0 and subtype in ("SSN", "PHONE", "FAX") else 0
                out.append(str(rng.randint(lo, 9)))
            elif ch.isalpha() and ch.isascii():
                letter = rng.choice(string.ascii_lowercase)
                out.append(letter.upper() if ch.isupper() else letter)
            else:
                out.append(ch)
        new = "".join(out)
        if new == original and attempt < 8:
            return self._shape(subtype, original, scope, attempt + 1)
        return new

    def _fake(self, subtype: str, original: str, scope: str) -> str:
        fp = FakePHI(self._rng("fake", subtype, scope, original.lower()))
        makers = {
            "PROFESSION": fp.profession, "STREET": fp.street, "CITY": fp.city,
            "STATE": (fp.fake.state_abbr if len(original.strip()) == 2 else fp.fake.state),
            "COUNTRY": fp.country, "HOSPITAL": fp.hospital, "DEPARTMENT": fp.department,
            "ORGANIZATION": fp.organization, "LOCATION-OTHER": fp.location_other,
            "EMAIL": lambda: fp.email(fp.first_name(), fp.last_name()), "URL": fp.url,
            "IPADDR": fp.fake.ipv6 if ":" in original else fp.fake.ipv4,
        }
        return _match_case(_other_than(original, makers[subtype]), original)


class Scrubber:
    """Apply surrogates (or redaction tags) to detected spans via presidio-anonymizer."""

    def __init__(self, key: SiteKey, mode: str = "surrogate", max_shift_days: int = 1095) -> None:
        if mode not in ("surrogate", "redact"):
            raise ValueError(f"unknown scrub mode {mode!r}")
        self.mode = mode
        self.generator = SurrogateGenerator(key, max_shift_days)
        self.engine = AnonymizerEngine()

    def _operators(self, patient_id: str) -> dict[str, OperatorConfig]:
        if self.mode == "redact":
            ops = {t: OperatorConfig("replace", {"new_value": f"[{t}]"}) for t in SUBTYPES}
            ops["AGE"] = OperatorConfig("custom", {"lambda": self._redact_age})
            return ops
        gen = self.generator
        return {t: OperatorConfig("custom", {"lambda": (
            lambda s, t=t: gen.surrogate(t, s, patient_id))}) for t in SUBTYPES}

    @staticmethod
    def _redact_age(original: str) -> str:
        value = age_value(original)
        return "[AGE>89]" if value is None or value > 89 else original

    def scrub(self, text: str, spans: list[Span], patient_id: str) -> ScrubResult:
        if not spans:
            return ScrubResult(text, ())
        operators = self._operators(patient_id)
        pieces: list[str] = []
        replaced: list[Span] = []
        written = 0
        for a, b, group in _pieces(text, spans, SCRUB_PIECE_CHARS):
            results = [RecognizerResult(s.type, s.start - a, s.end - a, s.score) for s in group]
            out = self.engine.anonymize(text[a:b], results, operators=operators)
            replaced.extend(Span(i.start + written, i.end + written, i.entity_type)
                            for i in out.items)
            pieces.append(out.text)
            written += len(out.text)
        return ScrubResult("".join(pieces), tuple(sorted(replaced)))


def _pieces(text: str, spans: list[Span], size: int) -> list[tuple[int, int, list[Span]]]:
    """``[a, b)`` pieces of ``text`` of about ``size`` characters with the spans inside each.

    A cut falls after a span and before the next one, never inside or across a span, and
    not between two spans of the same type with only spaces between (Presidio joins those).
    """
    ordered = sorted(spans, key=lambda s: (s.start, s.end))
    out: list[tuple[int, int, list[Span]]] = []
    start, group, reach = 0, [], 0
    for s in ordered:
        if group and s.start >= reach and s.start - start >= size and not (
                s.type == group[-1].type and _SPACES.fullmatch(text, reach, s.start)):
            out.append((start, reach, group))
            start, group = reach, []
        group.append(s)
        reach = max(reach, s.end)
    out.append((start, len(text), group))
    return out
