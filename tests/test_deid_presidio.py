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
