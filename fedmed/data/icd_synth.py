"""Synthetic clinical notes whose findings imply ICD-10-style codes, at four hospitals.

Why synthetic: no real coded clinical corpus may ship or be downloaded
(docs/architecture.md § Offline components). The notes are built so that coding them is a
*language* task, not a lookup:

- **Codes** (:data:`CODES`): 26 ICD-10-CM codes common in adult inpatient and clinic notes,
  with long-tailed prevalences (before each site's case mix: the most frequent in 55 % of
  notes, the rarest in 3 %), as in MIMIC's code distribution; several codes per note (2.7 on
  average).
- **Phrasings**: every code is written in several ways — the full term, synonyms and
  abbreviations ("atrial fibrillation", "AFib", "AF", "a-fib").
- **Negated and non-patient mentions**: a note also names conditions the patient does *not*
  have ("no evidence of pneumonia", "PE ruled out", "Family history: mother with CAD"). These must
  not imply the code, so a bag of words is not enough.
- **Site dialects** (:data:`SITES`): each hospital has its own section headers, note header
  layout, abbreviation habit, a preferred abbreviation per code, its own negation phrases and
  its own case mix — what makes a model trained at one hospital worse at another.
- **PHI**: the notes are *raw*, as a hospital holds them: patient and clinician names, dates,
  MRNs, phone numbers, all recorded as gold :class:`~fedmed.deid.phi.Span` objects (values from
  :class:`fedmed.deid.fakes.FakePHI`, the generators the de-id corpus uses). They must pass the
  de-identification gate (:mod:`fedmed.data.text_admission`) before any model sees them.

Determinism: note ``i`` of a site depends only on ``(site, seed, split, i)`` for the training
split and on ``(site, split, i)`` for the test split — the test notes are the same whatever
training seed is used, and ``n`` notes are a prefix of ``n + k`` notes.

Each note is a :class:`~fedmed.deid.phi.Document` whose ``meta`` holds ``labels`` (its codes),
``negated`` (codes named only negated or as family history), ``split``, ``site``, ``kind``,
``patient_id`` and ``identifiers`` (the registry's first name, last name and MRN, which the
admission step uses to double-check the gate).
"""

from __future__ import annotations

import datetime as dt
import hashlib
import random
from dataclasses import dataclass

from fedmed.deid.fakes import FakePHI, fill_shape
from fedmed.deid.phi import Document, Span
from fedmed.errors import ConfigError

SPLITS = ("train", "test")


@dataclass(frozen=True)
class Code:
    """One code: its description, full-term phrasings and abbreviations."""

    code: str
    description: str
    terms: tuple[str, ...]
    abbreviations: tuple[str, ...] = ()
    chronic: bool = True  # chronic codes sit in the history; acute ones in the assessment


