"""DICOM header de-identification: the PS3.15 Annex E Basic Application Confidentiality
Profile with the *Retain Longitudinal Temporal Information with Modified Dates* and
*Retain Patient Characteristics* options.

Why these options: federated imaging models need the study timeline (intervals between
exams) and patient sex/age/size/weight, not the real dates or identities. Dates are
shifted by the same secret per-patient offset as that patient's notes
(:meth:`fedmed.deid.sitekey.SiteKey.date_offset`, keyed by the original PatientID), so a
report and its images stay aligned; UIDs are remapped with HMAC to ``2.25.<int>``, so the
same original UID always gets the same new UID within a site (series and studies stay
linked across files and runs) and nobody outside the site can reverse it.

Actions per attribute (:data:`ACTIONS`, keyword -> action): ``X`` remove, ``Z`` empty,
``D`` pseudonym, ``A`` age capped at 90 years. Generic rules cover everything else:
private tags removed; every DA/DT shifted; every UI that is not a standard DICOM UID
(SOP classes, transfer syntaxes...) remapped; every other PN emptied; overlay data and
comments (60xx,3000/4000) and curves (50xx) removed.

Out of scope (say so to users): PHI burnt into pixels. Pixel data is never modified;
images with ``BurnedInAnnotation = YES`` are refused by the admission gate. Free-text
attributes not listed in Annex E (rare vendor text in standard tags) are not scanned by
this module; the gate's residual check looks for identifiers left in text attributes.
"""

from __future__ import annotations

import datetime as dt
import io
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pydicom
from pydicom import Dataset
from pydicom._uid_dict import UID_dictionary
from pydicom.dataelem import DataElement
from pydicom.sequence import Sequence as DicomSequence

from fedmed.deid.sitekey import SiteKey

PROFILE_VERSION = "PS3.15-E1-basic+113107+113108/fedmed-1"

ACTIONS: dict[str, str] = {
    # identity of the patient
    "PatientName": "D", "PatientID": "D", "IssuerOfPatientID": "X", "PatientBirthTime": "X",
    "OtherPatientIDs": "X", "OtherPatientNames": "X", "OtherPatientIDsSequence": "X",
    "PatientBirthName": "X", "PatientAddress": "X", "PatientMotherBirthName": "X",
    "MedicalRecordLocator": "X", "CountryOfResidence": "X", "RegionOfResidence": "X",
    "PatientTelephoneNumbers": "X", "EthnicGroup": "X", "Occupation": "X",
    "AdditionalPatientHistory": "X", "PatientReligiousPreference": "X", "PatientComments": "X",
    "PatientInsurancePlanCodeSequence": "X", "InsurancePlanIdentification": "X",
    "MilitaryRank": "X", "BranchOfService": "X", "MedicalAlerts": "X", "Allergies": "X",
    "PatientState": "X", "PregnancyStatus": "X", "SmokingStatus": "X",
    "ResponsiblePerson": "X", "ResponsibleOrganization": "X",
    "PatientAge": "A",
    # the visit and the order
    "AccessionNumber": "Z", "StudyID": "Z", "AdmissionID": "X", "IssuerOfAdmissionID": "X",
    "CurrentPatientLocation": "X", "PatientInstitutionResidence": "X",
    "AdmittingDiagnosesDescription": "X", "AdmittingDiagnosesCodeSequence": "X",
    "PlacerOrderNumberImagingServiceRequest": "Z",
    "FillerOrderNumberImagingServiceRequest": "Z", "RequestedProcedureID": "X",
    "RequestedProcedureDescription": "X", "RequestAttributesSequence": "X",
    "PerformedProcedureStepID": "X", "PerformedProcedureStepDescription": "X",
    "ScheduledProcedureStepDescription": "X", "RequestingService": "X",
    "ReasonForStudy": "X", "StudyComments": "X", "ImageComments": "X",
    "StudyDescription": "X", "SeriesDescription": "X", "ProtocolName": "X",
    "AcquisitionProtocolDescription": "X", "DerivationDescription": "X",
    "IdentifyingComments": "X", "ContentSequence": "X", "OriginalAttributesSequence": "X",
    # people and places
    "ReferringPhysicianName": "Z", "ReferringPhysicianAddress": "X",
    "ReferringPhysicianTelephoneNumbers": "X", "ReferringPhysicianIdentificationSequence": "X",
    "PhysiciansOfRecord": "X", "PhysiciansOfRecordIdentificationSequence": "X",
    "PerformingPhysicianName": "X", "PerformingPhysicianIdentificationSequence": "X",
    "NameOfPhysiciansReadingStudy": "X", "PhysiciansReadingStudyIdentificationSequence": "X",
    "OperatorsName": "X", "OperatorIdentificationSequence": "X", "RequestingPhysician": "X",
    "ScheduledPerformingPhysicianName": "X", "InstitutionName": "X",
    "InstitutionAddress": "X", "InstitutionCodeSequence": "X",
    "InstitutionalDepartmentName": "X", "StationName": "X", "TimezoneOffsetFromUTC": "X",
    # devices
    "DeviceSerialNumber": "X", "DetectorID": "X", "PlateID": "X", "GantryID": "X",
    "CassetteID": "X", "GeneratorID": "X",
}
"""Annex E attributes handled by name (see the module docstring for the generic rules)."""

