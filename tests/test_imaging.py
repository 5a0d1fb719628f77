"""Imaging packs: synthetic multi-site benchmark, real-file readers, DP-ready models, Grad-CAM.

Readers are tested on real files that ship with installed packages (pydicom's CT_small/MR_small,
pydicom-data's CR and US images, nibabel's test NIfTI) and on files written here.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import nibabel as nib
import numpy as np
import pydicom
import pytest
import torch
from PIL import Image
from pydicom.data import get_testdata_file

from fedmed.data import imaging_synth
from fedmed.data.imaging_readers import (
    normalise_intensity,
    read_classification_folder,
    read_dicom,
    read_dicom_series,
    read_image,
    read_labels_csv,
    read_segmentation_folder,
    to_model_input,
)
from fedmed.data.imaging_synth import IMAGE_SIZE, SITES, make_site_images, simulate_site
from fedmed.errors import ConfigError, DataError
from fedmed.explain.gradcam import GradCam
from fedmed.tasks import get_task, task_names
from fedmed.tasks.base import binary_logit_scores
from fedmed.training.loop import TrainSettings, train_round

CPU = torch.device("cpu")
PACKS = ("imaging-cls", "imaging-seg")


def trained(pack_name: str, site: str, epochs: int, seed: int = 0) -> tuple[object, object]:
    """A pack and a model trained locally on one synthetic site (plain SGD, pack defaults)."""
    pack = get_task(pack_name)
    data = pack.load_site(site, None, seed)
    torch.manual_seed(seed)
    model = pack.build_model()
    settings = TrainSettings(
        local_epochs=epochs, batch_size=pack.default_batch_size, lr=pack.default_lr, seed=seed
    )
    train_round(pack, model, data.train, settings, CPU)
    return pack, model


def one_line_error_naming(excinfo: pytest.ExceptionInfo[DataError], path: Path) -> None:
    message = str(excinfo.value)
    assert str(path) in message and "\n" not in message, message


# --- synthetic benchmark ---------------------------------------------------------------


def test_sites_are_deterministic_and_test_split_ignores_the_seed() -> None:
    first, again = simulate_site("community", 16, seed=3), simulate_site("community", 16, seed=3)
    other = simulate_site("community", 16, seed=4)
    assert np.array_equal(first.images, again.images) and np.array_equal(first.masks, again.masks)
    assert not np.array_equal(first.images, other.images)
    seed0, seed1 = make_site_images("mobile", 0), make_site_images("mobile", 1)
    assert np.array_equal(seed0.test.images, seed1.test.images)
    assert not np.array_equal(seed0.train.images, seed1.train.images)


def test_every_site_is_balanced_and_labelled_from_its_masks() -> None:
    size = imaging_synth.N_TRAIN + imaging_synth.N_TEST
    splits = {site: simulate_site(site, size, seed=7) for site in SITES}
    for site, images in splits.items():
        assert images.images.shape[1:] == (IMAGE_SIZE, IMAGE_SIZE), site
        assert images.images.dtype == np.float32
        assert 0.0 <= images.images.min() < images.images.max() <= 1.0
        assert 0.3 < images.labels.mean() < 0.8, site
        expected = [imaging_synth.has_large_lesion(mask) for mask in images.masks]
        assert images.labels.tolist() == expected


def test_same_scenes_through_different_scanners_really_differ() -> None:
    """Same anatomy (same rng draws), different acquisition: masks equal, pixels far apart."""
    reference = simulate_site("academic", 48, seed=5)
    for site in ("community", "mobile", "legacy"):
        shifted = simulate_site("academic", 48, seed=5, scanner=SITES[site].scanner)
        assert np.array_equal(reference.masks, shifted.masks)
        difference = float(np.abs(reference.images - shifted.images).mean())
        assert difference > 0.08, (site, difference)
    noise = {site: _background_noise(simulate_site(site, 48, seed=5)) for site in SITES}
    assert noise["mobile"] > 3 * noise["academic"], noise


def _background_noise(images: imaging_synth.SiteImages) -> float:
    """Pixel SD far from any object: the noise a site's scanner adds."""
    from scipy import ndimage

    far = ~ndimage.binary_dilation(images.masks.astype(bool), iterations=3, axes=(1, 2))
    return float(images.images[far].std())


def test_unknown_site_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="academic"):
        get_task("imaging-cls").load_site("nowhere", None, 0)


# --- readers on real files -------------------------------------------------------------


