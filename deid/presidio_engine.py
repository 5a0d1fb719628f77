"""PHI detection: Presidio's AnalyzerEngine, offline, with our tagger and rules.

Offline (docs/architecture.md § Offline components): a plain ``AnalyzerEngine()`` downloads
``en_core_web_lg``. Here the NLP engine is a ``SpacyNlpEngine`` subclass on
``spacy.blank("en")`` whose lemmas are the lower-cased tokens (Presidio's context enhancer
compares lemmas; without lemmas context words never boost a score), ``SpacyRecognizer`` is
never added, and ``TLDEXTRACT_PUBLIC_SUFFIX_LIST_URLS`` is emptied before Presidio is
imported (the e-mail/URL recognizers would otherwise fetch the public-suffix list).

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
import ctypes  # noqa: E402
import importlib.metadata  # noqa: E402
import re  # noqa: E402
import warnings  # noqa: E402
from collections.abc import Callable, Iterator, Sequence  # noqa: E402
from functools import lru_cache  # noqa: E402
from typing import Any  # noqa: E402

import spacy  # noqa: E402
from presidio_analyzer import (  # noqa: E402
    AnalyzerEngine,
    EntityRecognizer,
    RecognizerRegistry,
    RecognizerResult,
)
from presidio_analyzer.context_aware_enhancers import (  # noqa: E402
    ContextAwareEnhancer,
    LemmaContextAwareEnhancer,
)
from presidio_analyzer.nlp_engine import (  # noqa: E402
    NerModelConfiguration,
    NlpArtifacts,
    SpacyNlpEngine,
)
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

from fedmed.deid.config import DeidConfig  # noqa: E402
from fedmed.deid.guards import GUARDS_VERSION, add_names, guard  # noqa: E402
from fedmed.deid.guards import warm as warm_guards  # noqa: E402
from fedmed.deid.phi import Span, merge_overlapping  # noqa: E402
from fedmed.deid.recognizers import (  # noqa: E402
    PRESIDIO_TO_SUBTYPE,
    RULES_VERSION,
    TaggerRecognizer,
    fedmed_rule_recognizers,
)
from fedmed.deid.tagger import DECODER_VERSION, Tagger  # noqa: E402
from fedmed.deid.taggers import load_tagger  # noqa: E402
from fedmed.deid.tokens import windows  # noqa: E402
from fedmed.deid.workers import WorkerError, WorkerPool  # noqa: E402

_TRAILING = ".,;:!?)]}'\""
PRESIDIO_VERSION = importlib.metadata.version("presidio-analyzer")


KEYWORD_CACHE = 200_000
"""Distinct lemmas whose keyword test is remembered (numbers and names never repeat)."""


class KeywordList(list[str]):
    """Presidio's per-note keyword list with a hashed ``in``.

    The context enhancer asks ``lemma in keywords`` for every word it walks back over; on
    a list of a 2,000-character note's ~500 keywords that is a linear scan each time.
    Same contents, same order, same answers.
    """

    def __init__(self, items: list[str]) -> None:
        super().__init__(items)
        self._members = frozenset(items)

    def __contains__(self, item: object) -> bool:
        return item in self._members


class LowerLemmaNlpArtifacts(NlpArtifacts):
    """Presidio's ``NlpArtifacts``; its keyword filter is remembered per distinct lemma.

    Presidio decides for every token of every note whether its lemma is a keyword (a
    spaCy vocabulary look-up for stop word and punctuation each time). The answer depends
    on the string alone, so it is computed once per string (:attr:`BlankSpacyNlpEngine.
    keyword_parts`).
    """

    @staticmethod
    def set_keywords(nlp_engine: Any, lemmas: list[str], language: str) -> list[str]:
        parts = nlp_engine.keyword_parts
        out: list[str] = []
        for lemma in lemmas:
            kw = parts.get(lemma)
            if kw is None:
                kw = tuple(NlpArtifacts.set_keywords(nlp_engine, [lemma], language))
                if len(parts) < KEYWORD_CACHE:
                    parts[lemma] = kw
            out.extend(kw)
        return KeywordList(out)


class BisectContextEnhancer(LemmaContextAwareEnhancer):
    """Presidio's lemma context enhancer, made cheaper; the scores are the same.

    - Presidio scans every spaCy token for every result (a Python ``Token`` is built per
      step): on 2,000-character notes that was 40% of the detection time; here the match's
      token is found by bisection;
    - results of recognizers without context words (the tagger: ~30 per note) are never
      enhanced, so they are passed through untouched;
    - Presidio deep-copies every result before raising scores (a tenth of the detection
      time, ~1,400 ``deepcopy`` calls per note). The results come fresh from this
      ``analyze`` call and nothing else holds them, so they are raised in place, with
      Presidio's own word extraction, matching and score rule
      (``tests/test_deid_presidio.py`` compares with Presidio's enhancer).
    """

    def __init__(self) -> None:
        super().__init__()
        self._doc: Any = None
        self._ends: list[int] = []

    def enhance_using_context(self, text: str, raw_results: list[RecognizerResult],
                              nlp_artifacts: Any, recognizers: list[EntityRecognizer],
                              context: list[str] | None = None) -> list[RecognizerResult]:
        by_id = {r.id: r for r in recognizers if r.context}
        key = RecognizerResult.RECOGNIZER_IDENTIFIER_KEY
        todo = [r for r in raw_results if (r.recognition_metadata or {}).get(key) in by_id]
        rest = [r for r in raw_results if (r.recognition_metadata or {}).get(key) not in by_id]
        if nlp_artifacts is None:
            return todo + rest
        extra = [word.lower() for word in context or []]
        for result in todo:
            if result.recognition_metadata.get(RecognizerResult.IS_SCORE_ENHANCED_BY_CONTEXT_KEY):
                continue
            words = self._extract_surrounding_words(
                nlp_artifacts=nlp_artifacts, word=text[result.start:result.end],
                start=result.start)
            words.extend(extra)
            recognizer = by_id[result.recognition_metadata[key]]
            support = self._find_supportive_word_in_context(words, recognizer.context,
                                                            self.context_matching_mode)
            if support:
                result.score = min(max(result.score + self.context_similarity_factor,
                                       self.min_score_with_context_similarity),
                                   ContextAwareEnhancer.MAX_SCORE)
                result.analysis_explanation.set_supportive_context_word(support)
                result.analysis_explanation.set_improved_score(result.score)
        return todo + rest

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


class RegroupingAnalyzerEngine(AnalyzerEngine):
    """Presidio's ``AnalyzerEngine`` with a cheaper first step of context enhancement.

    Presidio first gives each recognizer its own results (to its
    ``enhance_using_context``), scanning all results twice per recognizer. None of the
    recognizers here overrides that hook, so the step only regroups the results by
    recognizer: done here with one stable sort, same order, same results.
    """

    def _enhance_using_context(self, text: str, raw_results: list[RecognizerResult],
                               nlp_artifacts: NlpArtifacts,
                               recognizers: list[EntityRecognizer],
                               context: list[str] | None = None) -> list[RecognizerResult]:
        if any(type(r).enhance_using_context is not EntityRecognizer.enhance_using_context
               for r in recognizers):
            return super()._enhance_using_context(text, raw_results, nlp_artifacts,
                                                  recognizers, context)
        order = {r.id: i for i, r in enumerate(recognizers)}
        key = RecognizerResult.RECOGNIZER_IDENTIFIER_KEY
        grouped = sorted((r for r in raw_results if r.recognition_metadata[key] in order),
                         key=lambda r: order[r.recognition_metadata[key]])
        return self.context_aware_enhancer.enhance_using_context(
            text=text, raw_results=grouped, nlp_artifacts=nlp_artifacts,
            recognizers=recognizers, context=context)


class BlankSpacyNlpEngine(SpacyNlpEngine):
    """Presidio's spaCy engine on ``spacy.blank("en")``: tokens and lemmas, no NER, offline.

    A blank pipeline has no lemmatizer; the lemma of a token is its lower-cased text
    (spaCy's ``lower_``). Only the tokenizer runs: the lemmas are taken from the token
    offsets in one array call instead of a pipeline component that visits every token
    as a Python ``Token`` (which cost as much as tokenising).
    """

    def __init__(self) -> None:
        super().__init__(
            models=[{"lang_code": "en", "model_name": "blank:en"}],
            ner_model_configuration=NerModelConfiguration(
                model_to_presidio_entity_mapping={}, labels_to_ignore=[]),
        )
        self.keyword_parts: dict[str, tuple[str, ...]] = {}

    def load(self) -> None:
        self.nlp = {"en": spacy.blank("en")}

    def process_text(self, text: str, language: str) -> NlpArtifacts:
        doc = self.nlp[language].make_doc(text)
        offsets = doc.to_array([IDX, LENGTH]).tolist() if len(doc) else []
        return LowerLemmaNlpArtifacts(
            entities=[], tokens=doc, tokens_indices=[i for i, _ in offsets],
            lemmas=[text[i:i + n].lower() for i, n in offsets], nlp_engine=self,
            language=language)


class NoNlpArtifacts(NlpArtifacts):
    """Artifacts with no tokens, for a registry whose recognizers use no context words:
    then nothing reads the tokens and the spaCy pass is skipped (the tagger engine)."""

    def __init__(self) -> None:
        super().__init__(entities=[], tokens=None, tokens_indices=[], lemmas=[],
                         nlp_engine=None, language="en")


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


AUTO_MAX_WORKERS = 4
"""``workers = 0`` uses one detection process per usable core, but no more than this
(each holds its own tagger and Presidio, ~0.3 GB)."""
POOL_START_NOTES = 256
"""A batch this large starts the workers. Each imports torch, spaCy and Presidio and loads
the checkpoint (4-9 s); at ~30 notes/s per process two workers save N/60 s on N notes, so the
start-up pays from a few hundred notes, and a long-running node keeps its workers."""
POOL_MIN_NOTES = 16
"""Once the workers run, batches from this size on are split over them."""
POOL_START_CHARS = POOL_START_NOTES * 2_000
"""A note this long starts the workers too: its windows are as much work as
:data:`POOL_START_NOTES` notes of ~2,000 characters."""
WINDOW_OVERLAP_CHARS = 2_000
"""Consecutive detection windows of a long note share this many characters (at most a
quarter of ``deid.window_chars``); see :meth:`Detector.detect_batch`."""


def window_overlap(window_chars: int) -> int:
    """Characters shared by consecutive windows of ``window_chars``."""
    return min(WINDOW_OVERLAP_CHARS, window_chars // 4)


def owned_ranges(cuts: Sequence[tuple[int, int]]) -> list[tuple[int, int]]:
    """For each window ``[a, b)``, the characters it answers for: from the middle of its
    overlap with the previous window to the middle of its overlap with the next, so every
    character belongs to exactly one window and sits at least half an overlap from that
    window's inner edges (the rule of :func:`fedmed.deid.tokens.owner_window`)."""
    bounds = [cuts[0][0]] + [(cuts[w + 1][0] + cuts[w][1]) // 2
                             for w in range(len(cuts) - 1)] + [cuts[-1][1]]
    return list(zip(bounds[:-1], bounds[1:], strict=True))


def _malloc_trim() -> Callable[[int], int] | None:
    """glibc's ``malloc_trim`` (None with another C library)."""
    try:
        return ctypes.CDLL(None).malloc_trim  # type: ignore[no-any-return]
    except (OSError, AttributeError):
        return None


_MALLOC_TRIM = _malloc_trim() if os.environ.get("FEDMED_DEID_MALLOC_TRIM") != "0" else None
"""``FEDMED_DEID_MALLOC_TRIM=0`` turns :func:`release_freed_memory` off, to measure what it
saves (``bench/deid_throughput.py --window-memory MB --no-malloc-trim``)."""


def release_freed_memory() -> None:
    """Give the memory freed by detecting a window back to the system.

    Why: with glibc, the blocks freed after each window (the tagger's tensors, spaCy's
    docs, Presidio's results) stay in malloc's fragmented free space, so the resident memory
    of a long note crept up with its length while the Python heap stayed at ~10 MB
    (``bench/deid_throughput.py --window-memory 2.5 --no-malloc-trim``); with
    ``malloc_trim(0)`` after each window it stays flat (docs/deid.md *Long notes*). It
    takes milliseconds, next to seconds for a window. A no-op without glibc."""
    if _MALLOC_TRIM is not None:
        _MALLOC_TRIM(0)


def detection_workers(config: DeidConfig) -> int:
    """How many processes detect a large batch under ``config`` (``deid.workers``)."""
    if config.workers:
        return config.workers
    usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return max(1, min(usable or 1, AUTO_MAX_WORKERS))


class Detector:
    """``detect(text) -> list[Span]``: the de-id stage's PHI detector.

    Build it once per process (loading the tagger and Presidio takes ~1 s) and reuse it.

    Batches are split over ``deid.workers`` processes (default: one per usable core;
    :mod:`fedmed.deid.workers` says why processes and how); the spans are the same as in
    one process. The workers start with the first batch of :data:`POOL_START_NOTES` notes or
    on :meth:`start_workers`, then take every batch of :data:`POOL_MIN_NOTES` or more, and
    live until :meth:`close` or exit. A detector built around a tagger *object* (not a
    checkpoint named in the settings) always runs in-process; so does one whose workers
    failed (with a warning).

    Long notes (over ``deid.window_chars``, default 100,000 characters; spaCy refuses
    more than 1,000,000 at once) are detected in windows of that size overlapping by
    :func:`window_overlap` characters (2,000), a few windows at a time: memory stays that
    of one window whatever the note's length, and time grows linearly with it. A span is
    taken from the window in which it starts, owned as :func:`owned_ranges` says; a span
    crossing a window edge is therefore found whole in the window that owns its start
    (it lies at least 1,000 characters from that window's inner edges), and spans of
    neighbouring windows that still overlap are merged (:func:`merge_overlapping`).
    Notes up to the window size are detected exactly as before.
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
        if self._tagger_rec is not None and self.config.guards:
            warm_guards()  # not inside the first note's detection time
        recognizers: list[EntityRecognizer] = []
        if self._tagger_rec is not None:
            recognizers.append(self._tagger_rec)
        if self.config.engine != "tagger":
            recognizers += presidio_pattern_recognizers()
            recognizers += fedmed_rule_recognizers(self.config.site_patterns)
        nlp = BlankSpacyNlpEngine()
        nlp.load()
        registry = RecognizerRegistry(recognizers=recognizers, supported_languages=["en"])
        self.analyzer = RegroupingAnalyzerEngine(
            nlp_engine=nlp, registry=registry, supported_languages=["en"],
            context_aware_enhancer=BisectContextEnhancer())
        self._needs_nlp = any(r.context for r in recognizers)
        self.workers = detection_workers(self.config) if tagger is None else 1
        self._pool: WorkerPool | None = None

    @property
    def versions(self) -> dict[str, Any]:
        """What the de-id report records about the detector."""
        return {
            "engine": self.config.engine,
            "tagger": None if self.tagger is None else
            {"name": self.tagger.name, "version": self.tagger.version,
             "threshold": self.tagger.threshold, "decoder": DECODER_VERSION,
             "guards": GUARDS_VERSION if self.config.guards else None},
            "rules": RULES_VERSION, "presidio": PRESIDIO_VERSION,
            "pattern_threshold": self.config.pattern_threshold,
            "site_patterns": [p.name for p in self.config.site_patterns],
        }

    def detect(self, text: str) -> list[Span]:
        return self.detect_batch([text])[0]

    def detect_batch(self, texts: Sequence[str]) -> list[list[Span]]:
        limit = self.config.window_chars
        short = [i for i, t in enumerate(texts) if len(t) <= limit]
        if len(short) == len(texts):
            return self._detect_short(texts)
        out: list[list[Span]] = [[] for _ in texts]
        for i, spans in zip(short, self._detect_short([texts[i] for i in short]), strict=True):
            out[i] = spans
        for i, text in enumerate(texts):
            if len(text) > limit:
                out[i] = self._detect_long(text)
        return out

    def _detect_short(self, texts: Sequence[str]) -> list[list[Span]]:
        if self.workers > 1 and len(texts) >= POOL_MIN_NOTES:
            if len(texts) >= POOL_START_NOTES:
                self.start_workers()
            if self._pool is not None:
                try:
                    return self._pool.detect(texts)
                except WorkerError as e:
                    self._give_up_workers(e)
        return self._detect_here(texts)

    def _detect_here(self, texts: Sequence[str]) -> list[list[Span]]:
        if self._tagger_rec is not None:
            self._tagger_rec.prime([t for t in texts if t.strip()])
        return [self._detect_one(t) for t in texts]

    def _detect_long(self, text: str) -> list[Span]:
        """Spans of a note longer than one window (see the class docstring)."""
        found = self.detect_windows(len(text), lambda a, b: text[a:b])
        return merge_overlapping([s for _, spans in found for s in spans])

    def detect_windows(self, n: int, window_text: Callable[[int, int], str]
                       ) -> Iterator[tuple[int, list[Span]]]:
        """The windows of a note of ``n`` characters, in order: for each, the end of the
        characters it owns and the spans that start there (note offsets; see the class
        docstring). ``window_text(a, b)`` returns ``text[a:b]``, asked for with ``a`` never
        decreasing, so the note can be read forward once (:mod:`fedmed.deid.stream`).
        Merging the spans of all windows (:func:`merge_overlapping`) gives the note's spans.
        """
        size = self.config.window_chars
        cuts = windows(n, size, window_overlap(size))
        owned = owned_ranges(cuts)
        if self.workers > 1 and n >= POOL_START_CHARS:
            self.start_workers()
        first = 0
        while first < len(cuts):
            # one window per process at a time, two per worker: bounded memory
            group = 2 * self._pool.size if self._pool is not None else 1
            part = range(first, min(first + group, len(cuts)))
            pieces = [window_text(*cuts[w]) for w in part]
            found = self._detect_here(pieces) if self._pool is None else None
            if found is None:
                try:
                    found = self._pool.detect(pieces)  # type: ignore[union-attr]
                except WorkerError as e:
                    self._give_up_workers(e)
                    found = self._detect_here(pieces)
            release_freed_memory()
            for w, piece_spans in zip(part, found, strict=True):
                offset, (lo, hi) = cuts[w][0], owned[w]
                yield hi, [Span(s.start + offset, s.end + offset, s.type, s.score)
                           for s in piece_spans if lo <= s.start + offset < hi]
            first = part.stop

    def start_workers(self) -> int:
        """Start the worker processes now (else the first very large batch does).

        Returns how many processes detect a large batch (1 = this one).
        """
        if self.workers > 1 and self._pool is None:
            try:
                self._pool = WorkerPool(self.config, self.workers)
            except WorkerError as e:
                self._give_up_workers(e)
        return self._pool.size if self._pool is not None else 1

    @property
    def worker_pids(self) -> list[int]:
        """Process ids of the running workers (none before :meth:`start_workers`)."""
        return self._pool.pids if self._pool is not None else []

    def close(self) -> None:
        """Stop the worker processes, if any."""
        if self._pool is not None:
            self._pool.close()
            self._pool = None

    def _give_up_workers(self, error: WorkerError) -> None:
        warnings.warn(f"{error}; detecting in this process from now on", stacklevel=3)
        self.close()
        self.workers = 1

    def _detect_one(self, text: str) -> list[Span]:
        if not text.strip():
            return []
        spans: list[Span] = []
        tagged: list[Span] = []
        artifacts = None if self._needs_nlp else NoNlpArtifacts()
        for r in self.analyzer.analyze(text, language="en", nlp_artifacts=artifacts):
            from_tagger = r.recognition_metadata and r.recognition_metadata.get(
                "recognizer_name", "").startswith("tagger:")
            if not from_tagger and r.score < self.config.pattern_threshold:
                continue
            subtype = PRESIDIO_TO_SUBTYPE.get(r.entity_type, r.entity_type)
            found = Span(r.start, r.end, subtype, float(r.score))
            if from_tagger:  # tagger spans already sit on token boundaries
                tagged.append(found)
                continue
            span = _trim(text, found)
            if span is not None:
                spans.append(span)
        spans += guard(text, tagged) if self.config.guards else tagged
        if self.config.guards and self._tagger_rec is not None:
            spans = add_names(text, merge_overlapping(spans))
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
