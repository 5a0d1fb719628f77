"""Precision guards (issue 15): clinical words, bare numbers and impossible shapes are
vetoed; names, IDs and their pieces are not."""

from __future__ import annotations

import pytest

from fedmed.deid import clinical_lexicon
from fedmed.deid.guards import guard, keep, vetoed_phi
from fedmed.deid.phi import Span


def span(text: str, value: str, subtype: str) -> Span:
    start = text.index(value)
    return Span(start, start + len(value), subtype)


NOTE = ("DISCHARGE MEDICATIONS:\n1. ATORVASTATIN 40 MG QHS\n2. hctz 25 qd\n3. Percocet 1 tab\n"
        "Allergies: NKDA. Labs: TSH 2.1, B12 450, FLP pending. BP 142/70.\n"
        "Pt John Smith is a 65 yo M; Dr. Alert and Mr. Bactrim saw him (Baker 11).\n"
        "Signed KSK / Karen S. Knox, MD. Ref 7781-T-6383. Portal castaneda.org\n")


@pytest.mark.parametrize(("value", "subtype"), [
    ("ATORVASTATIN", "DOCTOR"), ("hctz", "USERNAME"), ("NKDA", "USERNAME"),
    ("TSH", "DOCTOR"), ("B12", "DATE"), ("142/70", "DATE"), ("40", "AGE"),
    ("450", "IPADDR"), ("25", "MEDICALRECORD"),
])
def test_clinical_content_is_vetoed(value: str, subtype: str) -> None:
    assert not keep(NOTE, span(NOTE, value, subtype))


@pytest.mark.parametrize(("value", "subtype"), [
    ("John Smith", "PATIENT"), ("65", "AGE"), ("Alert", "DOCTOR"), ("Bactrim", "PATIENT"),
    ("KSK", "DOCTOR"), ("Karen S. Knox", "DOCTOR"),
])
def test_names_and_ages_in_context_are_kept(value: str, subtype: str) -> None:
    assert keep(NOTE, span(NOTE, value, subtype))


def test_list_numbers_go_and_pieces_of_identifiers_stay() -> None:
    at = NOTE.index("\n2. ") + 1
    spans = [Span(at, at + 1, "DATE"), span(NOTE, "Baker", "DEPARTMENT"),
             span(NOTE, "11", "AGE"), span(NOTE, "7781", "HEALTHPLAN"),
             span(NOTE, "-T-6383", "PHONE"), span(NOTE, "castaneda", "URL")]
    kept = {NOTE[s.start:s.end] for s in guard(NOTE, spans)}
    assert kept == {"Baker", "11", "7781", "-T-6383", "castaneda"}


def test_lexicon_leaves_names_and_professions_out() -> None:
    strong, broad = clinical_lexicon.guard_words()
    assert {"atorvastatin", "nkda", "tsh", "b12"} <= strong
    for name in ("wilson", "smith", "rose", "miller", "grace", "nurse", "doctor"):
        assert name not in broad


def test_detector_drops_drug_name_keeps_patient() -> None:
    from fedmed.deid.config import DeidConfig
    from fedmed.deid.presidio_engine import Detector

    text = ("Patient: Stephanie Miller   MRN: 40517723\nDischarge medications:\n"
            "1. Prednisone 20 mg po qd\n2. ATORVASTATIN 40 MG PO QHS\n3. Hydrochlorothiazide "
            "25 mg\nAllergies: NKDA\nMs. Miller will follow up with Dr. Keane.\n")
    on = Detector(DeidConfig(workers=1)).detect(text)
    off = Detector(DeidConfig(workers=1, guards=False)).detect(text)
    found = {text[s.start:s.end] for s in on}
    assert {"Stephanie Miller", "40517723", "Miller", "Keane"} <= found
    for word in ("Prednisone", "ATORVASTATIN", "Hydrochlorothiazide", "NKDA"):
        assert not any(word in f for f in found), word
    assert len(on) <= len(off)


# ---------------------------------------------------------------- guards-2 (issue 15)

def guarded(text: str, value: str, subtype: str) -> set[str]:
    """What is left of one tagger span after the guards (trim, veto, readmission);
    ``"2L|2"`` means the ``2`` of the first ``2L``."""
    context, _, value = value.rpartition("|")
    start = text.index(context or value) + (context.index(value) if context else 0)
    return {text[s.start:s.end] for s in guard(text, [Span(start, start + len(value), subtype)])}


CLINIC = ("EXERCISE STRESS TEST\nIlse Renner   3862392540   02-Apr-2019\n"
          "Indication: Hx angina, CAD. Under Bactrim the erythema receded.\n"
          "Medications: Toprol XL held 24 h; ATORVASTATIN, ASA.\n"
          "General: Obese gentleman lying comfortably in bed. Seen by PT, who recommends a "
          "rolling walker. Chest x-ray clear. BNP of 1,240. HbA1c: 11.5, troponin 0.42.\n"
          "NECK: Supple, JVP 8 cm. LDL 132. New O2 requirement of 2L NC. Wt 75 kg.\n"
          "Labs: B12 1038, FLP 02/24/2010. Quit 10 years ago. Problem: Hyperlipidemia.\n"
          "PMH: Depression/Prostate cancer, Raynaud's.\n")

PHI = ("Ms. Ward is a 65 years old social worker, Room 412, Bed 3, moved from Lake "
       "Brandontown, California, IN. Seen in Physical Therapy and Bowman 12 on 12/15/19.\n"
       "Lic I10970481. Therapeutic radiographer Alyssa; age one hundred one.\n"
       "Login AB/mjones55 and kathryn22 headache jsmith22. Ref 7781-T-6383. Cardiology.\n")


