"""DICOM header de-id on pydicom's real test files: PHI gone, UIDs consistent, pixels kept."""

from __future__ import annotations

import datetime as dt

import pydicom
import pytest
from pydicom.data import get_testdata_file

from fedmed.deid.dicom import ACTIONS, DicomDeidentifier, shift_dicom_date
from fedmed.deid.gate import admit_dicom
from fedmed.deid.sitekey import SiteKey

FILES = ("CT_small.dcm", "MR_small.dcm")


def _load(name: str) -> pydicom.Dataset:
    return pydicom.dcmread(get_testdata_file(name))


@pytest.fixture()
def key(tmp_path) -> SiteKey:
    return SiteKey.load_or_create(tmp_path / "site")


@pytest.mark.parametrize("name", FILES)
def test_phi_removed_pixels_identical(name: str, key: SiteKey, tmp_path) -> None:
    original = _load(name)
    ds = _load(name)
    result = DicomDeidentifier(key).deidentify(ds)
    assert ds.PixelData == original.PixelData
    assert not any(e.tag.is_private for e in ds.iterall())
    for keyword, action in ACTIONS.items():
        if action == "X":
            assert keyword not in ds
    assert "InstitutionName" not in ds and "StationName" not in ds
    identifying = [str(original.get(k, "")) for k in ("PatientName", "PatientID")]
    values = " | ".join(str(e.value) for e in ds.iterall() if e.VR not in ("OB", "OW"))
    for value in identifying:
        if len(value) > 2:
            assert value not in values
    assert ds.PatientIdentityRemoved == "YES"
    assert len(ds.DeidentificationMethodCodeSequence) == 3
    assert result.counts["uid_remapped"] >= 3
    out = tmp_path / name
    ds.save_as(out)
    back = pydicom.dcmread(out)
    assert back.PixelData == original.PixelData
    assert back.file_meta.MediaStorageSOPInstanceUID == back.SOPInstanceUID


def test_uids_consistent_and_dates_shifted_by_patient_offset(key: SiteKey) -> None:
    original = _load("CT_small.dcm")
    a = DicomDeidentifier(key).deidentify(_load("CT_small.dcm")).dataset
    b = DicomDeidentifier(key).deidentify(_load("CT_small.dcm")).dataset
    for kw in ("StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID", "FrameOfReferenceUID"):
        assert a.get(kw) == b.get(kw) != original.get(kw)
        assert str(a.get(kw)).startswith("2.25.") and len(str(a.get(kw))) <= 64
    assert a.SOPClassUID == original.SOPClassUID  # standard UIDs kept
    assert a.PatientID == b.PatientID != original.PatientID
    offset = key.date_offset(str(original.PatientID))
    for kw in ("StudyDate", "SeriesDate", "ContentDate"):
        before = dt.datetime.strptime(original.get(kw), "%Y%m%d").date()
        after = dt.datetime.strptime(a.get(kw), "%Y%m%d").date()
        assert (after - before).days == offset
    other_site = SiteKey(b"\x01" * 32)
    c = DicomDeidentifier(other_site).deidentify(_load("CT_small.dcm")).dataset
    assert c.StudyInstanceUID != a.StudyInstanceUID


def test_age_capped_and_date_helpers(key: SiteKey) -> None:
    ds = _load("MR_small.dcm")
    ds.PatientAge = "093Y"
    DicomDeidentifier(key).deidentify(ds)
    assert ds.PatientAge == "090Y"
    assert shift_dicom_date("20200301", 14) == "20200315"
    assert shift_dicom_date("20200301-20200310", 1) == "20200302-20200311"
    assert shift_dicom_date("20200301101500.5", -1) == "20200229101500.5"
    assert shift_dicom_date("garbage", 3) == ""


def test_gate_admits_dicom_and_refuses_burned_in(tmp_path) -> None:
    ds = _load("MR_small.dcm")
    ds.BurnedInAnnotation = "YES"
    reports = []
    result = admit_dicom([get_testdata_file("CT_small.dcm"), ds, tmp_path / "missing.dcm"],
                         tmp_path / "site", audit=reports.append)
    assert len(result.released) == 1 and len(result.quarantined) == 2
    assert reports and reports[0]["items"] == {"received": 3, "released": 1, "quarantined": 2}
    assert "CompressedSamples" not in str(reports[0])
    assert any((tmp_path / "site" / "quarantine").glob("*.reason.json"))
