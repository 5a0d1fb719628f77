"""Presidio recognizers fedmed adds: the tagger, MRN, age over 89, SSN shape, site IDs.

Why these: Presidio ships no MRN or age recognizer, its ``UsSsnRecognizer`` rejects
well-known fake SSNs (a miss we cannot afford: any SSN-shaped string is treated as PHI),
and every hospital has its own identifier formats, which the site declares in its policy
(:class:`fedmed.deid.config.SitePattern`). The tagger is wrapped as an
``EntityRecognizer`` so Presidio's registry holds every detector in one place.

Entity names are i2b2 subtypes (``MEDICALRECORD``, ``AGE``...) so no mapping is needed
downstream; Presidio's own entities are mapped in :data:`PRESIDIO_TO_SUBTYPE`.
"""

from __future__ import annotations

import os

os.environ.setdefault("TLDEXTRACT_PUBLIC_SUFFIX_LIST_URLS", "")  # never fetch (DESIGN §5)

from collections.abc import Sequence  # noqa: E402

from presidio_analyzer import (  # noqa: E402
    EntityRecognizer,
    Pattern,
    PatternRecognizer,
    RecognizerResult,
)
from presidio_analyzer.nlp_engine import NlpArtifacts  # noqa: E402

from fedmed.deid.config import SitePattern  # noqa: E402
from fedmed.deid.phi import SUBTYPES, Span  # noqa: E402
from fedmed.deid.tagger import Tagger  # noqa: E402

RULES_VERSION = "fedmed-deid-rules-1"
"""Bump when a pattern below changes: it is recorded in every de-id report."""

PRESIDIO_TO_SUBTYPE = {
    "EMAIL_ADDRESS": "EMAIL", "PHONE_NUMBER": "PHONE", "URL": "URL", "IP_ADDRESS": "IPADDR",
    "US_SSN": "SSN", "DATE_TIME": "DATE", "MEDICAL_LICENSE": "LICENSE",
    "US_DRIVER_LICENSE": "LICENSE", "CREDIT_CARD": "ACCOUNT", "IBAN_CODE": "ACCOUNT",
    "US_BANK_NUMBER": "ACCOUNT", "US_PASSPORT": "IDNUM", "US_ITIN": "IDNUM",
}

MRN_KEYWORDS = (r"MRN|MR\s*#|MR\s+no\.?|medical\s+record(?:\s+(?:number|no\.?|#))?|"
                r"unit\s+(?:no\.?|number|#)|record\s*(?:#|no\.?|number)|hospital\s+number|"
                r"chart\s*(?:#|no\.?)|patient\s+ID|pt\s+ID")
MRN_VALUE_START = r"[A-Z]{0,3}-?\d"
MRN_VALUE = MRN_VALUE_START + r"[\dA-Z-]{3,14}\b"


class TaggerRecognizer(EntityRecognizer):
    """A :class:`fedmed.deid.tagger.Tagger` as a Presidio recognizer.

    Presidio calls ``analyze`` one text at a time; :meth:`prime` runs the tagger on a
    whole batch first (much faster: windows of many notes share forward passes) and
    ``analyze`` then reads the cached spans.
    """

    def __init__(self, tagger: Tagger) -> None:
        self.tagger = tagger
        self._cache: dict[str, list[Span]] = {}
        super().__init__(supported_entities=list(SUBTYPES), name=f"tagger:{tagger.name}",
                         supported_language="en", version=tagger.version)

    def load(self) -> None:  # the tagger is loaded already
        pass

    def prime(self, texts: Sequence[str]) -> None:
        todo = [t for t in dict.fromkeys(texts) if t not in self._cache]
        if todo:
            for text, spans in zip(todo, self.tagger.predict(todo), strict=True):
                self._cache[text] = spans

    def analyze(self, text: str, entities: list[str],
                nlp_artifacts: NlpArtifacts | None = None) -> list[RecognizerResult]:
        spans = self._cache.pop(text, None)
        if spans is None:
            spans = self.tagger.predict([text])[0]
        return [RecognizerResult(s.type, s.start, s.end, s.score) for s in spans
                if s.type in entities]


