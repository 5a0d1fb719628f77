"""Admission gate: residual check quarantines, canaries never leave, reports feed the audit."""

from __future__ import annotations

import json

import pytest

from fedmed.deid.gate import Gate, admit_texts
from fedmed.deid.phi import Document

CANARIES = ("Zebulon Quackenbush", "99887766", "078-05-1120", "zq@quackenbush-mail.org",
            "(617) 555-0143")
CANARY_NOTE = (
    "DISCHARGE SUMMARY\nPatient: Zebulon Quackenbush    MRN: 99887766\n"
    "SSN 078-05-1120. Admitted 04/02/2021, discharged 04/09/2021.\n"
    "Mr. Quackenbush is a 93 year old retired pilot. Email zq@quackenbush-mail.org, "
    "home phone (617) 555-0143.\nFollow up with Dr. Ellen Ward.\n"
)


class NoDetector:
    """A detector that finds nothing: whatever PHI is in the note stays there."""

    versions = {"engine": "none"}

    def detect_batch(self, texts: list[str]) -> list[list]:
        return [[] for _ in texts]


def test_residual_ssn_is_quarantined_not_released(tmp_path) -> None:
    reports: list[dict] = []
    note = Document("n1", "Seen today. SSN 123-45-6789 on file.", meta={"patient_id": "p1"})
    clean = Document("n2", "Afebrile, feeling better.", meta={"patient_id": "p1"})
    result = admit_texts([note, clean], tmp_path, detector=NoDetector(), audit=reports.append)
    assert [d.text for d in result.released] == ["Afebrile, feeling better."]
    assert len(result.quarantined) == 1
    reason_files = list((tmp_path / "quarantine").glob("*.reason.json"))
    assert len(reason_files) == 1
    reason = json.loads(reason_files[0].read_text())
    assert reason["findings"][0]["kind"] == "SSN"
    assert list((tmp_path / "quarantine").glob("*.txt"))  # the note stays at the site
    report = reports[0]
    assert report["residual_check"]["failed"] == 1 and report["residual_check"]["passed"] == 1
    assert "123-45-6789" not in json.dumps(report)


def test_bad_inputs_are_quarantined(tmp_path) -> None:
    result = Gate(tmp_path, detector=NoDetector()).admit_texts(
        ["", "   ", "binary\x00\x01\x02 data", "fine text"])
    assert [d.text for d in result.released] == ["fine text"]
    assert len(result.quarantined) == 3
    assert {q["reason"].split(" ")[0] for q in result.quarantined} == {"empty", "binary"}


@pytest.mark.parametrize("mode", ["surrogate", "redact"])
def test_planted_canary_never_leaves(tmp_path, mode: str) -> None:
    from fedmed.deid.config import DeidConfig

    reports: list[dict] = []
    gate = Gate(tmp_path, DeidConfig(mode=mode), audit=reports.append)
    result = gate.admit_texts([Document("canary", CANARY_NOTE, meta={"patient_id": "zq"})])
    assert len(result.released) == 1, result.quarantined
    out = result.released[0]
    outputs = [out.text, out.doc_id, json.dumps(out.meta), json.dumps(reports),
               json.dumps(result.report)]
    for report_file in (tmp_path / "deid" / "reports").glob("*.json"):
        outputs.append(report_file.read_text())
    for canary in CANARIES:
        for piece in (canary, canary.split()[-1]):
            assert all(piece not in o for o in outputs), (canary, out.text)
    report = reports[0]
    assert report["phi_counts_by_category"]["NAME"] >= 2
    assert report["detector"]["tagger"]["version"].startswith("bilstm_crf.pt@")
    assert report["residual_check"]["passed"] == 1
    assert report["site_key_fingerprint"] and "quarantine" in report
    if mode == "surrogate":
        assert "90+" in out.text