# In order of decreasing base prevalence (see :func:`base_prevalence`).
CODES: tuple[Code, ...] = (
    Code("I10", "Essential (primary) hypertension",
         ("hypertension", "high blood pressure", "essential hypertension"), ("HTN",)),
    Code("E78.5", "Hyperlipidemia, unspecified",
         ("hyperlipidemia", "high cholesterol", "dyslipidemia"), ("HLD", "HLP")),
    Code("E11.9", "Type 2 diabetes mellitus without complications",
         ("type 2 diabetes mellitus", "type 2 diabetes", "diabetes mellitus type II"),
         ("T2DM", "DM2", "NIDDM")),
    Code("I25.10", "Atherosclerotic heart disease of native coronary artery",
         ("coronary artery disease", "atherosclerotic heart disease"), ("CAD", "ASHD")),
    Code("K21.9", "Gastro-esophageal reflux disease without esophagitis",
         ("gastroesophageal reflux disease", "acid reflux"), ("GERD",)),
    Code("F17.210", "Nicotine dependence, cigarettes",
         ("tobacco use", "nicotine dependence", "current cigarette smoker"), ("tob use",)),
    Code("I48.91", "Unspecified atrial fibrillation",
         ("atrial fibrillation", "paroxysmal atrial fibrillation"), ("AFib", "AF", "a-fib")),
    Code("N18.9", "Chronic kidney disease, unspecified",
         ("chronic kidney disease", "chronic renal insufficiency"), ("CKD", "CRI")),
    Code("E66.9", "Obesity, unspecified", ("obesity", "morbid obesity"), ("BMI>30",)),
    Code("I50.9", "Heart failure, unspecified",
         ("congestive heart failure", "heart failure", "systolic heart failure"),
         ("CHF", "HFrEF")),
    Code("F32.9", "Major depressive disorder, single episode, unspecified",
         ("depression", "major depressive disorder"), ("MDD",)),
    Code("J44.9", "Chronic obstructive pulmonary disease, unspecified",
         ("chronic obstructive pulmonary disease", "emphysema"), ("COPD",)),
    Code("E03.9", "Hypothyroidism, unspecified",
         ("hypothyroidism", "underactive thyroid"), ("hypothyroid",)),
    Code("D64.9", "Anemia, unspecified", ("anemia", "low hemoglobin"), ("anemic",)),
    Code("J18.9", "Pneumonia, unspecified organism",
         ("pneumonia", "community-acquired pneumonia", "lobar consolidation"), ("PNA", "CAP"),
         chronic=False),
    Code("N39.0", "Urinary tract infection, site not specified",
         ("urinary tract infection", "acute cystitis"), ("UTI",), chronic=False),
    Code("F41.1", "Generalized anxiety disorder",
         ("generalized anxiety disorder", "chronic anxiety"), ("GAD",)),
    Code("G47.33", "Obstructive sleep apnea", ("obstructive sleep apnea", "sleep apnea"),
         ("OSA",)),
    Code("N17.9", "Acute kidney failure, unspecified",
         ("acute kidney injury", "acute renal failure"), ("AKI", "ARF"), chronic=False),
    Code("J45.909", "Unspecified asthma, uncomplicated",
         ("asthma", "reactive airway disease"), ("RAD",)),
    Code("E87.1", "Hypo-osmolality and hyponatremia", ("hyponatremia", "low sodium"),
         ("hypoNa",), chronic=False),
    Code("A41.9", "Sepsis, unspecified organism", ("sepsis", "septicemia"), ("SIRS/sepsis",),
         chronic=False),
    Code("I82.409", "Acute deep vein thrombosis of unspecified lower extremity",
         ("deep vein thrombosis", "deep venous thrombosis"), ("DVT",), chronic=False),
    Code("K92.2", "Gastrointestinal hemorrhage, unspecified",
         ("gastrointestinal bleed", "GI hemorrhage", "upper GI bleeding"), ("GIB", "UGIB"),
         chronic=False),
    Code("I26.99", "Other pulmonary embolism without acute cor pulmonale",
         ("pulmonary embolism", "pulmonary embolus"), ("PE",), chronic=False),
    Code("I63.9", "Cerebral infarction, unspecified",
         ("ischemic stroke", "cerebral infarction", "cerebrovascular accident"), ("CVA",),
         chronic=False),
)
CODE_IDS: tuple[str, ...] = tuple(c.code for c in CODES)
_BY_ID = {c.code: c for c in CODES}


@dataclass(frozen=True)
class SiteStyle:
    """How one hospital writes notes: layout, dialect and case mix."""

    name: str
    kind: str  # the note kind named in its header
    headers: tuple[str, str, str, str, str]  # HPI, history, findings, assessment, signature
    abbreviate: float  # probability of writing a code by its abbreviation
    negations: tuple[str, ...]  # "{}" is the negated phrase
    case_mix: tuple[tuple[str, float], ...]  # code -> prevalence multiplier
    mrn_shape: str
    upper_headers: bool
    family_history: float  # probability of a family-history line (mentions, not codes)


