"""Fuzzing every parser a node or an auditor runs (issue 14, item 5).

Each test starts from a valid file, mutates it (``tests/fuzz_strategies.py``) and asserts
only that the public reader returns a result or raises a fedmed error whose one-line
message names the file — never another exception type, never a hang, never a large
allocation. ``FEDMED_FUZZ=long`` (``make fuzz``) runs thousands of examples per parser;
the default profile runs a few in ``make test``. Every crash the fuzzing found is kept as an
``@example`` (or a plain test) below, next to the parser it broke.
"""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import tomli_w
from fuzz_strategies import FUZZ, mutated, mutated_document, mutated_text, parse_cleanly, write
from hypothesis import example, given
from hypothesis import strategies as st

from fedmed.errors import FedmedError

pytestmark = pytest.mark.timeout(600)


@pytest.fixture(autouse=True, scope="module")
def _imported() -> None:
    """The readers' lazy imports (MONAI, wfdb, the de-id stack: ~25 s on a busy machine),
    made once before any parser call is timed."""
    import monai.transforms  # noqa: F401
    import wfdb  # noqa: F401

    import fedmed.data.icd_notes  # noqa: F401
    import fedmed.deid.gate  # noqa: F401


# ------------------------------------------------------------------ de-id note formats

NOTE = (
    "Mr. John Smith (MRN 123456) was seen on 03/14/2021 by Dr. Ada Jones.\n"
    "Phone 617-555-0199. He is 67 years old. Plan: aspirin 81 mg daily.\n"
)


def _i2b2_seed() -> str:
    from fedmed.deid.io import i2b2_xml
    from fedmed.deid.phi import Document, Span

    spans = [Span(4, 14, "PATIENT"), Span(20, 26, "MEDICALRECORD"), Span(40, 50, "DATE")]
    return i2b2_xml(Document("note", NOTE, spans))


I2B2 = _i2b2_seed()
BILLION_LAUGHS = (
    '<?xml version="1.0"?>\n<!DOCTYPE deIdi2b2 [\n <!ENTITY a "aaaaaaaaaaaaaaaaaaaaaaaa">\n'
    + "".join(
        f' <!ENTITY {chr(98 + i)} "{("&" + chr(97 + i) + ";") * 10}">\n' for i in range(9)
    )
    + "]>\n<deIdi2b2><TEXT>&j;</TEXT><TAGS/></deIdi2b2>\n"
).encode()
QUADRATIC_BLOWUP = (
    '<?xml version="1.0"?>\n<!DOCTYPE deIdi2b2 [<!ENTITY a "' + "x" * 50_000 + '">]>\n'
    "<deIdi2b2><TEXT>" + "&a;" * 2_000 + "</TEXT><TAGS/></deIdi2b2>\n"
).encode()


def _external_entity(target: Path) -> bytes:
    return (
        f'<?xml version="1.0"?>\n<!DOCTYPE deIdi2b2 [<!ENTITY leak SYSTEM "file://{target}">]>\n'
        "<deIdi2b2><TEXT>before &leak; after</TEXT><TAGS/></deIdi2b2>\n"
    ).encode()


@FUZZ
@given(data=mutated_text(I2B2))
@example(data=BILLION_LAUGHS)
@example(data=QUADRATIC_BLOWUP)
@example(data=I2B2.replace('start="4"', 'start="' + "9" * 5000 + '"').encode())
@example(data=b"<deIdi2b2>" * 10_000)
def test_i2b2_xml(tmp_path: Path, data: bytes) -> None:
    from fedmed.deid.io import read_notes

    path = write(tmp_path / "note.xml", data)
    parse_cleanly(lambda: read_notes(path), path)


def test_i2b2_external_entities_are_never_resolved(tmp_path: Path) -> None:
    from fedmed.deid.io import read_notes

    secret = write(tmp_path / "secret.txt", "PATIENT-SECRET-42")
    path = write(tmp_path / "note.xml", _external_entity(secret))
    outcome = parse_cleanly(lambda: read_notes(path), path)
    assert isinstance(outcome, FedmedError)
    assert "PATIENT-SECRET-42" not in str(outcome)


def test_i2b2_entity_expansion_is_refused(tmp_path: Path) -> None:
    from fedmed.deid.io import read_notes

    path = write(tmp_path / "note.xml", BILLION_LAUGHS)
    assert isinstance(parse_cleanly(lambda: read_notes(path), path), FedmedError)


