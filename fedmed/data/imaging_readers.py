"""Readers for real medical images: DICOM (file or series), NIfTI, PNG/JPEG → float32 arrays.

Every reader returns an :class:`ImageVolume` whose ``pixels`` are in the modality's own units
(Hounsfield units for CT after the DICOM modality LUT, scanner counts otherwise) with axes
``(slices, rows, columns)`` — or ``(rows, columns)`` for a single 2-D image — so that images
and masks read from different formats line up. :func:`normalise_intensity` then maps those
units to ``[0, 1]`` per modality, and :func:`to_model_input` brings one image to a pack's grid.
The synthetic benchmark (:mod:`fedmed.data.imaging_synth`) uses the same normalisation, so
training on simulated sites and inference on real files cannot drift apart.

DICOM headers carry patient identity. A reader therefore accepts ``header_deid``: the
de-identification stage's function from a raw :class:`pydicom.Dataset` to a released one
(:meth:`fedmed.data.admission.FolderGate.dicom_header`). It runs on every file
straight after parsing and *before* pixels are decoded, so a gate that also blanks pixel
regions is honoured and nothing downstream ever holds the raw header. The hook sees the
file's path as ``dataset.filename``. When it raises
:class:`~fedmed.data.admission.ItemQuarantined` (a file marked ``BurnedInAnnotation=YES``,
whose pixels may show the patient's name), the site-folder readers leave that image (and its
label or mask) out; the gate's signed batch report lists it with the reason.

Any missing, unreadable or malformed file raises :class:`fedmed.errors.DataError` whose one-line
message names the file. Third-party decoders raise many unrelated exception types on corrupt
input, so conversion is done in one place, :func:`_reading`.

pydicom, nibabel, Pillow and MONAI are imported inside the functions that need them: the task
registry imports every pack module on first lookup, and none of that should slow down packs
that never touch images.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from fedmed.data.admission import ItemQuarantined
from fedmed.errors import DataError, FedmedError

if TYPE_CHECKING:
    from pydicom import Dataset

HeaderDeid = Callable[["Dataset"], "Dataset"]

LABELS_FILE = "labels.csv"
IMAGES_DIR = "images"
MASKS_DIR = "masks"
NIFTI_SUFFIXES = (".nii", ".nii.gz")
BITMAP_SUFFIXES = (".png", ".jpg", ".jpeg")
CT_WINDOW = (40.0, 400.0)  # (centre, width) in HU: a soft-tissue window
PERCENTILES = (1.0, 99.0)
# ITU-R BT.601 luma weights: RGB ultrasound/secondary captures become one grey channel.
LUMA = np.array([0.299, 0.587, 0.114])


@dataclass(frozen=True)
class ImageVolume:
    """Pixels of one image or series in modality units, with where they came from.

    ``header`` is the (de-identified, when a hook was given) DICOM header of the first slice
    without its pixel data; ``None`` for other formats.
    """

    pixels: np.ndarray
    modality: str
    spacing: tuple[float, ...]
    source: Path
    header: Dataset | None = None


def read_image(path: str | Path, header_deid: HeaderDeid | None = None) -> ImageVolume:
    """Read any supported image: a DICOM series folder, NIfTI, PNG/JPEG, else a DICOM file."""
    path = Path(path)
    if path.is_dir():
        return read_dicom_series(path, header_deid)
    name = path.name.lower()
    if name.endswith(NIFTI_SUFFIXES):
        return read_nifti(path)
    if name.endswith(BITMAP_SUFFIXES):
        return read_bitmap(path)
    return read_dicom(path, header_deid)


def read_dicom(path: str | Path, header_deid: HeaderDeid | None = None) -> ImageVolume:
    """One DICOM file (single or multi-frame) with the modality LUT applied."""
    path = Path(path)
    dataset = _read_dicom_dataset(path, header_deid)
    pixels = _dicom_pixels(dataset, path)
    with _reading(path, "DICOM header"):  # spacings are text (DS): '1.0\\x' fails here
        spacing = _dicom_pixel_spacing(dataset)
        if pixels.ndim == 3:
            spacing = (float(dataset.get("SpacingBetweenSlices", 1.0) or 1.0), *spacing)
    return ImageVolume(pixels, _modality(dataset), spacing, path, _without_pixels(dataset))


def read_dicom_series(folder: str | Path, header_deid: HeaderDeid | None = None) -> ImageVolume:
    """Every file of ``folder`` as one series, slices ordered along the patient axis.

    Order: position along the slice normal (ImagePositionPatient · normal of
    ImageOrientationPatient) when every slice has both, else InstanceNumber, else file name.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise DataError(f"{folder}: DICOM series folder not found")
    files = sorted(p for p in folder.iterdir() if p.is_file() and not p.name.startswith("."))
    if not files:
        raise DataError(f"{folder}: no DICOM files in the series folder")
    slices = [(path, _read_dicom_dataset(path, header_deid)) for path in files]
    series = {str(ds.get("SeriesInstanceUID", "")) for _, ds in slices}
    if len(series) > 1:
        raise DataError(f"{folder}: holds {len(series)} different series; expected one")
    with _reading(folder, "DICOM series geometry"):
        slices = _in_patient_order(slices)
    images = [_dicom_pixels(ds, path) for path, ds in slices]
    shape = images[0].shape
    for (path, _), image in zip(slices, images, strict=True):
        if image.shape != shape or image.ndim != 2:
            raise DataError(
                f"{path}: slice of shape {image.shape} does not fit the series' {shape} 2-D slices"
            )
    first = slices[0][1]
    with _reading(folder, "DICOM series geometry"):
        spacing = (_slice_spacing([ds for _, ds in slices]), *_dicom_pixel_spacing(first))
    return ImageVolume(np.stack(images), _modality(first), spacing, folder, _without_pixels(first))


