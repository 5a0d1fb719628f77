"""Clinical vocabulary: for training notes that look like real ones, and for precision guards.

Why: the tagger learned "capitalised unknown word => name" from synthetic notes whose only
capitalised tokens were mostly PHI (issue 15). Two remedies need real clinical words:

- the *training generator* (:mod:`fedmed.deid.templates`) puts drug names (any case),
  diagnoses, lab abbreviations, numbers and numbered lists into training notes as non-PHI;
  its vocabulary comes from two MIT-licensed PyPI packages that ship their data inside the
  wheel and load offline: ``drug-named-entity-recognition`` (drug names and brand names,
  with MedlinePlus/DrugBank links) and ``simple-icd-10-cm`` (the CMS ICD-10-CM tabular list);
- the *guards* of :mod:`fedmed.deid.guards` veto name-like predictions whose every word is a
  known clinical word. They read :data:`GUARD_FILE` (lower-cased single words, built from the
  same packages by :func:`build_guard_words`, shipped in ``deid/models/``), because loading
  the two packages takes 4-9 s, too slow for every detector and worker start.

Names are never clinical words here: every first and last name of the Faker locales the
corpus draws names from, and every word of its job titles, is removed from the guard words
(``"Wilson"`` is a disease and a surname; it stays PHI-capable). Words written here by hand
(abbreviations, exam words) are ours; nothing is downloaded at run time.
"""

from __future__ import annotations

import bz2
import importlib.util
import json
import pickle
import re
from functools import lru_cache
from pathlib import Path

GUARD_FILE = Path(__file__).parent / "models" / "clinical_lexicon.json"
"""Guard words (JSON: ``{"strong": [...], "broad": [...]}``), see :func:`build_guard_words`."""

LAB_ABBREVIATIONS: tuple[str, ...] = (
    "TSH", "T3", "T4", "FT4", "B12", "FLP", "LFTs", "LFT", "CMP", "BMP", "CBC", "UA", "UCx",
    "BCx", "HbA1c", "A1c", "LDL", "HDL", "VLDL", "TG", "BNP", "NT-proBNP", "CK", "CK-MB",
    "CPK", "LDH", "ESR", "CRP", "PSA", "INR", "PT", "PTT", "aPTT", "ABG", "VBG", "AST", "ALT",
    "GGT", "ALP", "Alb", "Tbili", "Dbili", "Na", "K", "Cl", "CO2", "HCO3", "BUN", "Cr", "GFR",
    "eGFR", "Glu", "Ca", "Mg", "Phos", "WBC", "RBC", "Hgb", "Hct", "Plt", "MCV", "RDW",
    "ANC", "Retic", "Ferritin", "TIBC", "Folate", "Lactate", "Lipase", "Amylase", "Trop",
    "TnI", "TnT", "D-dimer", "Fibrinogen", "HIV", "HCV", "HBsAg", "RPR", "ANA", "RF", "CEA",
    "AFP", "CA-125", "Vit D", "PTH", "Cortisol", "ACTH", "Ammonia", "Osm", "UOsm", "UNa",
)
"""Lab tests as notes abbreviate them."""