def mrn_recognizer() -> PatternRecognizer:
    """Medical record numbers after a keyword (strong), bare 7-10 digit runs (weak)."""
    return PatternRecognizer(
        supported_entity="MEDICALRECORD", name="MrnRecognizer",
        patterns=[
            # The lookahead repeats the value's start: without it the variable-width
            # lookbehind is tried at every character of the note (3x slower, same matches).
            Pattern("mrn after keyword",
                    rf"(?={MRN_VALUE_START})(?<=\b(?:{MRN_KEYWORDS})\s*[:#]?\s*){MRN_VALUE}", 0.85),
            Pattern("bare long number", r"\b\d{7,10}\b", 0.3),
        ],
        context=["mrn", "record", "unit", "chart", "id", "number", "hospital"],
    )


def age_recognizer() -> PatternRecognizer:
    """Ages over 89 (Safe Harbor item C): "93-year-old", "age 95", "ninety-one yo"."""
    unit = r"(?=\s*-?\s*(?:y/?o\b|yo\b|y\.o\.|years?\b|yrs?\b|y\b|year-old))"
    return PatternRecognizer(
        supported_entity="AGE", name="AgeOver89Recognizer",
        patterns=[
            Pattern("age>89 with unit", rf"\b(?:9\d|1[01]\d){unit}", 0.85),
            Pattern("age>89 after keyword", r"(?<=\bage[sd]?\s*[:=]?\s*)(?:9\d|1[01]\d)\b", 0.85),
            Pattern("age>89 in words", rf"\b(?:ninety(?:-[a-z]+)?|one hundred(?: [a-z-]+)?)"
                                       rf"{unit}", 0.7),
        ],
        context=["age", "old", "yo", "year"],
    )


def ssn_shape_recognizer() -> PatternRecognizer:
    """Any SSN-shaped string, including the test values Presidio's SSN recognizer rejects."""
    return PatternRecognizer(
        supported_entity="SSN", name="SsnShapeRecognizer",
        patterns=[Pattern("ssn dashed", r"\b\d{3}-\d{2}-\d{4}\b", 0.6),
                  Pattern("ssn spaced", r"\b\d{3}\s\d{2}\s\d{4}\b", 0.4)],
        context=["ssn", "social", "security"],
    )


def phone_shape_recognizer() -> PatternRecognizer:
    """US phone/fax/pager shapes, including numbers ``phonenumbers`` rejects as invalid
    (made-up area codes are still someone's identifier-shaped string)."""
    sep = r"[-.\s/]"  # \s: hard line wraps land inside numbers too
    return PatternRecognizer(
        supported_entity="PHONE", name="PhoneShapeRecognizer",
        patterns=[
            Pattern("us phone", rf"(?:\+?1{sep}?)?(?:\(\d{{3}}\)\s*|\b\d{{3}}{sep})"
                                rf"\d{{3}}[-.\s]\d{{4}}(?:\s*(?:x|ext\.?)\s*\d{{1,5}})?\b", 0.6),
            Pattern("bare 10 digits", r"\b\d{10}\b", 0.2),
            Pattern("extension", r"(?<=\b(?:x|ext\.?|pager|beeper)\s*#?\s*)\d{4,5}\b", 0.3),
        ],
        context=["phone", "tel", "telephone", "call", "cell", "mobile", "pager", "paged", "page",
                 "fax", "contact", "line", "number"],
    )


def site_recognizer(pattern: SitePattern) -> PatternRecognizer:
    return PatternRecognizer(
        supported_entity=pattern.type, name=f"site:{pattern.name}",
        patterns=[Pattern(pattern.name, pattern.regex, pattern.score)],
        context=list(pattern.context) or None,
    )


def fedmed_rule_recognizers(site_patterns: Sequence[SitePattern] = ()) -> list[EntityRecognizer]:
    """Our rule recognizers plus one per site pattern."""
    return [mrn_recognizer(), age_recognizer(), ssn_shape_recognizer(),
            phone_shape_recognizer(), *(site_recognizer(p) for p in site_patterns)]
