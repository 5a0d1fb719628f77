"""Precision guards (issue 15): clinical words, bare numbers and impossible shapes are
vetoed; names, IDs and their pieces are not."""

from __future__ import annotations

import pytest

from fedmed.deid import clinical_lexicon
from fedmed.deid.guards import guard, keep
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
