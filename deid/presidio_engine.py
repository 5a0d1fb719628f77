"""PHI detection: Presidio's AnalyzerEngine, offline, with our tagger and rules.

Offline (DESIGN.md §5): a plain ``AnalyzerEngine()`` downloads ``en_core_web_lg``. Here
the NLP engine is a ``SpacyNlpEngine`` subclass on ``spacy.blank("en")`` with a small
component that sets ``lemma_ = lower_`` (Presidio's context enhancer compares lemmas;
without lemmas context words never boost a score), ``SpacyRecognizer`` is never added,
and ``TLDEXTRACT_PUBLIC_SUFFIX_LIST_URLS`` is emptied before Presidio is imported (the
e-mail/URL recognizers would otherwise fetch the public-suffix list).

Combination (recall-biased): every tagger span is kept (the tagger already applied its
own recall-biased threshold, stored in its checkpoint), every rule/pattern result with
score >= ``pattern_threshold`` (default 0.4) is kept, and overlapping spans are merged
into the union of their characters with the type of the best-scoring member. A result
Presidio scored low (0.01-0.3: bare digit runs, weak driver-licence shapes) passes only
when a context word nearby raised it over the threshold.

Engines: ``combined`` (default), ``tagger`` (the tagger alone) and ``presidio``
(Presidio's pattern recognizers and our rules, no tagger) -- the three configurations
docs/deid.md reports.
"""

from __future__ import annotations

import os

os.environ.setdefault("TLDEXTRACT_PUBLIC_SUFFIX_LIST_URLS", "")  # before presidio imports

import bisect  # noqa: E402
import copy  # noqa: E402
import importlib.metadata  # noqa: E402
import re  # noqa: E402
from collections.abc import Sequence  # noqa: E402
from functools import lru_cache  # noqa: E402
from typing import Any  # noqa: E402

import spacy  # noqa: E402
from presidio_analyzer import (  # noqa: E402
    AnalyzerEngine,
    EntityRecognizer,
    RecognizerRegistry,
    RecognizerResult,
)
from presidio_analyzer.context_aware_enhancers import LemmaContextAwareEnhancer  # noqa: E402
from presidio_analyzer.nlp_engine import NerModelConfiguration, SpacyNlpEngine  # noqa: E402
from presidio_analyzer.predefined_recognizers import (  # noqa: E402
    CreditCardRecognizer,
    DateRecognizer,
    EmailRecognizer,
    IbanRecognizer,
    IpRecognizer,
    MedicalLicenseRecognizer,
    PhoneRecognizer,
    UrlRecognizer,
    UsBankRecognizer,
    UsItinRecognizer,
    UsLicenseRecognizer,
    UsPassportRecognizer,
    UsSsnRecognizer,
)
from spacy.attrs import IDX, LENGTH  # noqa: E402
from spacy.language import Language  # noqa: E402

from fedmed.deid.config import DeidConfig  # noqa: E402
from fedmed.deid.phi import Span, merge_overlapping  # noqa: E402
from fedmed.deid.recognizers import (  # noqa: E402
    PRESIDIO_TO_SUBTYPE,
    RULES_VERSION,
    TaggerRecognizer,
    fedmed_rule_recognizers,
)
from fedmed.deid.tagger import Tagger, load_tagger  # noqa: E402

_TRAILING = ".,;:!?)]}'\""
PRESIDIO_VERSION = importlib.metadata.version("presidio-analyzer")


@Language.component("fedmed_lemma_lower")
def _lemma_lower(doc: Any) -> Any:
    """Blank spaCy pipelines have no lemmatizer: use the lower-cased form as lemma."""
    for token in doc:
        token.lemma_ = token.lower_
    return doc


class BisectContextEnhancer(LemmaContextAwareEnhancer):
    """Presidio's lemma context enhancer, made cheaper; the scores are the same.

    - Presidio scans every spaCy token for every result (a Python ``Token`` is built per
      step): on 2,000-character notes that was 40% of the detection time; here the match's
      token is found by bisection;
    - results of recognizers without context words (the tagger: ~30 per note) are never
      enhanced, so they skip the enhancer's deep copy of all results.
    """

    def __init__(self) -> None:
        super().__init__()
        self._doc: Any = None
        self._ends: list[int] = []

    def enhance_using_context(self, text: str, raw_results: list[RecognizerResult],
                              nlp_artifacts: Any, recognizers: list[EntityRecognizer],
                              context: list[str] | None = None) -> list[RecognizerResult]:
        with_context = {r.id for r in recognizers if r.context}
        key = RecognizerResult.RECOGNIZER_IDENTIFIER_KEY
        todo = [r for r in raw_results if (r.recognition_metadata or {}).get(key) in with_context]
        rest = [r for r in raw_results if (r.recognition_metadata or {}).get(key)
                not in with_context]
        return super().enhance_using_context(text, todo, nlp_artifacts, recognizers,
                                             context) + rest

    def _find_index_of_match_token(self, word: str, start: int, tokens: Any,
                                   tokens_indices: list[int]) -> int:
        if tokens is not self._doc:
            arr = tokens.to_array([IDX, LENGTH])
            self._ends = (arr[:, 0] + arr[:, 1]).tolist()
            self._doc = tokens
        i = bisect.bisect_right(self._ends, start)
        if i >= len(self._ends):
            raise ValueError(f"no token at offset {start} for a match of {len(word)} chars")
        return i


