"""Annotated clinical notes for the federated de-id tagger (``deid-ner``), four hospitals.

Why per-site notes: a PHI tagger trained at one hospital learns *that* hospital's notes —
its note kinds and layouts, the names of its patients, its MRN, phone and date formats —
and misses PHI written in another hospital's style. Training across hospitals without
pooling the (PHI-laden) notes is the point of the federated task, so the built-in sites
must differ in exactly those ways:

- **note kinds and templates**: each site renders its own disjoint subset of
  :data:`fedmed.deid.templates.TEMPLATES` (the academic centre writes discharge summaries,
  the community hospital progress notes, the rural hospital ECG reports, the veterans'
  hospital radiology reports; each also some referral letters);
- **names**: the people of a note are renamed from one Faker locale per site (US English,
  Mexican Spanish, Polish, Vietnamese — different spellings and diacritics);
- **identifiers and contact numbers**: site-specific shapes for MRNs, other IDs, phones and
  faxes (:func:`fedmed.deid.fakes.fill_shape` patterns);
- **dates**: every parsable date rewritten in the site's house format
  (:mod:`fedmed.deid.dates`), e.g. ``04-MAR-2021`` at the veterans' hospital.

Notes are rendered by the corpus generator's :class:`fedmed.deid.corpus.NoteRenderer`
(gold spans exact by construction) and then *restyled*: each gold span's text is replaced
by the site's version and the offsets recomputed, so the gold stays exact.

Determinism: note ``i`` of ``(site, split)`` depends only on ``(seed, site, split, i)``
(:func:`fedmed.deid.corpus.note_seed`). The task pack draws validation and test notes with
a fixed seed and training notes with the run's seed.

Real annotations: :func:`read_site_folder` reads a hospital's own i2b2-2014 XML files
(``train/``, optional ``val/`` or ``dev/``, ``test/``) with :func:`fedmed.deid.io.read_i2b2_dir`.
"""

from __future__ import annotations

import random
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from fedmed.deid import dates
from fedmed.deid.corpus import NoteRenderer, note_seed
from fedmed.deid.fakes import faker_for, fill_shape
from fedmed.deid.io import read_i2b2_dir
from fedmed.deid.phi import Document, Span
from fedmed.deid.templates import TEMPLATES, Template
from fedmed.errors import ConfigError, DataError

N_TRAIN_DEFAULT = 60
N_VAL_DEFAULT = 12
N_TEST_DEFAULT = 24
SPLITS = ("train", "val", "test")
NAME_TYPES = frozenset({"PATIENT", "DOCTOR"})
_NAME_WORD = re.compile(r"[^\W\d_]+")


@dataclass(frozen=True)
class SiteStyle:
    """How one hospital writes its notes (see the module docstring)."""

    templates: tuple[str, ...]
    name_locale: str
    shapes: dict[str, tuple[str, ...]] = field(default_factory=dict)
    date_format: str = ""
    date_case: str = "as-is"

    def template_objects(self) -> tuple[Template, ...]:
        by_name = {t.name: t for t in TEMPLATES}
        missing = [name for name in self.templates if name not in by_name]
        if missing:
            raise ConfigError(f"unknown note templates {missing}; see fedmed.deid.templates")
        return tuple(by_name[name] for name in self.templates)


def _kind(kind: str) -> tuple[str, ...]:
    return tuple(t.name for t in TEMPLATES if t.kind == kind)


SITES: dict[str, SiteStyle] = {
    "academic": SiteStyle(
        templates=(*_kind("discharge"), "ref-consult", "ref-specialist"),
        name_locale="en_US",
        shapes={"MEDICALRECORD": ("########",), "PHONE": ("(%##) ###-####",),
                "FAX": ("(%##) ###-####",), "IDNUM": ("@##-#####",)},
        date_format="{Month} {d}, {yyyy}",
    ),
    "community": SiteStyle(
        templates=(*_kind("progress"), "ref-letter", "ref-form"),
        name_locale="es_MX",
        shapes={"MEDICALRECORD": ("MR-###-###",), "PHONE": ("%##.###.####",),
                "FAX": ("%##.###.####",), "IDNUM": ("######",)},
        date_format="{m}/{d}/{yy}",
    ),
    "rural": SiteStyle(
        templates=(*_kind("ecg"), "ref-homecare"),
        name_locale="pl_PL",
        shapes={"MEDICALRECORD": ("@@#######",), "PHONE": ("+1 %## ### ####",),
                "FAX": ("+1 %## ### ####",), "IDNUM": ("####-@-####",)},
        date_format="{dd}.{mm}.{yyyy}",
    ),
    "veterans": SiteStyle(
        templates=(*_kind("radiology"), "ref-email"),
        name_locale="vi_VN",
        shapes={"MEDICALRECORD": ("V###-##-####",), "PHONE": ("%##/###-####",),
                "FAX": ("%##/###-####",), "IDNUM": ("S##-######",)},
        date_format="{dd}-{Mon}-{yyyy}",
        date_case="upper",
    ),
}
"""The built-in hospitals and their writing styles."""


def site_style(site: str) -> SiteStyle:
    """The style of a built-in site; ConfigError naming the known sites otherwise."""
    if site not in SITES:
        raise ConfigError(f"unknown deid-ner site {site!r}; sites: {', '.join(SITES)}")
    return SITES[site]