def read_nifti(path: str | Path) -> ImageVolume:
    """A NIfTI-1/2 image; voxel axes (i, j, k) become (slices, rows, columns) = (k, j, i)."""
    import nibabel as nib

    path = Path(path)
    _require_file(path, "NIfTI image")
    with _reading(path, "NIfTI image"):
        image = nib.load(path)
        data = np.asarray(image.get_fdata(dtype=np.float32))
        zooms = tuple(float(z) for z in image.header.get_zooms())
    if data.ndim == 4:  # a time series: the first volume is the image
        data, zooms = data[..., 0], zooms[:3]
    if data.ndim not in (2, 3):
        raise DataError(f"{path}: expected a 2-D or 3-D NIfTI image, got {data.ndim}-D")
    pixels = np.ascontiguousarray(data.T)
    return ImageVolume(pixels, "OT", tuple(reversed(zooms[: data.ndim])), path)


def read_bitmap(path: str | Path) -> ImageVolume:
    """A PNG or JPEG picture as grey levels (colour → BT.601 luma, alpha dropped)."""
    from PIL import Image

    path = Path(path)
    _require_file(path, "PNG/JPEG image")
    with _reading(path, "PNG/JPEG image"), Image.open(path) as picture:
        pixels = np.asarray(picture)
    return ImageVolume(_grey(pixels.astype(np.float32)), "OT", (1.0, 1.0), path)


def normalise_intensity(
    pixels: np.ndarray,
    modality: str,
    *,
    ct_window: tuple[float, float] = CT_WINDOW,
    percentiles: tuple[float, float] = PERCENTILES,
    axes: tuple[int, ...] | None = None,
) -> np.ndarray:
    """Map modality units to ``[0, 1]`` (float32).

    CT is calibrated (HU mean the same everywhere), so a fixed window keeps absolute
    densities comparable between sites. MR, CR, US and pictures have arbitrary units, so each
    image is scaled between its own low and high percentiles over ``axes`` (default: all),
    which removes scanner gain and offset and is robust to a few hot pixels.
    """
    data = np.asarray(pixels, dtype=np.float64)
    if modality.upper() == "CT":
        centre, width = ct_window
        low, high = centre - width / 2, centre + width / 2
    else:
        low, high = np.percentile(data, percentiles, axis=axes, keepdims=axes is not None)
    span = np.maximum(np.asarray(high) - np.asarray(low), 1e-6)
    return np.clip((data - low) / span, 0.0, 1.0).astype(np.float32)