class BlankSpacyNlpEngine(SpacyNlpEngine):
    """Presidio's spaCy engine on ``spacy.blank("en")``: tokens and lemmas, no NER, offline."""

    def __init__(self) -> None:
        super().__init__(
            models=[{"lang_code": "en", "model_name": "blank:en"}],
            ner_model_configuration=NerModelConfiguration(
                model_to_presidio_entity_mapping={}, labels_to_ignore=[]),
        )

    def load(self) -> None:
        nlp = spacy.blank("en")
        nlp.add_pipe("fedmed_lemma_lower")
        self.nlp = {"en": nlp}


def presidio_pattern_recognizers() -> list[EntityRecognizer]:
    """The Presidio recognizers that fit US clinical notes (no spaCy NER)."""
    return [
        EmailRecognizer(), PhoneRecognizer(supported_regions=("US",)), UrlRecognizer(),
        IpRecognizer(), UsSsnRecognizer(), DateRecognizer(), MedicalLicenseRecognizer(),
        UsLicenseRecognizer(), CreditCardRecognizer(), IbanRecognizer(), UsBankRecognizer(),
        UsPassportRecognizer(), UsItinRecognizer(),
    ]


@lru_cache(maxsize=4)
def _default_tagger(spec: str | None) -> Tagger:
    return load_tagger(spec)


class Detector:
    """``detect(text) -> list[Span]``: the de-id stage's PHI detector.

    Build it once per process (loading the tagger and Presidio takes ~1 s) and reuse it.
    """

    def __init__(self, config: DeidConfig | None = None, tagger: Tagger | None = None) -> None:
        self.config = config or DeidConfig()
        self.tagger: Tagger | None = None
        if self.config.engine != "presidio":
            self.tagger = tagger or _default_tagger(self.config.tagger)
            if self.config.tagger_threshold is not None:  # a copy: the loaded one is shared
                self.tagger = copy.copy(self.tagger)
                self.tagger.threshold = self.config.tagger_threshold
        self._tagger_rec = TaggerRecognizer(self.tagger) if self.tagger else None
        recognizers: list[EntityRecognizer] = []
        if self._tagger_rec is not None:
            recognizers.append(self._tagger_rec)
        if self.config.engine != "tagger":
            recognizers += presidio_pattern_recognizers()
            recognizers += fedmed_rule_recognizers(self.config.site_patterns)
        nlp = BlankSpacyNlpEngine()
        nlp.load()
        registry = RecognizerRegistry(recognizers=recognizers, supported_languages=["en"])
        self.analyzer = AnalyzerEngine(nlp_engine=nlp, registry=registry,
                                       supported_languages=["en"],
                                       context_aware_enhancer=BisectContextEnhancer())

    @property
    def versions(self) -> dict[str, Any]:
        """What the de-id report records about the detector."""
        return {
            "engine": self.config.engine,
            "tagger": None if self.tagger is None else
            {"name": self.tagger.name, "version": self.tagger.version,
             "threshold": self.tagger.threshold},
            "rules": RULES_VERSION, "presidio": PRESIDIO_VERSION,
            "pattern_threshold": self.config.pattern_threshold,
            "site_patterns": [p.name for p in self.config.site_patterns],
        }

    def detect(self, text: str) -> list[Span]:
        return self.detect_batch([text])[0]

    def detect_batch(self, texts: Sequence[str]) -> list[list[Span]]:
        if self._tagger_rec is not None:
            self._tagger_rec.prime([t for t in texts if t.strip()])
        return [self._detect_one(t) for t in texts]

    def _detect_one(self, text: str) -> list[Span]:
        if not text.strip():
            return []
        spans = []
        for r in self.analyzer.analyze(text, language="en"):
            from_tagger = r.recognition_metadata and r.recognition_metadata.get(
                "recognizer_name", "").startswith("tagger:")
            if not from_tagger and r.score < self.config.pattern_threshold:
                continue
            subtype = PRESIDIO_TO_SUBTYPE.get(r.entity_type, r.entity_type)
            span: Span | None = Span(r.start, r.end, subtype, float(r.score))
            if not from_tagger:  # tagger spans already sit on token boundaries
                span = _trim(text, span)
            if span is not None:
                spans.append(span)
        return [_extend_initials(text, s) for s in merge_overlapping(spans)]


_INITIAL_AFTER = re.compile(r"\s[A-Z]\.(?!\w)")
_INITIAL_BEFORE = re.compile(r"(?<![\w.])[A-Z]\.\s$")


def _extend_initials(text: str, span: Span) -> Span:
    """Names: take in a middle/first initial the tagger left just outside ("DANIEL D.")."""
    if span.type not in ("PATIENT", "DOCTOR"):
        return span
    start, end = span.start, span.end
    after = _INITIAL_AFTER.match(text, end)
    if after and text[end - 1:end].isalpha():
        end = after.end()
    before = _INITIAL_BEFORE.search(text, max(0, start - 3), start)
    if before:
        start = before.start()
    return Span(start, end, span.type, span.score)


def _trim(text: str, span: Span) -> Span | None:
    """Drop whitespace and trailing punctuation a pattern swallowed ("x.com/a," -> "x.com/a")."""
    start, end = span.start, span.end
    while start < end and text[start].isspace():
        start += 1
    while end > start and (text[end - 1].isspace() or text[end - 1] in _TRAILING):
        if text[end - 1] == ")" and "(" in text[start:end - 1]:
            break
        end -= 1
    if end <= start:
        return None
    return Span(start, end, span.type, span.score)