# ------------------------------------------------------------------------------ restyling
def _match_case(new: str, old: str) -> str:
    if len(old) > 1 and old.isupper():
        return new.upper()
    if old.islower():
        return new.lower()
    return new


class Restyler:
    """Rewrites one note's PHI in a site's style; consistent within the note.

    The same original name word always becomes the same new word in one note (as a real
    note repeats a patient's name), drawn from the site's Faker locale. Initials (single
    letters, all-caps words of up to three letters) are kept: they carry no locale.
    """

    def __init__(self, style: SiteStyle, rng: random.Random) -> None:
        self.style = style
        self.rng = rng
        self.names = faker_for(style.name_locale)
        self.names.seed_instance(rng.getrandbits(32))
        self.renamed: dict[str, str] = {}

    def _name_word(self, match: re.Match[str]) -> str:
        word = match.group()
        if len(word) == 1 or (word.isupper() and len(word) <= 3):
            return word
        key = word.lower()
        if key not in self.renamed:
            # first_name_female/male, not first_name: some locales (vi_VN) fill first_name
            # with placeholders ("John", "Jane").
            draw = self.rng.choice((self.names.last_name, self.names.last_name,
                                    self.names.first_name_female, self.names.first_name_male))
            self.renamed[key] = draw()
        return _match_case(self.renamed[key], word)

    def _date(self, text: str) -> str:
        parsed = dates.parse(text)
        if parsed is None or not self.style.date_format:
            return text
        case = self.style.date_case if self.style.date_case != "as-is" else parsed.case
        return dates.render(parsed.value, self.style.date_format, case)

    def value(self, subtype: str, text: str) -> str:
        """The site's version of one PHI value of ``subtype``."""
        if subtype in NAME_TYPES:
            return _NAME_WORD.sub(self._name_word, text)
        if subtype == "DATE":
            return self._date(text)
        shapes = self.style.shapes.get(subtype)
        if shapes:
            return _match_case(fill_shape(self.rng.choice(shapes), self.rng), text)
        return text


def replace_spans(doc: Document, value: Callable[[str, str], str]) -> Document:
    """``doc`` with every gold span's text replaced by ``value(subtype, text)``.

    Offsets are recomputed, so ``text[start:end]`` is the new value for every span.
    Overlapping spans (never produced by the corpus generator) are a DataError.
    """
    pieces: list[str] = []
    spans: list[Span] = []
    pos = length = 0
    for span in sorted(doc.spans):
        if span.start < pos:
            raise DataError(f"{doc.doc_id}: overlapping gold spans at {span.start}")
        before = doc.text[pos:span.start]
        new = value(span.type, doc.text[span.start:span.end])
        pieces += [before, new]
        length += len(before)
        spans.append(Span(length, length + len(new), span.type, span.score))
        length += len(new)
        pos = span.end
    pieces.append(doc.text[pos:])
    return Document(doc.doc_id, "".join(pieces), spans, dict(doc.meta))


# ------------------------------------------------------------------------------ generation
def site_note(site: str, seed: int, split: str, index: int) -> Document:
    """Note ``index`` of ``split`` at ``site`` for ``seed``, with exact gold spans."""
    style = site_style(site)
    if split not in SPLITS:
        raise ConfigError(f"unknown split {split!r}; expected one of {', '.join(SPLITS)}")
    rng = random.Random(note_seed(seed, f"deid-ner/{site}/{split}", index))
    template = rng.choice(style.template_objects())
    raw = NoteRenderer(rng).render(template, f"{site}-{split}-{index:04d}")
    doc = replace_spans(raw, Restyler(style, rng).value)
    doc.meta.update({"site": site, "split": split})
    return doc


def site_notes(site: str, n: int, seed: int, split: str) -> list[Document]:
    """``n`` notes of one split at one site (a prefix of any larger ``n``)."""
    if n < 0:
        raise ConfigError(f"number of notes must be >= 0, got {n}")
    return [site_note(site, seed, split, i) for i in range(n)]


# ------------------------------------------------------------------------------ real folders
def read_site_folder(folder: Path) -> dict[str, list[Document]]:
    """A hospital's own annotated notes: ``train/``, ``test/`` and ``val/`` (or ``dev/``).

    Each holds i2b2-2014 XML files (what ``fedmed deid corpus`` writes and the i2b2 2014
    release uses). Without a validation folder ``val`` is empty. Every file is checked by
    :func:`fedmed.deid.io.read_i2b2_dir` (DataError naming the file).
    """
    if not folder.is_dir():
        raise DataError(f"{folder}: site folder not found")
    splits = {"train": read_i2b2_dir(folder / "train"), "test": read_i2b2_dir(folder / "test")}
    val_dir = next((folder / name for name in ("val", "dev") if (folder / name).is_dir()), None)
    splits["val"] = read_i2b2_dir(val_dir) if val_dir is not None else []
    return splits


def annotated_site_folders(data_dir: Path) -> list[str]:
    """Sub-folders of ``data_dir`` holding ``train/`` and ``test/``: one per site."""
    if not data_dir.is_dir():
        raise DataError(f"{data_dir}: data folder not found")
    sites = sorted(p.name for p in data_dir.iterdir()
                   if (p / "train").is_dir() and (p / "test").is_dir())
    if not sites:
        raise DataError(f"{data_dir}: no site folders with train/ and test/ of i2b2 XML files")
    return sites