CLINICAL_ABBREVIATIONS: tuple[str, ...] = (
    "NKDA", "NKA", "METS", "MET", "NAD", "PERRL", "PERRLA", "EOMI", "RRR", "CTAB", "CTA",
    "HEENT", "JVD", "JVP", "NT", "ND", "BS", "DP", "PT", "PO", "IV", "IM", "SC", "SQ", "SL",
    "PR", "BID", "TID", "QID", "QD", "QHS", "QAM", "PRN", "AC", "HS", "NPO", "DNR", "DNI",
    "HTN", "DM", "DM2", "NIDDM", "IDDM", "CAD", "CABG", "PCI", "MI", "NSTEMI", "STEMI", "CHF",
    "HFrEF", "HFpEF", "COPD", "CKD", "ESRD", "AKI", "GERD", "BPH", "OSA", "DVT", "PE", "CVA",
    "TIA", "UTI", "URI", "PNA", "SOB", "DOE", "PND", "CP", "ABD", "N/V", "LBBB", "RBBB",
    "LVH", "RVH", "LAD", "RCA", "LCX", "AF", "AFib", "VT", "VF", "SVT", "PVC", "PVCs", "PAC",
    "EKG", "ECG", "TTE", "TEE", "EF", "CXR", "KUB", "MRI", "MRA", "CTA", "US", "RUQ", "LUQ",
    "RLQ", "LLQ", "ROS", "HPI", "PMH", "PSH", "FH", "SH", "ETOH", "IVDU", "PCP", "RTC", "F/U",
    "S/P", "H/O", "HX", "DX", "TX", "RX", "SX", "OT", "SLP", "MMM", "NC", "RA", "BP", "HR",
    "RR", "SPO2", "TMAX", "BMI", "I/O", "PRBC",
    "FFP", "NS", "LR", "D5W", "KCL", "ASA", "NTG", "APAP", "NSAID", "NSAIDs", "ACEI", "ARB",
    "PPI", "SSRI", "MVI", "HCTZ", "MSO4", "MPHR", "GCS", "ROM", "DTR", "DTRs", "CN", "A&O",
)
"""Clinical abbreviations of histories, exams and plans (not hospital units such as ICU or
CCU: in i2b2 those are DEPARTMENT PHI)."""

EXAM_WORDS: tuple[str, ...] = (
    "alert", "oriented", "awake", "pleasant", "cooperative", "obese", "thin", "cachectic",
    "elderly", "gentleman", "lady", "comfortable", "comfortably", "distress", "pupils",
    "equal", "round", "reactive", "sclerae", "anicteric", "conjunctivae", "oropharynx",
    "supple", "lymphadenopathy", "bruits", "auscultation", "wheezes", "wheezing", "rales",
    "rhonchi", "crackles", "murmur", "murmurs", "rubs", "gallops", "regular", "irregular",
    "rhythm", "soft", "tender", "non-tender", "nontender", "distended", "non-distended",
    "bowel", "sounds", "guarding", "rebound", "organomegaly", "pulses", "pedal", "palpable",
    "edema", "pitting", "clubbing", "cyanosis", "warm", "dry", "intact", "nonfocal",
    "strength", "sensation", "reflexes", "downgoing", "upgoing", "gait", "rash", "lesions",
    "decubitus", "sacral", "positive", "negative", "normal", "abnormal", "unremarkable",
    "stable", "improved", "worsening", "unchanged", "resolved", "chronic", "acute", "mild",
    "moderate", "severe", "bilateral", "bilaterally", "walker", "cane", "wheelchair",
)
"""Exam and assessment words (lower case)."""

_WORD = re.compile(r"[A-Za-z][A-Za-z'\-]*[A-Za-z]|[A-Za-z]")


# ---------------------------------------------------------------- package vocabularies

def _drug_dictionary() -> dict[str, object]:
    """The drug dictionary of ``drug-named-entity-recognition``, read from its wheel without
    importing the package (whose import also reads caches in the user's home)."""
    spec = importlib.util.find_spec("drug_named_entity_recognition")
    if spec is None or not spec.submodule_search_locations:
        raise ModuleNotFoundError("drug-named-entity-recognition is not installed")
    path = Path(next(iter(spec.submodule_search_locations))) / "drug_ner_dictionary.pkl.bz2"
    with bz2.open(path, "rb") as f:
        data: dict[str, object] = pickle.load(f)  # noqa: S301 - the installed package's own data
    return data


def _common(data: dict[str, object]) -> bool:
    return bool(data.get("medline_plus_id") or data.get("wikipedia_url")
                or (data.get("drugbank_id") and data.get("mesh_id")))