NEGATIONS_COMMON = ("no evidence of {}", "negative for {}", "no signs of {}", "no history of {}")
SITES: dict[str, SiteStyle] = {
    s.name: s
    for s in (
        SiteStyle(
            "academic", "Discharge Summary",
            ("History of Present Illness", "Past Medical History", "Hospital Course",
             "Assessment and Plan", "Attending"),
            0.15, NEGATIONS_COMMON + ("{} was excluded", "without evidence of {}"),
            (("I63.9", 2.5), ("I26.99", 2.5), ("A41.9", 2.0), ("K92.2", 2.0), ("N17.9", 1.5)),
            "00#######", False, 0.4,
        ),
        SiteStyle(
            "community", "Admission H&P",
            ("HPI", "PMH", "Exam/Labs", "A/P", "Signed"),
            0.45, NEGATIONS_COMMON + ("denies {}", "{} ruled out"),
            (("N39.0", 2.0), ("J18.9", 1.8), ("E87.1", 1.5), ("D64.9", 1.4)),
            "MR######", True, 0.25,
        ),
        SiteStyle(
            "rural", "Clinic Note",
            ("CC/HPI", "Hx", "Findings", "Imp", "Provider"),
            0.8, ("no {}", "neg for {}", "{}: neg", "denies {}"),
            (("J44.9", 2.0), ("F17.210", 1.8), ("E66.9", 1.6), ("G47.33", 1.8),
             ("I25.10", 1.3)),
            "#######", True, 0.1,
        ),
        SiteStyle(
            "veterans", "Progress Note",
            ("Subjective", "Problem List", "Objective", "Assessment/Plan", "Electronically signed"),
            0.5, NEGATIONS_COMMON + ("{} not present", "absence of {}"),
            (("F32.9", 2.2), ("F41.1", 2.5), ("F17.210", 1.6), ("N18.9", 1.4),
             ("J45.909", 0.5)),
            "@#######", False, 0.2,
        ),
    )
}

CHIEF_COMPLAINTS = (
    "shortness of breath", "fatigue", "dizziness", "a routine follow-up visit", "cough",
    "leg swelling", "abdominal pain", "fever and chills", "weakness", "a medication review",
    "palpitations", "poor oral intake", "a fall at home",
)
FILLER = (
    "Vital signs were stable.", "Medications were reconciled.", "Labs were reviewed.",
    "The patient ambulates independently.", "Tolerating a regular diet.",
    "Afebrile overnight.", "Pain is well controlled.", "Discussed the plan with the patient.",
    "Lungs with scattered rhonchi.", "Heart regular rate and rhythm.", "Abdomen soft.",
)
PLANS = (
    "continue home medications", "monitor closely", "follow up in clinic",
    "recheck labs in the morning", "started appropriate therapy", "education provided",
    "adjust dose as needed",
)
RELATIVES = ("mother", "father", "brother", "sister")
NEGATED_PER_NOTE = (1, 3)
N_TRAIN_DEFAULT = 120
N_TEST_DEFAULT = 40

Piece = tuple[str, str | None]  # a run of note text and its PHI subtype (None: not PHI)


def base_prevalence(rank: int) -> float:
    """Zipf-like prevalence of the code at ``rank`` (0 = most common): 0.55 down to ~0.03."""
    return 0.55 / (1 + rank) ** 0.9


def site_prevalence(site: str) -> dict[str, float]:
    """Each code's probability of being present in one of ``site``'s notes."""
    shift = dict(_style(site).case_mix)
    return {c.code: min(0.9, base_prevalence(i) * shift.get(c.code, 1.0))
            for i, c in enumerate(CODES)}


def describe(code: str) -> str:
    """The description of a code (ConfigError for an unknown code)."""
    try:
        return _BY_ID[code].description
    except KeyError:
        raise ConfigError(f"unknown ICD code {code!r}") from None


def note_seed(site: str, seed: int, split: str, index: int) -> int:
    """The seed of one note; the test split ignores ``seed`` (see the module docstring)."""
    if split not in SPLITS:
        raise ConfigError(f"unknown split {split!r}; expected one of {SPLITS}")
    stream = f"{site}|{seed}|{split}" if split == "train" else f"{site}|{split}"
    digest = hashlib.sha256(f"fedmed-icd|{stream}|{index}".encode()).digest()
    return int.from_bytes(digest[:8], "big")


