"""Synthetic clinical notes with gold PHI spans, split by template.

Why synthetic: no real annotated clinical corpus may ship or be downloaded, yet the
taggers need training data and the acceptance numbers need a held-out test set. Notes are
rendered from :mod:`fedmed.deid.templates` with PHI from :mod:`fedmed.deid.fakes`; every
PHI value is recorded as a gold span while the note is assembled, so offsets are exact by
construction (a test checks ``text[start:end]`` for every span).

Noise, because real notes are messy: typos in the prose, header case variants, whole notes
in capitals, hard line wraps and line breaks inside names (these replace a space by a
newline, so offsets never move), lists and tables, initials, titles outside the span
("Dr." is not PHI, "Smith" is), dates in many formats, ages over 89 and written-out ages.
Training notes (only) also get 2-6 generic PHI snippets (:data:`templates.SNIPPETS`) so the
tagger sees PHI in many contexts, and 1-4 lines of real clinical vocabulary without PHI
(:data:`templates.CLINICAL_SNIPPETS`: drug names in any case, ICD-10-CM diagnoses, lab
abbreviations, numbered lists, numbers) so it learns that capitalised words are not names by
themselves; dev and test notes are pure renderings of their templates (whose medication and
history fillers draw on the same vocabulary).

Determinism: note ``i`` of split ``s`` depends only on ``(seed, s, i)``, so
``generate(n, seed)`` is a prefix of ``generate(n + k, seed)``.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import random
import re
from dataclasses import dataclass
from pathlib import Path

from fedmed.deid import dates
from fedmed.deid.fakes import FakePHI, age_words
from fedmed.deid.io import write_i2b2
from fedmed.deid.phi import Document, Span
from fedmed.deid.templates import (
    CLINICAL_SNIPPETS,
    FILLERS,
    SNIPPETS,
    Template,
    templates_for,
)

SPLITS = ("train", "dev", "test")
SPLIT_FRACTIONS = {"train": 0.7, "dev": 0.15, "test": 0.15}

SLOT_RE = re.compile(r"\{([A-Z_][A-Za-z_\-.]*)\}")
ALT_RE = re.compile(r"\(\((.*?)\)\)", re.DOTALL)
SLOT_ALIASES = {"MRN": "MEDICALRECORD", "LOCOTHER": "LOCATION-OTHER"}

FULL_FORMATS = tuple(f for f in dates.FORMATS if "{d" in f and "{yy" in f)
DAY_FORMATS = tuple(f for f in dates.FORMATS if "{d" in f or "{Weekday}" in f)

Piece = tuple[str, str | None]
"""A run of note text and its PHI subtype (None for non-PHI)."""


@dataclass
class Person:
    """A named person in a note (patient, relative or clinician)."""

    first: str
    last: str
    middle: str
    sex: str

    def initials(self) -> str:
        return (self.first[:1] + self.middle[:1] + self.last[:1]).upper()


def note_seed(seed: int, split: str, index: int) -> int:
    """The seed of one note, independent of how many notes are generated."""
    digest = hashlib.sha256(f"fedmed-deid|{seed}|{split}|{index}".encode()).digest()
    return int.from_bytes(digest[:8], "big")


class NoteRenderer:
    """Renders one template into a :class:`Document` with gold spans.

    All PHI of one note is drawn once (people, places, dates, numbers) so repeated slots
    mention the same entity, as a real note does.
    """

    def __init__(self, rng: random.Random) -> None:
        self.rng = rng
        self.fp = FakePHI(rng)
        self.values: dict[str, str] = {}
        self.people: dict[str, Person] = {}
        self.patient = self._person()
        self.age = rng.randint(90, 104) if rng.random() < 0.15 else rng.randint(18, 89)
        admit = dt.date(2004, 1, 1) + dt.timedelta(days=rng.randint(0, 365 * 20))
        self.dates = {
            "admit": admit,
            "discharge": admit + dt.timedelta(days=rng.randint(1, 14)),
            "dob": admit - dt.timedelta(days=self.age * 365 + rng.randint(0, 364)),
            "prior": admit - dt.timedelta(days=rng.randint(30, 3000)),
            "followup": admit + dt.timedelta(days=rng.randint(14, 120)),
            "": admit + dt.timedelta(days=rng.randint(-5, 10)),
        }
        self.preferred_format = rng.choice(FULL_FORMATS)
        self.all_caps = False
        self.typo_rate = rng.choice((0.0, 0.01, 0.02, 0.04))

    # ------------------------------------------------------------ entities
    def _person(self, last: str | None = None) -> Person:
        sex = self.rng.choice("FM")
        middle = self.fp.first_name(sex) if self.rng.random() < 0.35 else ""
        return Person(self.fp.first_name(sex), last or self.fp.last_name(), middle, sex)

    def _role_person(self, slot: str, role: str) -> Person:
        key = f"{slot}.{role}"
        if key not in self.people:
            same_family = slot == "RELATIVE" and self.rng.random() < 0.5
            self.people[key] = self._person(self.patient.last if same_family else None)
        return self.people[key]

    def _value(self, subtype: str, role: str) -> str:
        key = f"{subtype}.{role}"
        if key not in self.values:
            self.values[key] = self._new_value(subtype)
        return self.values[key]

    def _new_value(self, subtype: str) -> str:
        fp = self.fp
        makers = {
            "USERNAME": lambda: fp.username(self.patient.first if self.rng.random() < 0.1
                                            else fp.first_name(), fp.last_name()),
            "PROFESSION": fp.profession, "STREET": fp.street, "CITY": fp.city,
            "STATE": fp.state, "COUNTRY": fp.country, "ZIP": fp.zip, "HOSPITAL": fp.hospital,
            "DEPARTMENT": fp.department, "ROOM": fp.room, "ORGANIZATION": fp.organization,
            "LOCATION-OTHER": fp.location_other, "PHONE": fp.phone, "FAX": fp.phone,
            "EMAIL": lambda: fp.email(self.patient.first, self.patient.last)
            if self.rng.random() < 0.5 else fp.email(fp.first_name(), fp.last_name()),
            "URL": fp.url, "IPADDR": fp.ipaddr, "SSN": fp.ssn,
        }
        if subtype in makers:
            return makers[subtype]()
        return fp.shape(subtype)

    # ------------------------------------------------------------ slots
    def slot(self, name: str) -> list[Piece]:
        """The pieces for one ``{SLOT.role...}``."""
        if name.startswith("_"):
            return [(self._typos(FILLERS[name](self.rng)), None)]
        head, *rest = name.split(".")
        head = SLOT_ALIASES.get(head, head)
        if head == "PATIENT":
            return self._patient(rest[0] if rest else "any")
        if head == "RELATIVE":
            return self._relative()
        if head == "DOCTOR":
            return self._doctor(rest)
        if head == "AGE":
            return self._age()
        if head == "DATE":
            return self._date(rest[0] if rest else "")
        return [(self._value(head, rest[0] if rest else "a"), head)]

    def _title(self, p: Person) -> str:
        if p.sex == "M":
            return "Mr."
        return self.rng.choice(("Ms.", "Mrs.", "Miss"))

    def _name_styles(self, p: Person, style: str) -> list[Piece]:
        mid = f" {p.middle[0]}." if p.middle else ""
        t = "PATIENT"
        styles: dict[str, list[Piece]] = {
            "full": [(f"{p.first}{mid} {p.last}", t)],
            "first": [(p.first, t)],
            "last": [(p.last, t)],
            "caps": [(self.rng.choice((f"{p.last}, {p.first}", f"{p.first} {p.last}",
                                       f"{p.last}, {p.first}{mid}")).upper(), t)],
            "formal": [(self._title(p) + " ", None),
                       (p.last if self.rng.random() < 0.8 else f"{p.first} {p.last}", t)],
            "comma": [(f"{p.last}, {p.first}", t)],
            "initial": [(f"{p.first[0]}. {p.last}", t)],
        }
        if style == "any":
            style = self.rng.choice(tuple(styles))
        return styles[style]

    def _patient(self, style: str) -> list[Piece]:
        return self._name_styles(self.patient, style)

    def _relative(self) -> list[Piece]:
        p = self._role_person("RELATIVE", "a")
        return self._name_styles(p, self.rng.choice(("full", "first", "full", "formal")))

    def _doctor(self, rest: list[str]) -> list[Piece]:
        role = rest[0] if rest else "a"
        if role == "initials":
            p = self._role_person("DOCTOR", "a")
            ini = p.initials()
            return [(ini if self.rng.random() < 0.7 else ini.lower(), "DOCTOR")]
        p = self._role_person("DOCTOR", role)
        if len(rest) > 1 and rest[1] == "last":
            return [(p.last, "DOCTOR")]
        mid = f" {p.middle[0]}." if p.middle else ""
        d = "DOCTOR"
        options: list[list[Piece]] = [
            [("Dr. ", None), (p.last, d)],
            [("Dr. ", None), (f"{p.first} {p.last}", d)],
            [(f"{p.first}{mid} {p.last}", d), (", MD", None)],
            [(f"{p.first[0]}. {p.last}", d)],
            [(f"{p.last}, {p.first}", d)],
            [(f"{p.first} {p.last}", d), (", M.D.", None)],
            [(f"{p.first} {p.last}", d)],
            [(f"{p.last.upper()}, {p.first.upper()}", d)],
        ]
        return self.rng.choice(options)

    def _age(self) -> list[Piece]:
        if self.rng.random() < 0.05:
            return [(age_words(self.age), "AGE")]
        return [(str(self.age), "AGE")]

    def _date(self, role: str) -> list[Piece]:
        value = self.dates.get(role, self.dates[""])
        if role == "dob":
            fmt = self.preferred_format if self.rng.random() < 0.6 else \
                self.rng.choice(FULL_FORMATS)
        elif role == "prior":
            fmt = self.rng.choice(dates.FORMATS)
        elif self.rng.random() < 0.6:
            fmt = self.preferred_format
        else:
            fmt = self.rng.choice(DAY_FORMATS)
        case = "upper" if self.rng.random() < 0.1 else "as-is"
        return [(dates.render(value, fmt, case), "DATE")]

    # ------------------------------------------------------------ noise
    def _typos(self, text: str) -> str:
        if not self.typo_rate:
            return text

        def maybe(m: re.Match[str]) -> str:
            w = m.group()
            if self.rng.random() >= self.typo_rate:
                return w
            i = self.rng.randrange(1, len(w) - 1)
            kind = self.rng.randrange(3)
            if kind == 0:
                return w[:i] + w[i + 1] + w[i] + w[i + 2:]
            if kind == 1:
                return w[:i] + w[i + 1:]
            return w[:i] + w[i] + w[i:]

        return re.sub(r"[a-z]{5,}", maybe, text)

    def _header(self, line: str) -> str:
        style = self.rng.choice(("upper", "upper", "title", "lower-colon", "as-is"))

        def restyle(segment: str) -> str:
            if style == "upper":
                return segment.upper()
            if style == "title":
                return segment.title()
            if style == "lower-colon":
                return segment.lower()
            return segment

        parts = SLOT_RE.split(line)  # odd indices are slot names
        out = "".join("{" + p + "}" if i % 2 else restyle(p) for i, p in enumerate(parts))
        if style == "lower-colon" and not out.rstrip().endswith(":"):
            out = out.rstrip() + ":"
        return out

    # ------------------------------------------------------------ assembly
    def render(self, template: Template, doc_id: str, augment: bool = False) -> Document:
        body = template.body
        if augment:
            body = self._insert_snippets(body)
        body = ALT_RE.sub(lambda m: self.rng.choice(m.group(1).split("||")), body)
        body = "\n".join(self._header(line[2:]) if line.startswith("# ") else line
                         for line in body.split("\n"))
        self.all_caps = self.rng.random() < (0.25 if template.kind in ("radiology", "ecg")
                                             else 0.05)
        pieces: list[Piece] = []
        pos = 0
        for m in SLOT_RE.finditer(body):
            pieces.append((self._typos(body[pos:m.start()]), None))
            pieces.extend(self.slot(m.group(1)))
            pos = m.end()
        pieces.append((self._typos(body[pos:]), None))
        text, spans = self._assemble(pieces)
        text = self._line_breaks(text, spans)
        return Document(doc_id, text, spans,
                        {"kind": template.kind, "template": template.name})

    def _insert_snippets(self, body: str) -> str:
        """Training-only: 2-6 generic PHI snippets and 1-4 clinical lines without PHI
        (:data:`templates.CLINICAL_SNIPPETS`) at random line ends or on new lines."""
        lines = body.rstrip("\n").split("\n")
        snippets = self.rng.sample(SNIPPETS, self.rng.randint(2, 6))
        snippets += self.rng.sample(CLINICAL_SNIPPETS, self.rng.randint(1, 4))
        self.rng.shuffle(snippets)
        for snippet in snippets:
            i = self.rng.randrange(len(lines))
            if self.rng.random() < 0.5 or lines[i].startswith("# "):
                lines.insert(i + 1, snippet)
            else:
                lines[i] = f"{lines[i]} {snippet}"
        return "\n".join(lines) + "\n"

    def _assemble(self, pieces: list[Piece]) -> tuple[str, list[Span]]:
        chunks, spans, pos = [], [], 0
        for text, subtype in pieces:
            if self.all_caps:
                text = text.upper()
            if subtype is not None:
                spans.append(Span(pos, pos + len(text), subtype))
            chunks.append(text)
            pos += len(text)
        return "".join(chunks), spans

    def _line_breaks(self, text: str, spans: list[Span]) -> str:
        """Hard wraps and breaks inside multi-word PHI: spaces become newlines (offsets kept)."""
        chars = list(text)
        for s in spans:
            inner = [i for i in range(s.start, s.end) if chars[i] == " "]
            if inner and self.rng.random() < 0.05:
                chars[self.rng.choice(inner)] = "\n"
        if self.rng.random() < 0.25:
            width, col, last_space = self.rng.randint(55, 90), 0, -1
            for i, c in enumerate(chars):
                if c == "\n":
                    col, last_space = 0, -1
                    continue
                col += 1
                if c == " ":
                    last_space = i
                if col > width and last_space >= 0:
                    chars[last_space] = "\n"
                    col, last_space = i - last_space, -1
        return "".join(chars)


def generate_note(seed: int, split: str, index: int, augment: bool | None = None) -> Document:
    """Note ``index`` of ``split`` for ``seed``.

    ``augment`` (default: only for the train split) inserts generic PHI snippets.
    """
    rng = random.Random(note_seed(seed, split, index))
    template = rng.choice(templates_for(split))
    augment = split == "train" if augment is None else augment
    doc = NoteRenderer(rng).render(template, f"{split}-{index:05d}", augment)
    doc.meta.update({"split": split, "patient_id": f"{seed}-{split}-{index}"})
    return doc


def generate(n: int, seed: int, split: str = "train",
             augment: bool | None = None) -> list[Document]:
    """``n`` notes of one split (templates of that split only)."""
    if n < 0:
        raise ValueError("n must be >= 0")
    return [generate_note(seed, split, i, augment) for i in range(n)]


def split_sizes(n: int) -> dict[str, int]:
    """How ``n`` notes divide into train/dev/test (70/15/15, each at least 1 when n >= 3)."""
    dev = max(1, round(n * SPLIT_FRACTIONS["dev"])) if n >= 3 else 0
    test = max(1, round(n * SPLIT_FRACTIONS["test"])) if n >= 3 else 0
    return {"train": n - dev - test, "dev": dev, "test": test}


def write_corpus(out: str | Path, n: int, seed: int) -> dict[str, int]:
    """Write ``n`` notes as i2b2 XML under ``out/{train,dev,test}/`` plus a manifest."""
    root = Path(out)
    sizes = split_sizes(n)
    for split, size in sizes.items():
        folder = root / split
        folder.mkdir(parents=True, exist_ok=True)
        for doc in generate(size, seed, split):
            write_i2b2(folder / f"{doc.doc_id}.xml", doc)
    manifest = {
        "generator": "fedmed.deid.corpus", "n": n, "seed": seed, "sizes": sizes,
        "templates": {s: [t.name for t in templates_for(s)] for s in SPLITS},
    }
    (root / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")
    return sizes