@FUZZ
@given(data=st.one_of(mutated_text(NOTE), st.binary(max_size=256)))
@example(data=b"\x00" * 64)
@example(data=b"\xef\xbb\xbf")
def test_plain_text_note(tmp_path: Path, data: bytes) -> None:
    from fedmed.deid.io import read_notes

    path = write(tmp_path / "note.txt", data)
    parse_cleanly(lambda: read_notes(path), path)


NOTES_CSV = 'id,patient_id,text\n1,p1,"Seen 03/14/2021, ""stable"".\nNo change."\n2,,Plain.\n'


CSV_EXTRA_FIELD = b"id,text\n1,a\n2,b,c\n"


@FUZZ
@given(data=mutated_text(NOTES_CSV))
@example(data=b'id,text\n1,"unterminated\n')
@example(data=b"\xef\xbb\xbf")
def test_csv_notes(tmp_path: Path, data: bytes) -> None:
    from fedmed.deid.io import read_notes

    path = write(tmp_path / "notes.csv", data)
    parse_cleanly(lambda: read_notes(path), path)


def test_csv_notes_extra_field(tmp_path: Path) -> None:
    from fedmed.deid.io import read_notes

    path = write(tmp_path / "notes.csv", CSV_EXTRA_FIELD)
    parse_cleanly(lambda: read_notes(path), path)


NOTES_JSONL = (
    json.dumps({"text": NOTE, "patient_id": "p1"})
    + "\n\n"
    + json.dumps({"text": "Plain.", "patient_id": None, "n": 1.5})
    + "\n"
)


@FUZZ
@given(data=mutated_text(NOTES_JSONL))
@example(data=b'{"text": "x", "patient_id": NaN}\n')
def test_jsonl_notes(tmp_path: Path, data: bytes) -> None:
    from fedmed.deid.io import read_notes

    path = write(tmp_path / "notes.jsonl", data)
    parse_cleanly(lambda: read_notes(path), path)


def test_jsonl_notes_deep_nesting(tmp_path: Path) -> None:
    from fedmed.deid.io import read_notes

    path = write(tmp_path / "notes.jsonl", b"[" * 100_000 + b"\n")
    parse_cleanly(lambda: read_notes(path), path)


# ------------------------------------------------------------------ ICD site notes

ICD_CODES = ("I10", "E11.9", "J45.909")


def _icd_seed() -> str:
    records = [
        {"id": "n1", "text": NOTE, "codes": ["I10"], "split": "train", "patient_id": "p1",
         "identifiers": ["John", "Smith", "123456"]},
        {"id": "n2", "text": "Asthma, well controlled.", "codes": ["J45.909", "I10"],
         "split": "test"},
    ]  # fmt: skip
    return "".join(json.dumps(r) + "\n" for r in records)


ICD_NOTES = _icd_seed()
ICD_RECORD = json.loads(ICD_NOTES.splitlines()[0])


@FUZZ
@given(
    data=st.one_of(
        mutated_text(ICD_NOTES),
        mutated_document(ICD_RECORD).map(
            lambda r: (json.dumps(r) + "\n" + ICD_NOTES.splitlines()[1] + "\n").encode()
        ),
    )
)
@example(data=b"[" * 100_000 + b"\n")
def test_icd_site_notes(tmp_path: Path, data: bytes) -> None:
    from fedmed.data.icd_notes import read_site_notes

    path = write(tmp_path / "notes.jsonl", data)
    parse_cleanly(lambda: read_site_notes(path, ICD_CODES), path)


# ------------------------------------------------------------------ UCI heart tables

HEART_ROWS = 24


def _heart_seed() -> str:
    from fedmed.tasks.heart import DATA_DIR, SITE_FILES

    lines = (DATA_DIR / SITE_FILES["cleveland"]).read_text().splitlines()
    return "\n".join(lines[:HEART_ROWS]) + "\n"


HEART = _heart_seed()


@FUZZ
@given(data=mutated_text(HEART))
def test_heart_table(tmp_path: Path, data: bytes) -> None:
    from fedmed.tasks.heart import SITE_FILES, HeartTask

    path = write(tmp_path / SITE_FILES["cleveland"], data)
    site = parse_cleanly(lambda: HeartTask().load_site("cleveland", tmp_path, 0), path)
    if not isinstance(site, FedmedError):
        features = site.train.tensors[0].numpy()  # type: ignore[attr-defined]
        assert np.isfinite(features).all()