KEEP_UIDS = frozenset({"SOPClassUID", "MediaStorageSOPClassUID", "TransferSyntaxUID",
                       "ImplementationClassUID", "ReferencedSOPClassUID"})
DEID_CODES = (("113100", "Basic Application Confidentiality Profile"),
              ("113107", "Retain Longitudinal Temporal Information Modified Dates Option"),
              ("113108", "Retain Patient Characteristics Option"))


@dataclass
class DicomDeidResult:
    """The de-identified dataset and what was done to it."""

    dataset: Dataset
    patient_id: str
    counts: Counter[str] = field(default_factory=Counter)
    burned_in: bool = False

    def report(self) -> dict[str, Any]:
        return {"profile": PROFILE_VERSION, "actions": dict(self.counts),
                "burned_in_annotation": self.burned_in}


class DicomDeidentifier:
    """Apply the profile to datasets of one site (one :class:`SiteKey`)."""

    def __init__(self, key: SiteKey, max_shift_days: int = 1095) -> None:
        self.key = key
        self.max_shift_days = max_shift_days

    def pseudonym_id(self, patient_id: str) -> str:
        return "FM" + self.key.digest("dicom-patient-id", patient_id).hex()[:14].upper()

    def deidentify(self, ds: Dataset) -> DicomDeidResult:
        """De-identify ``ds`` in place (pixel data untouched) and return what was done."""
        patient_id = str(ds.get("PatientID", "") or ds.get("StudyInstanceUID", "") or "")
        result = DicomDeidResult(ds, patient_id)
        result.burned_in = str(ds.get("BurnedInAnnotation", "")).upper() == "YES"
        offset = self.key.date_offset(patient_id, self.max_shift_days)
        self._walk(ds, offset, patient_id, result.counts)
        if getattr(ds, "file_meta", None) is not None:
            meta = ds.file_meta
            if "MediaStorageSOPInstanceUID" in meta:
                meta.MediaStorageSOPInstanceUID = self.key.uid(
                    str(meta.MediaStorageSOPInstanceUID))
                result.counts["uid_remapped"] += 1
        self._mark(ds)
        return result

    def _walk(self, ds: Dataset, offset: int, patient_id: str, counts: Counter[str]) -> None:
        removed = len([t for t in ds.keys() if t.is_private])
        ds.remove_private_tags()
        counts["private_removed"] += removed
        for tag in list(ds.keys()):
            elem = ds[tag]
            group = tag.group
            if (0x5000 <= group <= 0x50FF) or (0x6000 <= group <= 0x60FF and
                                               tag.element in (0x3000, 0x4000)):
                del ds[tag]
                counts["removed"] += 1
                continue
            action = ACTIONS.get(elem.keyword)
            if action is not None:
                self._apply(ds, elem, action, patient_id, counts)
            elif elem.VR == "SQ":
                for item in elem.value:
                    self._walk(item, offset, patient_id, counts)
            elif elem.VR in ("DA", "DT"):
                self._shift(elem, offset, counts)
            elif elem.VR == "UI" and elem.keyword not in KEEP_UIDS:
                self._remap_uid(elem, counts)
            elif elem.VR == "PN" and elem.value:
                elem.value = ""
                counts["emptied"] += 1

    def _apply(self, ds: Dataset, elem: DataElement, action: str, patient_id: str,
               counts: Counter[str]) -> None:
        if action == "X":
            del ds[elem.tag]
            counts["removed"] += 1
        elif action == "Z":
            elem.value = DicomSequence([]) if elem.VR == "SQ" else ""
            counts["emptied"] += 1
        elif action == "D":
            pseudo = self.pseudonym_id(patient_id)
            elem.value = pseudo if elem.keyword == "PatientID" else f"SUBJECT^{pseudo}"
            counts["pseudonymised"] += 1
        elif action == "A":
            value = str(elem.value or "")
            if len(value) == 4 and value[3] == "Y" and value[:3].isdigit() and int(value[:3]) > 89:
                elem.value = "090Y"
                counts["age_capped"] += 1

    def _remap_uid(self, elem: DataElement, counts: Counter[str]) -> None:
        values = elem.value if elem.VM > 1 else [elem.value]
        new = [v if (not v or str(v) in UID_dictionary) else self.key.uid(str(v))
               for v in values]
        if new != list(values):
            elem.value = new if elem.VM > 1 else new[0]
            counts["uid_remapped"] += 1

    def _shift(self, elem: DataElement, offset: int, counts: Counter[str]) -> None:
        values = elem.value if elem.VM > 1 else [elem.value]
        shifted = [shift_dicom_date(str(v), offset) if v else v for v in values]
        if shifted != [str(v) if v else v for v in values]:
            elem.value = shifted if elem.VM > 1 else shifted[0]
            counts["dates_shifted"] += 1

    @staticmethod
    def _mark(ds: Dataset) -> None:
        ds.PatientIdentityRemoved = "YES"
        ds.DeidentificationMethod = f"fedmed.deid {PROFILE_VERSION}"
        codes = []
        for value, meaning in DEID_CODES:
            item = Dataset()
            item.CodeValue, item.CodingSchemeDesignator, item.CodeMeaning = value, "DCM", meaning
            codes.append(item)
        ds.DeidentificationMethodCodeSequence = DicomSequence(codes)
        ds.LongitudinalTemporalInformationModified = "MODIFIED"


