"""Surrogates: consistent per patient, date intervals kept, formats kept, secret stays home."""

from __future__ import annotations

import re
import stat

import pytest

from fedmed.deid import dates
from fedmed.deid.phi import Span
from fedmed.deid.sitekey import SECRET_RELPATH, SiteKey
from fedmed.deid.surrogates import Scrubber, SurrogateGenerator
from fedmed.errors import ConfigError


def _spans(text: str, *items: tuple[str, str]) -> list[Span]:
    out = []
    for value, subtype in items:
        start = text.index(value)
        out.append(Span(start, start + len(value), subtype))
    return sorted(out)


NOTE_1 = "John Smith (MRN 4455123) admitted 03/01/2020, seen by Dr. Adams. Call 617-555-0199."
NOTE_2 = "Mr. Smith discharged 03/15/2020. John Smith is 93 years old. SSN 123-45-6789."


@pytest.fixture()
def key(tmp_path) -> SiteKey:
    return SiteKey.load_or_create(tmp_path / "site")


def test_secret_file_is_private_and_stable(tmp_path) -> None:
    home = tmp_path / "site"
    first = SiteKey.load_or_create(home)
    path = home / SECRET_RELPATH
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert SiteKey.load_or_create(home).fingerprint == first.fingerprint
    secret = path.read_text().strip()
    assert secret not in repr(first) and first.fingerprint not in secret
    path.chmod(0o644)
    with pytest.raises(ConfigError, match="chmod 600"):
        SiteKey.load_or_create(home)


def test_consistent_per_patient_and_dates_keep_intervals(key: SiteKey) -> None:
    scrub = Scrubber(key)
    s1 = _spans(NOTE_1, ("John Smith", "PATIENT"), ("4455123", "MEDICALRECORD"),
                ("03/01/2020", "DATE"), ("Adams", "DOCTOR"), ("617-555-0199", "PHONE"))
    s2 = _spans(NOTE_2, ("Smith", "PATIENT"), ("03/15/2020", "DATE"),
                ("John Smith", "PATIENT"), ("93", "AGE"), ("123-45-6789", "SSN"))
    # "Smith" occurs twice in NOTE_2; the first (after "Mr.") is what _spans found
    out1 = scrub.scrub(NOTE_1, s1, "patient-1").text
    out2 = scrub.scrub(NOTE_2, s2, "patient-1").text
    again = scrub.scrub(NOTE_1, s1, "patient-1").text
    assert out1 == again
    for secret in ("John", "Smith", "4455123", "03/01/2020", "617-555-0199", "123-45-6789",
                   "Adams"):
        # whole words: a fake "Johnson" for "Adams" is a different name, not a leak
        assert not re.search(rf"\b{re.escape(secret)}\b", out1 + out2), secret
    fake_full = out1.split(" (MRN")[0]
    fake_last = fake_full.split()[-1]
    assert f"Mr. {fake_last} discharged" in out2 and fake_full in out2
    d1 = re.search(r"admitted (\d\d/\d\d/\d{4})", out1).group(1)
    d2 = re.search(r"discharged (\d\d/\d\d/\d{4})", out2).group(1)
    interval = dates.parse(d2).value - dates.parse(d1).value  # type: ignore[union-attr]
    assert interval.days == 14
    assert "is 90+ years old" in out2
    assert re.search(r"MRN \d{7}\)", out1) and re.search(r"Call \d{3}-\d{3}-\d{4}\.", out1)
    assert re.search(r"SSN \d{3}-\d{2}-\d{4}\.", out2)


def test_surrogate_never_repeats_the_real_value(key: SiteKey) -> None:
    generator = SurrogateGenerator(key)
    # 3000 patients: with one chance in 1000 (last names) or 690 (first names) per draw,
    # a generator that could redraw the original would do so here almost surely
    fakes = [generator.surrogate("PATIENT", "John Smith", f"p{i}") for i in range(3000)]
    assert all(not {"john", "smith"} & set(f.lower().split()) for f in fakes)
    assert len(set(fakes)) > 2000  # still drawn from the whole pool
    initials = [generator.surrogate("PATIENT", "J. Smith", f"p{i}") for i in range(500)]
    assert all(not f.startswith("J.") for f in initials)
    states = {generator.surrogate("STATE", "Ohio", f"p{i}") for i in range(500)}
    assert "Ohio" not in states and len(states) > 40


def test_other_patient_gets_other_surrogates(key: SiteKey) -> None:
    scrub = Scrubber(key)
    spans = _spans(NOTE_1, ("John Smith", "PATIENT"), ("03/01/2020", "DATE"),
                   ("Adams", "DOCTOR"))
    a = scrub.scrub(NOTE_1, spans, "patient-1").text
    b = scrub.scrub(NOTE_1, spans, "patient-2").text
    assert a.split(" (")[0] != b.split(" (")[0]
    assert a.split("Dr. ")[1][:8] == b.split("Dr. ")[1][:8]  # clinicians: site-wide
    assert key.date_offset("patient-1") != 0


def test_other_site_secret_gives_other_surrogates(tmp_path) -> None:
    spans = _spans(NOTE_1, ("John Smith", "PATIENT"))
    a = Scrubber(SiteKey.load_or_create(tmp_path / "a")).scrub(NOTE_1, spans, "p").text
    b = Scrubber(SiteKey.load_or_create(tmp_path / "b")).scrub(NOTE_1, spans, "p").text
    assert a != b


def test_redact_mode_and_format_of_caps_names(key: SiteKey) -> None:
    text = "SMITH, JOHN seen 5 Mar 2021, age 95; sister age 60."
    spans = _spans(text, ("SMITH, JOHN", "PATIENT"), ("5 Mar 2021", "DATE"), ("95", "AGE"),
                   ("60", "AGE"))
    red = Scrubber(key, mode="redact").scrub(text, spans, "p").text
    assert red == "[PATIENT] seen [DATE], age [AGE>89]; sister age 60."
    sur = Scrubber(key).scrub(text, spans, "p")
    name = sur.text.split(" seen")[0]
    assert re.fullmatch(r"[A-Z]+, [A-Z]+", name) and name != "SMITH, JOHN"
    assert re.search(r"seen \d{1,2} [A-Z][a-z]{2} \d{4},", sur.text)
    assert len(sur.replaced) == 4
    for s in sur.replaced:  # positions refer to the output text
        assert sur.text[s.start:s.end]


def test_a_sites_mapping_does_not_drift_between_versions(
    tmp_path, seeded_gate_home
) -> None:
    """The same secret must map a value to the same surrogate in every fedmed (and Faker)
    version: a patient's notes released before an upgrade keep matching those released
    after it. A change here changes every site's surrogates; make it only on purpose."""
    generator = SurrogateGenerator(SiteKey.load_or_create(seeded_gate_home(tmp_path / "site")))
    released = {
        ("PATIENT", "John Smith"): "Michaela Mendez",
        ("DOCTOR", "Adams"): "Moreno",
        ("DATE", "03/01/2020"): "10/24/2022",
        ("MEDICALRECORD", "4455123"): "5368723",
        ("STATE", "Ohio"): "North Carolina",
        ("CITY", "Boston"): "East Charlestown",
    }
    for (subtype, value), surrogate in released.items():
        assert generator.surrogate(subtype, value, "patient-1") == surrogate, (subtype, value)