# ------------------------------------------------------------------ ECG: WFDB, CSV, DICOM


def _wfdb_seed() -> tuple[bytes, bytes]:
    import tempfile

    import wfdb

    fs = 250
    t = np.arange(2 * fs) / fs
    signal = np.stack([np.sin(2 * np.pi * 1.2 * t), 0.5 * np.cos(2 * np.pi * 3 * t)], axis=1)
    with tempfile.TemporaryDirectory() as folder:
        wfdb.wrsamp("rec", fs=fs, units=["mV", "uV"], sig_name=["MLII", "V1"],
                    p_signal=signal, fmt=["212", "212"], write_dir=folder)  # fmt: skip
        return (Path(folder, "rec.hea").read_bytes(), Path(folder, "rec.dat").read_bytes())


WFDB_HEADER, WFDB_SIGNAL = _wfdb_seed()


@FUZZ
@given(header=mutated(WFDB_HEADER))
@example(header=WFDB_HEADER.replace(b" 500", b" 4000000000", 1))
def test_wfdb_header(tmp_path: Path, header: bytes) -> None:
    from fedmed.data.ecg_readers import read_ecg

    write(tmp_path / "rec.dat", WFDB_SIGNAL)
    path = write(tmp_path / "rec.hea", header)
    parse_cleanly(lambda: read_ecg(path), path)


@FUZZ
@given(signal=mutated(WFDB_SIGNAL, max_ops=2))
def test_wfdb_signal(tmp_path: Path, signal: bytes) -> None:
    from fedmed.data.ecg_readers import read_ecg

    write(tmp_path / "rec.hea", WFDB_HEADER)
    path = write(tmp_path / "rec.dat", signal)
    parse_cleanly(lambda: read_ecg(path), path)


ECG_CSV = "I,II\n" + "".join(f"{math.sin(i / 9):.3f},{math.cos(i / 7):.3f}\n" for i in range(40))


@FUZZ
@given(data=mutated_text(ECG_CSV))
def test_ecg_csv(tmp_path: Path, data: bytes) -> None:
    from fedmed.data.ecg_readers import read_ecg

    path = write(tmp_path / "ecg.csv", data)
    parse_cleanly(lambda: read_ecg(path, sampling_rate=100), path)


def _testdata(name: str) -> bytes:
    from pydicom.data import get_testdata_file

    return Path(get_testdata_file(name)).read_bytes()


# ------------------------------------------------------------------ DICOM images

CT_SMALL = _testdata("CT_small.dcm")
MR_SMALL = _testdata("MR_small.dcm")
PIXEL_DATA_OW = b"\xe0\x7f\x10\x00OW\x00\x00"  # (7FE0,0010) OW, then a 4-byte length


WAVEFORM_DATA_OW = b"\x00\x54\x10\x10OW\x00\x00"  # (5400,1010) OW, then a 4-byte length


def _claims_4_gib(data: bytes, element: bytes = PIXEL_DATA_OW) -> bytes:
    """The file with an element's length field set to 0xFFFFFFF0 (a corrupt length)."""
    at = data.index(element) + len(element)
    return data[:at] + b"\xf0\xff\xff\xff" + data[at + 4 :]


def _bad_pixel_spacing(data: bytes) -> bytes:
    """CT_small with PixelSpacing (a DS text) '0.661468\\0.661468' made ':.661468\\...'."""
    return data.replace(b"0.661468\\0.661468", b":.661468\\0.661468", 1)


def _unknown_meta_vr(data: bytes) -> bytes:
    """The file meta's MediaStorageSOPInstanceUID (0002,0003) with the unknown VR 'TI'."""
    return data.replace(b"\x02\x00\x03\x00UI", b"\x02\x00\x03\x00TI", 1)


def _unknown_vr(data: bytes) -> bytes:
    """The file with the VR of Manufacturer (0008,0070) changed to the unknown 'RS'."""
    return data.replace(b"\x08\x00\x70\x00LO", b"\x08\x00\x70\x00RS", 1)




@FUZZ
@given(data=mutated(_testdata("waveform_ecg.dcm")))
@example(data=_claims_4_gib(_testdata("waveform_ecg.dcm"), WAVEFORM_DATA_OW))
def test_dicom_ecg(tmp_path: Path, data: bytes) -> None:
    from fedmed.data.ecg_readers import read_ecg

    path = write(tmp_path / "ecg.dcm", data)
    parse_cleanly(lambda: read_ecg(path), path)