def test_ct_and_mr_dicom_from_pydicom() -> None:
    ct_path = Path(get_testdata_file("CT_small.dcm"))
    ct = read_dicom(ct_path)
    raw = pydicom.dcmread(ct_path)
    assert ct.modality == "CT" and ct.pixels.shape == (128, 128) and ct.pixels.dtype == np.float32
    expected_hu = raw.pixel_array * float(raw.RescaleSlope) + float(raw.RescaleIntercept)
    assert np.allclose(ct.pixels, expected_hu)
    assert ct.spacing == pytest.approx((0.661468, 0.661468))
    window = normalise_intensity(np.array([-1000.0, 40.0, 3000.0]), "CT")
    assert window.tolist() == pytest.approx([0.0, 0.5, 1.0])
    mr = read_image(get_testdata_file("MR_small.dcm"))
    assert mr.modality == "MR" and mr.pixels.shape == (64, 64)
    model_input = to_model_input(mr, IMAGE_SIZE)
    assert model_input.shape == (IMAGE_SIZE, IMAGE_SIZE) and model_input.dtype == np.float32
    assert 0.0 <= model_input.min() < model_input.max() <= 1.0


def test_pydicom_data_cr_and_us_images() -> None:
    cr_path = get_testdata_file("RG1_UNCR.dcm")  # MONOCHROME1 chest CR from pydicom-data
    us_path = get_testdata_file("US1_UNCR.dcm")  # RGB ultrasound from pydicom-data
    if cr_path is None or us_path is None:
        pytest.skip("pydicom-data is not installed")
    cr = read_dicom(cr_path)
    raw = pydicom.dcmread(cr_path).pixel_array.astype(np.float32)
    assert cr.modality == "CR" and np.allclose(cr.pixels, raw.max() + raw.min() - raw)  # inverted
    us = read_dicom(us_path)
    assert us.modality == "US" and us.pixels.ndim == 2 and us.pixels.shape == (480, 640)


def test_dicom_series_is_ordered_along_the_patient_axis_and_deidentified(tmp_path: Path) -> None:
    source = pydicom.dcmread(get_testdata_file("CT_small.dcm"))
    z_positions = [30.0, 10.0, 20.0]  # file order differs from patient order
    for index, z in enumerate(z_positions):
        slice_ = source.copy()
        slice_.InstanceNumber = 10 - index  # disagrees with position: position wins
        slice_.ImagePositionPatient = [0.0, 0.0, z]
        slice_.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
        slice_.PixelData = np.full((128, 128), int(z), dtype=np.int16).tobytes()
        slice_.save_as(tmp_path / f"file{index}.dcm")
    seen: list[str] = []

    def scrub(dataset: pydicom.Dataset) -> pydicom.Dataset:
        seen.append(str(dataset.PatientName))
        dataset.PatientName = "ANONYMOUS"
        return dataset

    series = read_dicom_series(tmp_path, header_deid=scrub)
    assert series.pixels.shape == (3, 128, 128)
    assert series.pixels[:, 0, 0].tolist() == pytest.approx([10 - 1024, 20 - 1024, 30 - 1024])
    assert series.spacing[0] == pytest.approx(10.0)
    assert len(seen) == 3 and all(name != "ANONYMOUS" for name in seen)
    assert str(series.header.PatientName) == "ANONYMOUS" and "PixelData" not in series.header
    for index in range(3):  # without geometry the InstanceNumber decides
        slice_ = pydicom.dcmread(tmp_path / f"file{index}.dcm")
        del slice_.ImagePositionPatient
        slice_.save_as(tmp_path / f"file{index}.dcm")
    assert read_image(tmp_path).pixels[:, 0, 0].tolist() == pytest.approx(
        [z - 1024 for z in reversed(z_positions)]
    )


def test_nifti_written_here_and_from_nibabel(tmp_path: Path) -> None:
    volume = np.arange(4 * 5 * 6, dtype=np.float32).reshape(4, 5, 6)
    path = tmp_path / "scan.nii.gz"
    nib.save(nib.Nifti1Image(volume, np.diag([0.5, 0.8, 2.0, 1.0])), path)
    image = read_image(path)
    assert image.pixels.shape == (6, 5, 4) and np.array_equal(image.pixels, volume.T)
    assert image.spacing == pytest.approx((2.0, 0.8, 0.5))
    from nibabel.testing import data_path

    anatomical = Path(data_path) / "anatomical.nii"
    if anatomical.is_file():
        assert read_image(anatomical).pixels.ndim == 3
        assert to_model_input(read_image(anatomical), IMAGE_SIZE).shape == (IMAGE_SIZE, IMAGE_SIZE)