@lru_cache(maxsize=1)
def drug_names() -> tuple[str, ...]:
    """Common drug names (generic and brand) as a note writes them: the variants of every
    drug with a MedlinePlus or Wikipedia page or both a DrugBank and a MeSH id (the
    package's rarer entries are research compounds and receptor names), one or two words
    of letters, sorted."""
    d = _drug_dictionary()
    variants: dict[str, list[str]] = d["drug_variant_to_canonical"]  # type: ignore[assignment]
    canon: dict[str, dict[str, object]] = d["drug_canonical_to_data"]  # type: ignore[assignment]
    out = set()
    for variant, canonicals in variants.items():
        if not any(_common(canon.get(c, {})) for c in canonicals):
            continue
        words = variant.split()
        if 1 <= len(words) <= 2 and all(w.isalpha() and len(w) >= 3 for w in words):
            out.add(" ".join(w.capitalize() for w in words))
    return tuple(sorted(out))


@lru_cache(maxsize=1)
def diagnoses(max_words: int = 6) -> tuple[str, ...]:
    """ICD-10-CM descriptions of up to ``max_words`` words (categories and billable codes),
    without the "initial encounter" style qualifiers; sorted."""
    import simple_icd_10_cm as cm

    out = set()
    for code in cm.get_all_codes(False):
        if not (cm.is_category(code) or cm.is_leaf(code)):
            continue
        text = cm.get_description(code)
        if "encounter" in text or "sequela" in text:
            continue
        if len(text.split()) <= max_words:
            out.add(text)
    return tuple(sorted(out))


# ---------------------------------------------------------------- guard words

def name_words() -> frozenset[str]:
    """Every first and last name (lower case) of the Faker locales the corpus uses."""
    from faker import Faker

    from fedmed.deid.fakes import NAME_LOCALES

    names: set[str] = set()
    for locale, _ in NAME_LOCALES:
        fake = Faker(locale)
        for provider in fake.providers:
            for attr in ("first_names", "last_names", "first_names_male",
                         "first_names_female", "first_names_nonbinary"):
                values = getattr(provider, attr, None)
                if values:
                    names.update(str(v).lower() for v in values)
    return frozenset(names)


def build_guard_words() -> dict[str, list[str]]:
    """The guard lexicon: ``strong`` = drug names, lab and clinical abbreviations and exam
    words (vetoes any name-like type); ``broad`` = ``strong`` plus every word of the short
    ICD-10-CM descriptions and of all drug variants (vetoes only types that are not direct
    identifiers) and spaCy's English stop words; both without the words of the Faker name
    and job lists (names and professions are PHI)."""
    from spacy.lang.en.stop_words import STOP_WORDS

    from fedmed.deid.fakes import professions

    names = name_words()
    strong: set[str] = set()
    for name in drug_names():
        strong.update(w.lower() for w in name.split())
    strong.update(a.lower() for a in LAB_ABBREVIATIONS + CLINICAL_ABBREVIATIONS)
    strong.update(EXAM_WORDS)
    broad = set(strong) | {w.lower() for w in STOP_WORDS}
    for text in diagnoses():
        broad.update(w.lower() for w in _WORD.findall(text) if len(w) >= 4)
    variants = _drug_dictionary()["drug_variant_to_canonical"]
    broad.update(v for v in variants if v.isalpha() and len(v) >= 4)  # type: ignore[union-attr]
    jobs = {w.lower() for job in professions() for w in _WORD.findall(job)}
    keep_out = names | jobs  # professions are PHI too (i2b2): "hospital doctor"
    return {"strong": sorted(strong - keep_out), "broad": sorted(broad - keep_out)}


@lru_cache(maxsize=1)
def guard_words() -> tuple[frozenset[str], frozenset[str]]:
    """The shipped guard lexicon: (strong, broad) lower-cased words."""
    data = json.loads(GUARD_FILE.read_text())
    return frozenset(data["strong"]), frozenset(data["strong"]) | frozenset(data["broad"])


def main() -> None:
    """``python -m fedmed.deid.clinical_lexicon``: rebuild :data:`GUARD_FILE`."""
    words = build_guard_words()
    GUARD_FILE.write_text(json.dumps(words, separators=(",", ":")) + "\n")
    print(f"{GUARD_FILE}: {len(words['strong'])} strong, {len(words['broad'])} broad words")


if __name__ == "__main__":
    main()