@FUZZ
@given(data=st.one_of(mutated(CT_SMALL), mutated(MR_SMALL)))
@example(data=_claims_4_gib(CT_SMALL))
@example(data=_unknown_vr(CT_SMALL))
@example(data=_bad_pixel_spacing(CT_SMALL))
@example(data=_unknown_meta_vr(CT_SMALL))
def test_dicom_image(tmp_path: Path, data: bytes) -> None:
    from fedmed.data.imaging_readers import read_image, to_model_input

    path = write(tmp_path / "image.dcm", data)
    volume = parse_cleanly(lambda: read_image(path), path)
    if not isinstance(volume, FedmedError):
        parse_cleanly(lambda: to_model_input(volume, 16), path)


def _header_deid(tmp_path: Path) -> Any:
    from fedmed.deid.dicom import DicomDeidentifier
    from fedmed.deid.sitekey import SiteKey

    deidentifier = DicomDeidentifier(SiteKey(b"\x5e" * 32))
    return lambda dataset: deidentifier.deidentify(dataset).dataset


@FUZZ
@given(data=st.one_of(mutated(CT_SMALL), mutated(MR_SMALL)))
@example(data=_unknown_vr(CT_SMALL))
@example(data=_unknown_meta_vr(CT_SMALL))
def test_dicom_header_deid(tmp_path: Path, data: bytes) -> None:
    """deid/dicom.py's profile on a damaged file, as the imaging readers run it."""
    from fedmed.data.imaging_readers import read_dicom

    path = write(tmp_path / "image.dcm", data)
    parse_cleanly(lambda: read_dicom(path, _header_deid(tmp_path)), path)


@FUZZ
@given(data=st.one_of(mutated(CT_SMALL), mutated(MR_SMALL)))
def test_dicom_gate(tmp_path: Path, data: bytes) -> None:
    """The de-id gate's profile and residual check on every damaged header that parses.

    The datasets are parsed as the imaging readers parse them (from memory, every element):
    the gate's own reading of a file path has the two findings kept below.
    """
    import io

    import pydicom

    from fedmed.deid.gate import Gate

    try:
        dataset = pydicom.dcmread(io.BytesIO(data))
        for _ in (*dataset.iterall(), *(dataset.file_meta or pydicom.Dataset()).iterall()):
            pass
    except Exception:  # noqa: BLE001 - not parseable: the readers' DataError, fuzzed above
        return
    gate = Gate(tmp_path / "home")
    parse_cleanly(lambda: gate.admit_dicom([dataset]), "dataset-0")


@pytest.mark.parametrize(
    "corrupt", [_claims_4_gib, _unknown_vr, _unknown_meta_vr],
    ids=["length-4GiB", "unknown-VR", "unknown-meta-VR"],
)
def test_dicom_gate_file(tmp_path: Path, corrupt: Any) -> None:
    from fedmed.deid.gate import Gate

    path = write(tmp_path / "in" / "image.dcm", corrupt(CT_SMALL))
    gate = Gate(tmp_path / "home")
    parse_cleanly(lambda: gate.admit_dicom([path]), path)


# ------------------------------------------------------------------ policy.toml


def _policy_document() -> dict[str, Any]:
    return {"epsilon": 8.0, "delta": 1e-5, "min_noise_multiplier": 0.7,
            "allowed_tasks": ["heart", "ecg"], "accountant": "rdp"}  # fmt: skip


def _policy_text() -> str:
    from fedmed.privacy.policy import Policy

    return Policy(8.0, 1e-5, 0.7, ("heart", "ecg"), "rdp").to_toml()


def _toml_or_skip(document: Any) -> bytes:
    try:
        return tomli_w.dumps(document).encode()
    except (TypeError, ValueError):  # a value TOML cannot hold (e.g. a top-level list)
        return tomli_w.dumps({"unwritable": 1}).encode()