def to_model_input(volume: ImageVolume, size: int, *, mask: bool = False) -> np.ndarray:
    """One ``size × size`` float32 image: the central slice, normalised (images) or binarised.

    The packs are 2-D: a volume contributes its central slice. Images are resized by area
    averaging (no aliasing of fine noise); masks by nearest neighbour, then ``> 0``.
    """
    from monai.transforms import Resize

    pixels = volume.pixels if volume.pixels.ndim == 2 else volume.pixels[len(volume.pixels) // 2]
    if pixels.ndim != 2 or min(pixels.shape) < 1:
        raise DataError(f"{volume.source}: expected a 2-D image or 3-D volume, got {pixels.shape}")
    if not np.isfinite(pixels).all():
        bad = int((~np.isfinite(pixels)).sum())
        raise DataError(f"{volume.source}: {bad} non-finite pixel value(s) (NaN or Inf)")
    if mask:
        resized = Resize((size, size), mode="nearest")((pixels > 0).astype(np.float32)[None])
        return (np.asarray(resized[0]) > 0.5).astype(np.float32)
    normalised = normalise_intensity(pixels, volume.modality)
    return np.asarray(Resize((size, size), mode="area")(normalised[None])[0], dtype=np.float32)


def read_labels_csv(path: str | Path, allowed: tuple[int, ...] = (0, 1)) -> list[tuple[Path, int]]:
    """Rows ``file,label`` of a labels table; files are resolved against the table's folder."""
    path = Path(path)
    _require_file(path, "labels table (columns file,label)")
    with _reading(path, "labels table"), path.open(newline="", encoding="utf-8") as handle:
        rows = list(csv.DictReader(handle))
        columns = rows[0].keys() if rows else []
    if not {"file", "label"} <= set(columns):
        raise DataError(f"{path}: expected a header 'file,label' and at least one row")
    entries: list[tuple[Path, int]] = []
    for line, row in enumerate(rows, start=2):
        try:
            label = int(str(row["label"]).strip())
        except ValueError:
            label = None
        if label not in allowed:
            raise DataError(
                f"{path}: line {line}, column 'label': {row['label']!r} is not one of the "
                f"pack's classes {', '.join(map(str, allowed))}"
            )
        if not str(row["file"] or "").strip():
            raise DataError(f"{path}: line {line}, column 'file': no file name")
        entries.append((path.parent / str(row["file"]).strip(), label))
    return entries


def read_classification_folder(
    site_dir: Path, size: int, header_deid: HeaderDeid | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Images (n × size × size) and labels listed in ``site_dir/labels.csv`` (less those the
    gate quarantined)."""
    entries = read_labels_csv(Path(site_dir) / LABELS_FILE)
    images, labels = [], []
    for file, label in entries:
        try:
            volume = read_image(file, header_deid)
        except ItemQuarantined:
            continue  # listed with its reason in the gate's signed batch report
        images.append(to_model_input(volume, size))
        labels.append(label)
    if not images:
        raise DataError(f"{site_dir}: every image was quarantined by the de-identification gate")
    return np.stack(images), np.array(labels, dtype=np.int64)


def read_segmentation_folder(
    site_dir: Path, size: int, header_deid: HeaderDeid | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Images of ``site_dir/images`` and their masks (same name) in ``site_dir/masks``."""
    site_dir = Path(site_dir)
    image_dir, mask_dir = site_dir / IMAGES_DIR, site_dir / MASKS_DIR
    for folder in (image_dir, mask_dir):
        if not folder.is_dir():
            raise DataError(f"{folder}: folder not found (expected images/ and masks/)")
    masks_by_stem = {_stem(p): p for p in _entries(mask_dir)}
    images, masks = [], []
    for image_path in _entries(image_dir):
        mask_path = masks_by_stem.get(_stem(image_path))
        if mask_path is None:
            raise DataError(f"{image_path}: no mask with the same name in {mask_dir}")
        try:
            image, mask = read_image(image_path, header_deid), read_image(mask_path, header_deid)
        except ItemQuarantined:
            continue  # listed with its reason in the gate's signed batch report
        images.append(to_model_input(image, size))
        masks.append(to_model_input(mask, size, mask=True))
    if not images:
        raise DataError(f"{image_dir}: no images (or every one quarantined by the gate)")
    return np.stack(images), np.stack(masks)


def _read_dicom_dataset(path: Path, header_deid: HeaderDeid | None) -> Dataset:
    import pydicom

    _require_file(path, "DICOM file")
    with _reading(path, "DICOM file"):
        # From memory, never from the file: pydicom asks the file for as many bytes as an
        # element's (possibly corrupt) length says, up to 4 GiB each; memory stops at the end.
        dataset = pydicom.dcmread(io.BytesIO(path.read_bytes()))
        meta = getattr(dataset, "file_meta", None) or pydicom.Dataset()
        for _ in (*dataset.iterall(), *meta.iterall()):  # parse every element now: a damaged
            pass  # one fails here, not later in header_deid or the pixel decoder
        if "PixelData" not in dataset and "FloatPixelData" not in dataset:
            raise DataError(f"{path}: DICOM file holds no pixel data")
    if header_deid is None:
        return dataset
    dataset.filename = str(path)  # the hook names a quarantined file by it
    released = header_deid(dataset)
    if not isinstance(released, pydicom.Dataset):  # e.g. an in-place scrubber returning None
        raise TypeError(f"header_deid must return a pydicom Dataset, got {type(released)}")
    return released


def _dicom_pixels(dataset: Dataset, path: Path) -> np.ndarray:
    """Pixels in modality units; MONOCHROME1 inverted so that brighter means denser everywhere."""
    from pydicom.pixels import apply_modality_lut

    with _reading(path, "DICOM pixel data"):
        raw = dataset.pixel_array
        photometric = str(dataset.get("PhotometricInterpretation", "MONOCHROME2"))
        if photometric.startswith("MONOCHROME"):
            pixels = np.asarray(apply_modality_lut(raw, dataset), dtype=np.float32)
        else:
            pixels = _grey(np.asarray(raw, dtype=np.float32))
    if photometric == "MONOCHROME1":
        pixels = pixels.max() + pixels.min() - pixels
    return pixels


def _grey(pixels: np.ndarray) -> np.ndarray:
    """Drop a trailing colour axis (RGB/RGBA → luma); grey images pass through."""
    if pixels.ndim >= 3 and pixels.shape[-1] in (3, 4):
        return (pixels[..., :3] @ LUMA).astype(np.float32)
    return pixels.astype(np.float32)


def _modality(dataset: Dataset) -> str:
    return str(dataset.get("Modality", "OT") or "OT").upper()


def _dicom_pixel_spacing(dataset: Dataset) -> tuple[float, float]:
    """Row and column spacing in mm; 1.0 where the header has none (or 0, which some do)."""
    spacing = dataset.get("PixelSpacing") or dataset.get("ImagerPixelSpacing") or (1.0, 1.0)
    rows, columns = (float(value) if float(value) > 0 else 1.0 for value in spacing[:2])
    return rows, columns


def _without_pixels(dataset: Dataset) -> Dataset:
    header = dataset.copy()
    for keyword in ("PixelData", "FloatPixelData", "DoubleFloatPixelData"):
        if keyword in header:
            delattr(header, keyword)
    return header


def _slice_positions(datasets: list[Dataset]) -> list[float] | None:
    """Each slice's position along the slice normal, or None if a slice lacks geometry."""
    if not all("ImagePositionPatient" in ds and "ImageOrientationPatient" in ds for ds in datasets):
        return None
    orientation = np.asarray(datasets[0].ImageOrientationPatient, dtype=float)
    normal = np.cross(orientation[:3], orientation[3:])
    return [float(normal @ np.asarray(ds.ImagePositionPatient, dtype=float)) for ds in datasets]


def _in_patient_order(slices: list[tuple[Path, Dataset]]) -> list[tuple[Path, Dataset]]:
    """Slices by position along the normal, else InstanceNumber, else file name."""
    positions = _slice_positions([ds for _, ds in slices])
    if positions is not None:
        keys: list[float] = positions
    elif all("InstanceNumber" in ds for _, ds in slices):
        keys = [float(ds.InstanceNumber) for _, ds in slices]
    else:
        keys = [0.0] * len(slices)
    order = sorted(range(len(slices)), key=lambda i: (keys[i], slices[i][0].name))
    return [slices[i] for i in order]


def _slice_spacing(datasets: list[Dataset]) -> float:
    positions = _slice_positions(datasets)
    if positions is not None and len(positions) > 1:
        return float(np.median(np.abs(np.diff(positions))))
    return float(datasets[0].get("SliceThickness", 1.0) or 1.0)


def _entries(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if not p.name.startswith("."))


def _stem(path: Path) -> str:
    name = path.name
    for suffix in (*NIFTI_SUFFIXES, *BITMAP_SUFFIXES, ".dcm"):
        if name.lower().endswith(suffix):
            return name[: -len(suffix)]
    return name


def _require_file(path: Path, what: str) -> None:
    if not path.is_file():
        raise DataError(f"{path}: file not found (expected a {what})")


@contextmanager
def _reading(path: Path, what: str) -> Iterator[None]:
    """Turn any decoder failure into one DataError line naming ``path``."""
    try:
        yield
    except FedmedError:
        raise
    except Exception as exc:  # noqa: BLE001 - decoders raise arbitrary types on corrupt input
        detail = " ".join(str(exc).split()) or type(exc).__name__
        raise DataError(f"{path}: cannot read {what} ({type(exc).__name__}: {detail})") from None
