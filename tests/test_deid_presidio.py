"""Presidio offline: our tagger, Presidio's patterns, MRN/age/SSN/site rules, combined."""

from __future__ import annotations

import os

import pytest

from fedmed.deid.config import DeidConfig, SitePattern
from fedmed.deid.presidio_engine import Detector
from fedmed.errors import ConfigError

NOTE = ("Pt seen 03/04/2021. MRN: 4455123. SSN 123-45-6789. Age 94 years. "
        "Call (617) 555-0143 or mail a.b@example.org. Lab ref LAB-778812. BP 120/80, HR 72.")


def _found(spans, text) -> dict[str, str]:
    return {text[s.start:s.end]: s.type for s in spans}


def test_rules_without_tagger_are_offline_and_recall_biased() -> None:
    assert os.environ["TLDEXTRACT_PUBLIC_SUFFIX_LIST_URLS"] == ""
    config = DeidConfig(engine="presidio", site_patterns=(
        SitePattern("lab accession", "IDNUM", r"\bLAB-\d{6}\b"),))
    found = _found(Detector(config).detect(NOTE), NOTE)
    assert found.get("4455123") == "MEDICALRECORD"
    assert found.get("123-45-6789") == "SSN"  # a "known fake" Presidio alone would skip
    assert found.get("94") == "AGE"
    assert found.get("(617) 555-0143") == "PHONE" and found.get("a.b@example.org") == "EMAIL"
    assert found.get("LAB-778812") == "IDNUM"
    assert "120/80" not in found and "72" not in found


def test_combined_engine_reports_versions_and_covers_names() -> None:
    detector = Detector()
    text = "Discussed with Dr. Maria Lopez; patient John Carter, MRN 4455123."
    found = _found(detector.detect(text), text)
    assert "Maria Lopez" in found and "John Carter" in found
    v = detector.versions
    assert v["engine"] == "combined" and v["tagger"]["name"] == "bilstm-crf"
    assert v["rules"] and v["presidio"]


def test_config_validation() -> None:
    with pytest.raises(ConfigError):
        DeidConfig(engine="magic")
    with pytest.raises(ConfigError):
        SitePattern("x", "NOT_A_TYPE", r"\d")
    with pytest.raises(ConfigError):
        DeidConfig.from_dict({"engin": "combined"})
    cfg = DeidConfig.from_dict({"mode": "redact", "site_patterns": [
        {"name": "n", "type": "IDNUM", "regex": r"X\d+", "context": ["ref"]}]})
    assert cfg.site_patterns[0].context == ("ref",)


def _notes(n: int, seed: int) -> list[str]:
    from fedmed.deid.corpus import generate

    return [d.text for d in generate(n, seed=seed, split="test")]


def test_nlp_artifacts_equal_a_spacy_pipeline_with_a_lemma_component() -> None:
    """Lemmas from token offsets and cached keyword tests give Presidio the same artifacts
    as running ``lemma_ = lower_`` over every spaCy token (what this engine did before)."""
    import spacy
    from presidio_analyzer.nlp_engine import NlpArtifacts

    from fedmed.deid.presidio_engine import BlankSpacyNlpEngine

    engine = BlankSpacyNlpEngine()
    engine.load()
    reference = spacy.blank("en")
    texts = [*_notes(8, 780), NOTE, "", "  \n", "İSTANBUL MRN:12 \n\n x", "a\u00a0b\tc\r\nd"]
    for text in texts:
        doc = reference(text)
        lemmas = [t.lower_ for t in doc]
        got = engine.process_text(text, "en")
        assert got.lemmas == lemmas
        assert got.tokens_indices == [t.idx for t in doc]
        assert [t.text for t in got.tokens] == [t.text for t in doc]
        assert list(got.keywords) == NlpArtifacts.set_keywords(engine, lemmas, "en")


def test_context_scores_equal_presidio_enhancer() -> None:
    from presidio_analyzer.context_aware_enhancers import LemmaContextAwareEnhancer

    detector = Detector(DeidConfig(engine="presidio", workers=1))
    analyzer = detector.analyzer
    recognizers = analyzer.registry.get_recognizers(language="en", all_fields=True)
    entities = analyzer.get_supported_entities("en")
    boosted = 0
    for text in [*_notes(6, 781), NOTE]:
        artifacts = analyzer.nlp_engine.process_text(text, "en")
        raw = []
        for rec in recognizers:
            for r in rec.analyze(text=text, entities=entities, nlp_artifacts=artifacts) or []:
                r.recognition_metadata = {"recognizer_name": rec.name,
                                          "recognizer_identifier": rec.id}
                raw.append(r)
        before = sum(r.score for r in raw)
        expected = LemmaContextAwareEnhancer().enhance_using_context(
            text, raw, artifacts, recognizers)
        boosted += sum(r.score for r in expected) > before
        got = analyzer.context_aware_enhancer.enhance_using_context(
            text, raw, artifacts, recognizers)

        def key(r):
            return (r.start, r.end, r.entity_type, r.recognition_metadata["recognizer_name"])

        assert sorted((key(r), r.score) for r in got) == \
            sorted((key(r), r.score) for r in expected)
    assert boosted > 0  # the notes do exercise context words


def test_worker_processes_give_the_same_spans() -> None:
    from fedmed.deid.presidio_engine import POOL_MIN_NOTES

    texts = _notes(POOL_MIN_NOTES, 782)
    alone = Detector(DeidConfig(workers=1))
    pooled = Detector(DeidConfig(workers=2))
    try:
        assert pooled.start_workers() == 2 and len(pooled.worker_pids) == 2
        assert pooled.detect_batch(texts) == alone.detect_batch(texts)
    finally:
        pooled.close()
    assert pooled.worker_pids == []