def generate_note(site: str, seed: int, split: str, index: int) -> Document:
    """Note ``index`` of ``site``'s ``split``: raw text, gold PHI spans, codes in ``meta``."""
    style = _style(site)
    rng = random.Random(note_seed(site, seed, split, index))
    return _NoteBuilder(style, rng).build(f"{site}-{split}-{index:05d}", split)


def builtin_site_notes(
    site: str, n_train: int = N_TRAIN_DEFAULT, n_test: int = N_TEST_DEFAULT
) -> list[Document]:
    """A built-in site's raw notes: its training notes, then its test notes (seed fixed at 0,
    so every run, export and study sees the same hospital)."""
    return site_notes(site, n_train, 0, "train") + site_notes(site, n_test, 0, "test")


def site_notes(site: str, n: int, seed: int, split: str) -> list[Document]:
    """``n`` raw notes of one site and split."""
    if n < 0:
        raise ConfigError(f"number of notes must be >= 0, got {n}")
    return [generate_note(site, seed, split, i) for i in range(n)]


def _style(site: str) -> SiteStyle:
    try:
        return SITES[site]
    except KeyError:
        raise ConfigError(f"unknown ICD site {site!r}; sites: {', '.join(SITES)}") from None


def _preferred_abbreviation(site: str, code: Code) -> str:
    """A site's house abbreviation for a code: fixed per (site, code), differs between sites."""
    digest = hashlib.sha256(f"{site}|{code.code}".encode()).digest()
    return code.abbreviations[digest[0] % len(code.abbreviations)]