@FUZZ
@given(
    data=st.one_of(
        mutated_text(_policy_text()),
        mutated_document(_policy_document(), toml=True).map(_toml_or_skip),
    )
)
@example(data=_policy_text().replace("epsilon = 8.0", "epsilon = 1" + "0" * 400).encode())
@example(data=_policy_text().replace("0.7", "1" + "0" * 400).encode())
@example(data=(_policy_text() + '"\\n" = 1\n').encode())
def test_policy_toml(tmp_path: Path, data: bytes) -> None:
    from fedmed.privacy.policy import load_policy

    path = write(tmp_path / "policy.toml", data)
    policy = parse_cleanly(lambda: load_policy(path), path)
    if not isinstance(policy, FedmedError):
        assert not math.isnan(policy.epsilon) and 0 < policy.delta < 1
        assert math.isfinite(policy.min_noise_multiplier) and policy.min_noise_multiplier >= 0


# ------------------------------------------------------------------ privacy ledger


def _ledger_document() -> dict[str, Any]:
    release = {
        "run": "r1", "round": 1, "task": "heart", "noise_multiplier": 1.1,
        "sample_rate": 0.05, "steps": 20, "delta": 1e-5, "accountant": "rdp",
        "epsilon_after": 0.42, "clip_norm": 1.0, "dataset": "ab" * 16,
        "time": "2026-01-01T00:00:00Z",
    }  # fmt: skip
    return {"format": "fedmed-ledger/1", "site": "boston",
            "releases": [release, {**release, "round": 2, "epsilon_after": None}]}  # fmt: skip


LEDGER = json.dumps(_ledger_document(), indent=1) + "\n"


def _ledger_with(field: str, value: str) -> bytes:
    document = _ledger_document()
    document["releases"][0][field] = "@"
    return json.dumps(document).replace('"@"', value).encode()


@FUZZ
@given(
    data=st.one_of(
        mutated_text(LEDGER),
        mutated_document(_ledger_document()).map(lambda d: json.dumps(d).encode()),
    )
)
@example(data=_ledger_with("noise_multiplier", "NaN"))
@example(data=_ledger_with("noise_multiplier", "Infinity"))
@example(data=_ledger_with("epsilon_after", "NaN"))
@example(data=_ledger_with("epsilon_after", "-1"))
@example(data=_ledger_with("clip_norm", "-Infinity"))
@example(data=_ledger_with("steps", "1" + "0" * 400))
@example(data=_ledger_with("sample_rate", "1" + "0" * 400))
@example(data=_ledger_with("round", "-3"))
@example(data=b"[" * 100_000)
def test_ledger(tmp_path: Path, data: bytes) -> None:
    from fedmed.privacy.ledger import Ledger

    path = write(tmp_path / "ledger.json", data)
    ledger = parse_cleanly(lambda: Ledger.load(path), path)
    if not isinstance(ledger, FedmedError):
        for release in ledger.releases:
            assert math.isfinite(release.noise_multiplier) and release.noise_multiplier >= 0
            assert math.isfinite(release.clip_norm) and release.clip_norm >= 0
            assert release.clip_norm > 0 or release.noise_multiplier == 0  # 0: a no-DP release
            assert release.epsilon_after >= 0 and release.round >= 0


# ------------------------------------------------------------------ audit logs