@pytest.mark.parametrize(("value", "subtype"), [
    ("Under Bactrim", "PATIENT"), ("Hx angina", "DOCTOR"), ("Toprol XL", "PATIENT"),
    ("Hyperlipidemia", "PATIENT"),  # person: clinical words, a drug among them
    ("ASA", "DOCTOR"),  # three capitals closing a comma list of clinical words
    ("Obese gentleman lying comfortably", "PROFESSION"), ("rolling walker", "PROFESSION"),
    ("BNP", "PROFESSION"),  # a profession needs an occupation head
    ("x-ray|ray", "USERNAME"), ("HbA", "USERNAME"),  # pieces of clinical tokens
    ("0.42|0.", "IPADDR"),
    ("O2", "ROOM"), ("2L|L", "ROOM"),  # a room needs two digits or a room word
    ("B12 1038", "DATE"), ("2L|2", "DATE"), ("Wt", "DATE"),  # a date needs a date shape
    ("JVP 8", "DEPARTMENT"),  # departments made of clinical words
    ("LDL 132|132", "ROOM"),  # a value after a lab abbreviation
    ("10 years|10", "AGE"),  # "10 years ago" is a duration
    ("Prostate cancer", "PROFESSION"),  # no occupation; glued to a /-list of diagnoses
    ("Hyperlipidemia", "COUNTRY"), ("CAD", "COUNTRY"),  # places made of clinical words
])
def test_guards_2_veto_clinical_content(value: str, subtype: str) -> None:
    assert guarded(CLINIC, value, subtype) == set(), (value, subtype)


@pytest.mark.parametrize(("value", "subtype", "left"), [
    ("Ward", "PATIENT", None), ("65", "AGE", None), ("social worker", "PROFESSION", None),
    ("412", "ROOM", None), ("Bed 3|3", "ROOM", None), ("Lake\nBrandontown", "COUNTRY", None),
    ("California", "COUNTRY", None), ("IN", "STATE", None),
    ("Physical Therapy", "DOCTOR", None),  # a mistyped department is not a clinical name
    ("Bowman 12", "DATE", None), ("12/15/19|12", "DATE", None), ("I10970481", "DATE", None),
    ("Therapeutic", "PROFESSION", None), ("Alyssa", "PROFESSION", None),
    ("one hundred one", "PROFESSION", None), ("mjones55", "USERNAME", None),
    ("kathryn22", "USERNAME", None), ("7781-T|7781", "HEALTHPLAN", None), ("Cardiology",
                                                                     "DEPARTMENT", None),
    ("headache jsmith22", "USERNAME", "jsmith22"),  # a user name has no spaces: trimmed
])
def test_guards_2_keep_phi(value: str, subtype: str, left: str | None) -> None:
    text = PHI.replace("Lake Brandontown", "Lake\nBrandontown")
    assert guarded(text, value, subtype) == {left or value.rpartition("|")[2]}, value


def test_date_trimmed_to_its_date_shape() -> None:
    assert guarded(CLINIC, "FLP 02/24/2010", "DATE") == {"02/24/2010"}
    assert guarded(CLINIC, "02-Apr-2019", "DATE") == {"02-Apr-2019"}


def test_header_line_name_and_repeated_names() -> None:
    from fedmed.deid.guards import add_names, header_names

    assert [CLINIC[s.start:s.end] for s in header_names(CLINIC)] == ["Ilse Renner"]
    for line in ("EXAM DATE   02-Apr-2019\n", "Heart Rate   120 bpm\n",
                 "Toprol Xl   25 mg daily\n", "Dr. Smith   555-1234\n",
                 "ilse renner   3862392540\n"):
        assert header_names(line) == [], line
    note = "Patient: Ward, Rhys  MRN 9828062\nS: Rhys reports pain. Hyperlipidemia. RHYS ok.\n"
    found = span(note, "Ward, Rhys", "PATIENT")
    added = {note[s.start:s.end] for s in add_names(note, [found])} - {"Ward, Rhys"}
    assert added == {"Rhys", "RHYS", "Ward"} - {"Ward"}
    # a clinical word the tagger took for a name is not repeated
    wrong = "Indication: Hyperlipidemia.\nHyperlipidemia again; Patient stable, Patient ok.\n"
    assert add_names(wrong, [span(wrong, "Hyperlipidemia", "PATIENT"),
                             span(wrong, "Patient", "DOCTOR")])[2:] == []


def test_guards_veto_no_gold_phi_on_generated_notes() -> None:
    """The guards' promise: no vetoed span overlaps gold PHI, on synthetic dev and test
    notes and on realistic notes of two seeds (docs/deid.md § Realistic notes reports the
    same check, ``python -m fedmed.deid.guards``, on the full evaluation folders)."""
    from fedmed.deid import corpus, realistic_notes
    from fedmed.deid.config import DeidConfig
    from fedmed.deid.presidio_engine import Detector

    tagger = Detector(DeidConfig(workers=1)).tagger
    assert tagger is not None
    docs = (corpus.generate(60, seed=2024, split="dev")
            + corpus.generate(60, seed=2024, split="test")
            + [d for d, _ in realistic_notes.generate(40, seed=15)]
            + [d for d, _ in realistic_notes.generate(40, seed=16)])
    assert vetoed_phi(docs, tagger.predict([d.text for d in docs])) == []