def shift_dicom_date(value: str, days: int) -> str:
    """Shift a DA (``YYYYMMDD``, also ranges ``A-B``) or DT value by ``days``."""
    if "-" in value and len(value) >= 9 and value.index("-") in (0, 8):
        return "-".join(shift_dicom_date(part, days) if part else "" for part in value.split("-"))
    text = value.strip()
    if len(text) < 8 or not text[:8].isdigit():
        return ""  # unreadable date: drop rather than keep a real one
    try:
        day = dt.date(int(text[:4]), int(text[4:6]), int(text[6:8]))
    except ValueError:
        return ""
    return (day + dt.timedelta(days=days)).strftime("%Y%m%d") + text[8:]


def parsed_dicom(path: Path) -> Dataset:
    """The DICOM file at ``path`` read from memory with every element parsed now.

    From memory: pydicom asks a file for as many bytes as an element's (possibly corrupt)
    length says, up to 4 GiB each; a buffer stops at its end. Every element now: pydicom
    parses lazily, so an unknown VR would otherwise raise later, inside header
    de-identification, instead of here where the gate quarantines the file.
    """
    dataset = pydicom.dcmread(io.BytesIO(Path(path).read_bytes()))
    meta = getattr(dataset, "file_meta", None) or Dataset()
    for _ in (*dataset.iterall(), *meta.iterall()):
        pass
    return dataset
