"""Imaging site folders of real DICOM files whose headers carry patient identity (tests only).

Each site folder holds ``labels.csv`` and ``imgNNN.dcm`` files written by pydicom with the
headers a hospital export has — patient name, ID, birth date, study date, UIDs — and the
pixels of the synthetic site (:mod:`fedmed.data.imaging_synth`), so the pack learns as usual.
The last file of a site is marked ``BurnedInAnnotation=YES``: the gate must quarantine it.
:func:`header_values` are the strings that must never appear under a site home or run folder.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from pydicom.dataset import FileDataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, SecondaryCaptureImageStorage, generate_uid

from fedmed.data.imaging_synth import make_site_images

SIZE = 32  # the pack's input grid: nothing to resample


def patient(site: str, index: int) -> dict[str, str]:
    """The identity in one file's header (unusual values: a hit in a grep is never chance)."""
    return {
        "PatientName": f"Quixote^Zebulon{site.title()}{index:02d}",
        "PatientID": f"QX{site[:3].upper()}{index:05d}",
        "PatientBirthDate": f"1937{index % 12 + 1:02d}17",
    }


def write_dicom_site(folder: Path, site: str, n: int = 16) -> None:
    """``n`` labelled DICOM images of ``site`` in ``folder`` (the last one burnt-in)."""
    folder.mkdir(parents=True, exist_ok=True)
    images = make_site_images(site, 0).train
    rows = ["file,label"]
    for index in range(n):
        name = f"img{index:03d}.dcm"
        meta = FileMetaDataset()
        meta.MediaStorageSOPClassUID = SecondaryCaptureImageStorage
        meta.MediaStorageSOPInstanceUID = generate_uid(entropy_srcs=[site, name])
        meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds = FileDataset(str(folder / name), {}, file_meta=meta, preamble=b"\0" * 128)
        ds.SOPClassUID = SecondaryCaptureImageStorage
        ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
        ds.StudyInstanceUID = generate_uid(entropy_srcs=[site, name, "study"])
        ds.SeriesInstanceUID = generate_uid(entropy_srcs=[site, name, "series"])
        for keyword, value in patient(site, index).items():
            setattr(ds, keyword, value)
        ds.StudyDate, ds.Modality = "20240305", "OT"
        ds.Rows = ds.Columns = SIZE
        ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 0
        ds.PixelData = (images.images[index] * 1000).astype(np.uint16).tobytes()
        if index == n - 1:
            ds.BurnedInAnnotation = "YES"
        ds.save_as(folder / name, enforce_file_format=True)
        rows.append(f"{name},{int(images.labels[index])}")
    (folder / "labels.csv").write_text("\n".join(rows) + "\n")


def header_values(sites: list[str], n: int = 16) -> list[bytes]:
    """Every identity value written into the sites' headers, as bytes to grep for."""
    return [value.encode() for site in sites for index in range(n)
            for value in patient(site, index).values()]


def files_holding(roots: list[Path], needles: list[bytes]) -> list[str]:
    """``file: value`` for every file under ``roots`` whose bytes hold one of ``needles``."""
    hits = []
    for root in roots:
        for path in sorted(p for p in root.rglob("*") if p.is_file()):
            data = path.read_bytes()
            hits += [f"{path}: {needle!r}" for needle in needles if needle in data]
    return hits