class _NoteBuilder:
    """Assembles one note from pieces, recording PHI spans as it goes (exact offsets)."""

    def __init__(self, style: SiteStyle, rng: random.Random) -> None:
        self.style = style
        self.rng = rng
        self.fake = FakePHI(rng)
        self.pieces: list[Piece] = []

    # ---------------------------------------------------------------- mentions
    def phrase(self, code: Code) -> str:
        """One way of writing ``code`` at this site."""
        if code.abbreviations and self.rng.random() < self.style.abbreviate:
            if self.rng.random() < 0.8:
                return _preferred_abbreviation(self.style.name, code)
            return self.rng.choice(code.abbreviations)
        return self.rng.choice(code.terms)

    def negated(self, code: Code) -> str:
        return self.rng.choice(self.style.negations).format(self.phrase(code))

    # ---------------------------------------------------------------- assembly
    def add(self, text: str, phi: str | None = None) -> None:
        self.pieces.append((text, phi))

    def header(self, title: str) -> None:
        self.add(f"\n{title.upper() if self.style.upper_headers else title}:\n")

    def build(self, doc_id: str, split: str) -> Document:
        rng, style = self.rng, self.style
        prevalence = site_prevalence(style.name)
        present = [c for c in CODES if rng.random() < prevalence[c.code]]
        if not present:  # every note is coded with something
            present = [rng.choices(CODES, weights=list(prevalence.values()))[0]]
        absent = [c for c in CODES if c not in present]
        negated = rng.sample(absent, min(len(absent), rng.randint(*NEGATED_PER_NOTE)))
        relative_codes = rng.sample(absent, 1) if rng.random() < style.family_history else []

        sex = rng.choice("FM")
        first, last = self.fake.first_name(sex), self.fake.last_name()
        doctor = f"{self.fake.first_name()} {self.fake.last_name()}"
        visit = dt.date(2015, 1, 1) + dt.timedelta(days=rng.randint(0, 365 * 9))
        age = rng.randint(28, 88)
        dob = visit - dt.timedelta(days=age * 365 + rng.randint(0, 364))
        mrn = self.fake.shape("MEDICALRECORD") if rng.random() < 0.2 else \
            fill_shape(style.mrn_shape, rng)

        self._note_header(first, last, mrn, dob, visit)
        chronic = [c for c in present if c.chronic]
        acute = [c for c in present if not c.chronic]
        title = "Mr." if sex == "M" else rng.choice(("Ms.", "Mrs."))
        self.header(style.headers[0])
        self.add(f"{title} ")
        self.add(last, "PATIENT")
        history = ", ".join(self.phrase(c) for c in chronic) or "no significant history"
        self.add(f" is a {age} year old {'man' if sex == 'M' else 'woman'} with {history} "
                 f"who presents with {rng.choice(CHIEF_COMPLAINTS)}. ")
        self.add(rng.choice(FILLER))
        self.header(style.headers[1])
        self._history(chronic, relative_codes)
        self.header(style.headers[2])
        filler = [f.rstrip(".") for f in rng.sample(FILLER, 2)]
        findings = [self.negated(c) for c in negated] + filler
        findings += [self.phrase(c) for c in acute if rng.random() < 0.5]
        rng.shuffle(findings)
        self.add(". ".join(_capitalise(f) for f in findings) + ".")
        self.header(style.headers[3])
        self._assessment(present)
        self.header(style.headers[4])
        self.add("Dr. " if rng.random() < 0.5 else "")
        self.add(doctor, "DOCTOR")
        self.add(" on ")
        self.add(visit.strftime("%m/%d/%Y"), "DATE")
        self.add(". Call ")
        self.add(self.fake.phone(), "PHONE")
        self.add(" with questions.\n")

        text, spans = _assemble(self.pieces)
        meta = {"labels": sorted(c.code for c in present), "split": split,
                "negated": sorted(c.code for c in negated + relative_codes),
                "site": style.name, "kind": style.kind,
                "patient_id": f"{style.name}|{doc_id}", "identifiers": [first, last, mrn]}
        return Document(doc_id, text, spans, meta)

    def _note_header(self, first: str, last: str, mrn: str, dob: dt.date,
                     visit: dt.date) -> None:
        rng, style = self.rng, self.style
        self.add(f"{style.kind.upper()}\nPatient: ")
        if rng.random() < 0.5:
            self.add(f"{last.upper()}, {first.upper()}", "PATIENT")
        else:
            self.add(f"{first} {last}", "PATIENT")
        self.add("    MRN: ")
        self.add(mrn, "MEDICALRECORD")
        self.add("\nDOB: ")
        self.add(dob.strftime(rng.choice(("%m/%d/%Y", "%Y-%m-%d", "%d %b %Y"))), "DATE")
        self.add("    Visit date: ")
        self.add(visit.strftime("%m/%d/%Y"), "DATE")
        self.add("\n")

    def _history(self, chronic: list[Code], relative_codes: list[Code]) -> None:
        rng = self.rng
        items = [self.phrase(c) for c in chronic] or ["None significant"]
        if rng.random() < 0.5:
            self.add("\n".join(f"{i + 1}. {_capitalise(item)}" for i, item in enumerate(items)))
        else:
            self.add(_capitalise(", ".join(items)) + ".")
        for code in relative_codes:
            self.add(f"\nFamily history: {rng.choice(RELATIVES)} with {self.phrase(code)}.")

    def _assessment(self, present: list[Code]) -> None:
        rng = self.rng
        acute_first = sorted(present, key=lambda c: c.chronic)
        lines = [f"# {_capitalise(self.phrase(c))} - {rng.choice(PLANS)}." for c in acute_first]
        self.add("\n".join(lines))


def _capitalise(text: str) -> str:
    return text[:1].upper() + text[1:]


def _assemble(pieces: list[Piece]) -> tuple[str, list[Span]]:
    chunks: list[str] = []
    spans: list[Span] = []
    pos = 0
    for text, subtype in pieces:
        if subtype is not None:
            spans.append(Span(pos, pos + len(text), subtype))
        chunks.append(text)
        pos += len(text)
    return "".join(chunks), spans