def _write_png_site(folder: Path, n: int, rgb: bool = False) -> list[int]:
    """A labelled PNG folder: label 1 = a big bright disc, 0 = a small one."""
    folder.mkdir(parents=True, exist_ok=True)
    labels = [index % 2 for index in range(n)]
    rows, cols = np.mgrid[:40, :40]
    lines = ["file,label"]
    for index, label in enumerate(labels):
        radius = 12 if label else 4
        pixels = ((rows - 20) ** 2 + (cols - 20) ** 2 <= radius**2).astype(np.uint8) * 200
        picture = Image.fromarray(pixels).convert("RGB" if rgb else "L")
        picture.save(folder / f"img{index}.png")
        lines.append(f"img{index}.png,{label}")
    (folder / "labels.csv").write_text("\n".join(lines) + "\n")
    return labels


def test_png_folder_with_labels_csv(tmp_path: Path) -> None:
    labels = _write_png_site(tmp_path / "site", 6, rgb=True)
    images, read_labels = read_classification_folder(tmp_path / "site", IMAGE_SIZE)
    assert images.shape == (6, IMAGE_SIZE, IMAGE_SIZE) and read_labels.tolist() == labels
    assert images[1].mean() > images[0].mean()  # the big disc covers more of the image


def test_malformed_and_missing_files_raise_data_errors_naming_them(tmp_path: Path) -> None:
    ct_bytes = Path(get_testdata_file("CT_small.dcm")).read_bytes()
    truncated = tmp_path / "truncated.dcm"
    truncated.write_bytes(ct_bytes[: len(ct_bytes) // 2])
    text = tmp_path / "notes.dcm"
    text.write_text("not a DICOM file")
    broken_nifti = tmp_path / "broken.nii.gz"
    broken_nifti.write_bytes(b"\x1f\x8b garbage")
    broken_png = tmp_path / "broken.png"
    broken_png.write_bytes(b"\x89PNG\r\n\x1a\n short")
    missing = tmp_path / "missing.dcm"
    for path in (truncated, text, broken_nifti, broken_png, missing):
        with pytest.raises(DataError) as excinfo:
            read_image(path)
        one_line_error_naming(excinfo, path)
    series = tmp_path / "series"
    series.mkdir()
    shutil.copy(get_testdata_file("CT_small.dcm"), series / "a.dcm")
    (series / "b.dcm").write_text("stray file")
    with pytest.raises(DataError) as excinfo:
        read_dicom_series(series)
    one_line_error_naming(excinfo, series / "b.dcm")


def test_bad_labels_tables_and_missing_masks(tmp_path: Path) -> None:
    table = tmp_path / "labels.csv"
    for content in ("name,label\na.png,1\n", "file,label\na.png,2\n", ""):
        table.write_text(content)
        with pytest.raises(DataError) as excinfo:
            read_labels_csv(table)
        one_line_error_naming(excinfo, table)
    _write_png_site(tmp_path / "site", 2)
    (tmp_path / "site" / "img1.png").unlink()
    with pytest.raises(DataError) as excinfo:
        read_classification_folder(tmp_path / "site", IMAGE_SIZE)
    one_line_error_naming(excinfo, tmp_path / "site" / "img1.png")
    seg = tmp_path / "seg"
    (seg / "masks").mkdir(parents=True)
    _write_png_site(seg / "images", 2)
    (seg / "images" / "labels.csv").unlink()
    shutil.copy(seg / "images" / "img0.png", seg / "masks" / "img0.png")
    with pytest.raises(DataError) as excinfo:
        read_segmentation_folder(seg, IMAGE_SIZE)
    one_line_error_naming(excinfo, seg / "images" / "img1.png")


def test_packs_read_real_site_folders(tmp_path: Path) -> None:
    for site in ("north", "south"):
        _write_png_site(tmp_path / "cls" / site, 10)
        images = tmp_path / "seg" / site / "images"
        _write_png_site(images, 6)
        (images / "labels.csv").unlink()
        shutil.copytree(images, tmp_path / "seg" / site / "masks")
    cls = get_task("imaging-cls")
    assert cls.site_names(tmp_path / "cls") == ["north", "south"]
    data = cls.load_site("north", tmp_path / "cls", seed=0)
    assert len(data.train) + len(data.test) == 10 and 0 < len(data.test) < len(data.train)
    inputs, target = data.train[0]
    assert inputs.shape == (1, IMAGE_SIZE, IMAGE_SIZE) and target.dtype == torch.float32
    seg = get_task("imaging-seg")
    assert seg.site_names(tmp_path / "seg") == ["north", "south"]
    seg_data = seg.load_site("south", tmp_path / "seg", seed=0)
    inputs, mask = seg_data.test[0]
    assert mask.shape == (1, IMAGE_SIZE, IMAGE_SIZE) and set(mask.unique().tolist()) <= {0.0, 1.0}
    with pytest.raises(DataError, match="no site folders"):
        cls.site_names(tmp_path / "seg")


# --- models, training, explanations -------------------------------------------------------


def test_packs_are_registered_with_their_metrics() -> None:
    assert set(PACKS) <= set(task_names())
    assert get_task("imaging-cls").primary_metric == "auc"
    assert get_task("imaging-seg").metrics == ("dice", "hd95")


@pytest.mark.parametrize("name", (*PACKS, "imaging-retrieval"))
def test_models_are_dp_ready(name: str) -> None:
    """Opacus accepts the model and its per-sample gradients are exact (they average to the
    batch gradient), so DP-SGD clips what each image really contributed."""
    from opacus.grad_sample import GradSampleModule
    from opacus.validators import ModuleValidator

    pack = get_task(name)
    ModuleValidator.validate(pack.build_model(), strict=True)
    data = pack.load_site("academic", None, 0).train
    inputs = torch.stack([data[index][0] for index in range(4)])
    targets = torch.stack([data[index][1] for index in range(4)])
    torch.manual_seed(0)
    model = GradSampleModule(pack.build_model())
    outputs = model(inputs)
    assert outputs.shape[0] == 4 and (name != "imaging-seg" or outputs.shape == targets.shape)
    pack.loss(outputs, targets).backward()
    scale = max(float(p.grad.abs().max()) for p in model.parameters())
    for parameter in model.parameters():
        assert parameter.grad_sample.shape == (4, *parameter.shape)
        assert torch.allclose(parameter.grad_sample.mean(0), parameter.grad, atol=1e-5 * scale)


@pytest.mark.parametrize("name", PACKS)
def test_one_local_epoch_beats_the_untrained_model(name: str) -> None:
    pack = get_task(name)
    data = pack.load_site("academic", None, 0)
    torch.manual_seed(0)
    untrained = pack.evaluate(pack.build_model(), data.test, CPU)[pack.primary_metric]
    _, model = trained(name, "academic", epochs=1)
    assert pack.evaluate(model, data.test, CPU)[pack.primary_metric] > untrained + 0.05


@pytest.mark.parametrize(("name", "margin"), [("imaging-cls", 0.2), ("imaging-seg", 0.05)])
def test_local_only_model_fails_on_a_shifted_site(name: str, margin: float) -> None:
    """Trained on the clean academic scanner, scored on the noisy low-resolution mobile unit."""
    pack, model = trained(name, "academic", epochs=8)
    own = pack.evaluate(model, pack.load_site("academic", None, 0).test, CPU)
    shifted = pack.evaluate(model, pack.load_site("mobile", None, 0).test, CPU)
    metric = pack.primary_metric
    assert own[metric] > shifted[metric] + margin, (own, shifted)


def test_gradcam_writes_png_overlays(tmp_path: Path) -> None:
    pack, model = trained("imaging-cls", "legacy", epochs=2)
    data = pack.load_site("legacy", None, 0)
    explainer = pack.explainer
    assert isinstance(explainer, GradCam)
    paths = explainer.explain(model, data.test, "legacy", tmp_path / "explain", n=3)
    assert [p.name for p in paths] == [f"gradcam-legacy-{index}.png" for index in range(3)]
    for path in paths:
        assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and path.stat().st_size > 2000
    layer = dict(model.named_modules())[explainer.layer]
    assert not layer._forward_hooks and not layer._backward_hooks  # the caller's model is untouched


def test_auc_ranks_logits_whose_probabilities_all_round_to_one() -> None:
    """A head far from a site's data can give every image a logit above ~17, where float32's
    sigmoid is exactly 1.0: an AUC of the probabilities would read 0.5 (all tied) although the
    logits rank the images perfectly. The pack's AUC ranks the logits."""
    logits = torch.tensor([[20.0], [25.0], [30.0], [35.0]])
    labels = torch.tensor([0.0, 0.0, 1.0, 1.0])
    assert torch.all(torch.sigmoid(logits) == 1.0)
    scores = binary_logit_scores(logits, labels)
    assert scores == {"accuracy": 0.5, "auc": 1.0}
    assert np.isnan(binary_logit_scores(logits, torch.ones(4))["auc"])