@pytest.fixture(scope="module")
def audit_log(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A valid three-entry log (with its .pub and .head) made by the real writer."""
    from fedmed.audit import AuditLog

    folder = tmp_path_factory.mktemp("audit")
    log = AuditLog.open(folder / "site.jsonl", folder / "keys", "boston")
    log.append("dp-release", {"round": 1, "epsilon": 0.4, "note": "ünïcode"})
    log.append("round", {"round": 1, "site_heads": {}})
    return folder / "site.jsonl"


def _copy_log(source: Path, target: Path) -> Path:
    target.mkdir(parents=True, exist_ok=True)
    for suffix in ("", ".pub", ".head"):
        shutil.copyfile(f"{source}{suffix}", f"{target / source.name}{suffix}")
    return target / source.name


@FUZZ
@given(which=st.sampled_from(("", ".head", ".pub")), data=st.data())
def test_audit_log_lines(tmp_path: Path, audit_log: Path, which: str, data: st.DataObject) -> None:
    from fedmed.audit import verify_log, verify_tree

    log = _copy_log(audit_log, tmp_path / "logs")
    target = Path(f"{log}{which}")
    target.write_bytes(data.draw(mutated(target.read_bytes())))
    check = parse_cleanly(lambda: verify_log(log), target)
    assert not isinstance(check, FedmedError)
    assert "\n" not in check.reason
    parse_cleanly(lambda: verify_tree([tmp_path / "logs"]), target)


def test_audit_public_key_of_unknown_type(tmp_path: Path, audit_log: Path) -> None:
    """A .pub whose key-type OID was damaged: UnsupportedAlgorithm, now an AuditError."""
    import base64

    from fedmed.audit import verify_log

    log = _copy_log(audit_log, tmp_path / "logs")
    pub = Path(f"{log}.pub")
    lines = pub.read_bytes().splitlines()
    der = base64.b64decode(b"".join(lines[1:-1]))
    der = der.replace(bytes([6, 3, 0x2B, 0x65, 0x70]), bytes([6, 3, 0x2B, 0x65, 0x7F]))
    pub.write_bytes(b"\n".join([lines[0], base64.b64encode(der), lines[-1]]) + b"\n")
    check = parse_cleanly(lambda: verify_log(log), pub)
    assert not isinstance(check, FedmedError) and not check.ok and str(pub) in check.reason


@FUZZ
@given(payload=mutated_document({"round": 1, "site_heads": {"x": {"key": "k", "seq": 0}}}))
@example(payload={"site_heads": [1, 2]})
@example(payload={"site_heads": {"x": {"key": "K", "seq": -1, "hash": "h"}}})
@example(payload={"site_heads": "abc"})
def test_audit_round_payloads(
    tmp_path: Path, audit_log: Path, payload: dict[str, Any]
) -> None:
    """A correctly signed log whose ``round`` entries witness odd heads (the auditor reads them)."""
    from fedmed.audit import AuditLog, verify_tree
    from fedmed.audit.verify import verify_log

    logs = tmp_path / "logs"
    shutil.rmtree(logs, ignore_errors=True)
    log_path = _copy_log(audit_log, logs)
    key = verify_log(log_path).key
    if isinstance(payload.get("site_heads"), dict):
        for seen in payload["site_heads"].values():
            if isinstance(seen, dict) and seen.get("key") == "K":
                seen["key"] = key  # witness the site's own log, with an impossible seq
    shutil.copytree(audit_log.parent / "keys", tmp_path / "keys", dirs_exist_ok=True)
    AuditLog.open(log_path, tmp_path / "keys", "boston").append("round", payload)
    parse_cleanly(lambda: verify_tree([logs]), log_path)


@FUZZ
@given(data=st.data())
def test_audit_log_open(tmp_path: Path, audit_log: Path, data: st.DataObject) -> None:
    """A party reopening its own (damaged) log: AuditError, never a traceback."""
    from fedmed.audit import AuditLog

    log = _copy_log(audit_log, tmp_path / "logs")
    shutil.copytree(audit_log.parent / "keys", tmp_path / "keys", dirs_exist_ok=True)
    log.write_bytes(data.draw(mutated(log.read_bytes())))
    parse_cleanly(lambda: AuditLog.open(log, tmp_path / "keys", "boston"), log)


# ------------------------------------------------------------------ deployment kits


def _kit_document(role: str) -> dict[str, Any]:
    kit: dict[str, Any] = {"role": role, "federation": "heart",
                           "addresses": ["10.1.2.3:9092", "coordinator.example.org:9092"]}
    if role == "site":
        kit["site"] = "boston"
    return {"kit": kit}


@FUZZ
@given(
    role=st.sampled_from(("site", "coordinator")),
    data=st.data(),
)
@example(role="site", data=None)
def test_kit_toml(tmp_path: Path, role: str, data: st.DataObject | None) -> None:
    from fedmed.deploy import kit as kits

    folder = tmp_path / role
    for name in (kits.CA_CERT, kits.NODE_KEY, kits.COORDINATOR_CERT, kits.COORDINATOR_KEY):
        write(folder / name, "placeholder")
    document = _kit_document(role)
    if data is None:  # the finding kept as an example: [kit] that is not a table
        text = b'kit = "site"\n'
    else:
        text = data.draw(
            st.one_of(
                mutated_text(tomli_w.dumps(document)),
                mutated_document(document, toml=True).map(_toml_or_skip),
            )
        )
    path = write(folder / kits.KIT_FILE, text)
    load = kits.load_site_kit if role == "site" else kits.load_coordinator_kit
    kit = parse_cleanly(lambda: load(folder), path, folder)
    if not isinstance(kit, FedmedError):
        assert kit.federation and kit.addresses
        assert all(isinstance(a, str) and a for a in kit.addresses)
