"""Augmentation as a pack setting (issue 18 item 2): ``augment`` is validated, reaches the packs
through ``config.task``, changes only the training split, is reproducible from the round seed,
moves a segmentation mask with its image, keeps ECG windows well-formed, and runs through
``fedmed run``."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from torch.utils.data import ConcatDataset, DataLoader, TensorDataset

from fedmed.cli import main
from fedmed.config import FederationConfig
from fedmed.errors import ConfigError
from fedmed.tasks import TaskPack, get_task
from fedmed.tasks.augmentation import AugmentedDataset, seed_views
from fedmed.tasks.ecg_augment import CATALOGUE, EcgView, lead_dropout
from fedmed.tasks.ecg_augment import TRANSFORMS as ECG_TRANSFORMS
from fedmed.tasks.imaging_augment import TRANSFORMS as IMAGING_TRANSFORMS
from fedmed.tasks.imaging_augment import MonaiView
from fedmed.training.loop import TrainSettings, train_round


def pack(task: str, **settings: str) -> TaskPack:
    """The pack as every process builds it: from a federation config's ``task``."""
    return get_task(FederationConfig.from_run_config({"task": task, **settings}).task)


def first_items(dataset: TensorDataset | AugmentedDataset, count: int = 16) -> torch.Tensor:
    return torch.stack([dataset[index][0] for index in range(count)])


@pytest.mark.parametrize("task", ["imaging-cls", "imaging-seg", "ecg", "ecg-lstm"])
def test_bad_augment_values_are_refused_naming_the_setting_and_its_values(task: str) -> None:
    for value in ("heavy", "flip,warp", ""):
        with pytest.raises(ConfigError, match=r"augment must be none, light, strong or a comma"):
            pack(task, augment=value)


def test_augment_is_refused_where_it_cannot_apply() -> None:
    with pytest.raises(ConfigError, match="takes no augment"):
        pack("heart", augment="light")
    with pytest.raises(ConfigError, match="takes only augment and train-size; not image-size"):
        pack("ecg", **{"image-size": "64"})
    # Head or last-blocks fine-tuning trains on encodings made once per image.
    for schedule in ("head", "last-blocks"):
        with pytest.raises(ConfigError, match="augment needs fine-tune=all"):
            pack("imaging-cls", backbone="efficientnet-lite0", augment="flip",
                 **{"fine-tune": schedule})  # fmt: skip
    assert pack("imaging-cls", backbone="efficientnet-lite0", augment="flip",
                **{"fine-tune": "all"}).settings.augment == ("flip",)  # fmt: skip


def test_values_name_transforms_in_one_canonical_order() -> None:
    assert pack("imaging-cls", augment="none").settings.augment == ()  # type: ignore[attr-defined]
    light = pack("imaging-seg", augment="light").settings.augment  # type: ignore[attr-defined]
    assert light == ("flip", "rotate90", "intensity")
    strong = pack("imaging-cls", augment="strong").settings.augment  # type: ignore[attr-defined]
    assert strong == IMAGING_TRANSFORMS
    assert pack("ecg", augment="shift, wander").augment == ("wander", "shift")  # type: ignore[attr-defined]
    assert pack("ecg", augment="strong").augment == ECG_TRANSFORMS  # type: ignore[attr-defined]


@pytest.mark.parametrize(("task", "site"), [("imaging-cls", "academic"), ("ecg", "boston")])
def test_only_the_training_split_is_augmented(task: str, site: str) -> None:
    plain = pack(task).load_site(site, None, 0)
    augmented = pack(task, augment="strong").load_site(site, None, 0)
    assert isinstance(plain.train, TensorDataset) and isinstance(augmented.train, AugmentedDataset)
    assert augmented.fingerprint == plain.fingerprint  # the data trained on are the same records
    assert len(augmented.train) == len(plain.train)  # one view per record: same sample rate
    assert torch.equal(first_items(plain.train), first_items(augmented.train.raw))
    assert not torch.equal(first_items(plain.train), first_items(augmented.train))
    assert isinstance(augmented.test, TensorDataset)  # the yardstick is never augmented
    assert torch.equal(first_items(plain.test), first_items(augmented.test))


def test_the_same_round_seed_and_epoch_give_the_same_views() -> None:
    data = pack("imaging-cls", augment="strong").load_site("academic", None, 0).train
    assert isinstance(data, AugmentedDataset)
    views = {}
    for seed, epoch in ((7, 0), (7, 0), (7, 1), (8, 0)):
        seed_views(ConcatDataset([data]), seed, epoch)  # reaches inside a pooled dataset too
        views.setdefault((seed, epoch), []).append(first_items(data))
    assert torch.equal(*views[(7, 0)])
    assert not torch.equal(views[(7, 0)][0], views[(7, 1)][0])
    assert not torch.equal(views[(7, 0)][0], views[(8, 0)][0])


def test_training_on_augmented_data_is_reproducible() -> None:
    task = pack("imaging-cls", augment="light")
    data = task.load_site("academic", None, 0).train
    settings = TrainSettings(local_epochs=1, batch_size=64, lr=0.1, seed=3)

    def trained() -> list[torch.Tensor]:
        torch.manual_seed(0)
        model = task.build_model()
        train_round(task, model, torch.utils.data.Subset(data, range(128)), settings,
                    torch.device("cpu"))  # fmt: skip
        return [p.detach().clone() for p in model.parameters()]

    assert all(torch.equal(a, b) for a, b in zip(trained(), trained(), strict=True))


def test_a_segmentation_mask_moves_with_its_image() -> None:
    image = torch.zeros(1, 16, 16)
    image[0, 2:6, 3:9] = 1.0  # an off-centre bright block and its mask
    mask = (image > 0.5).float()
    flip = MonaiView(("flip",), with_mask=True)
    flipped = 0
    for seed in range(12):
        view, view_mask = flip(image, mask, seed)
        assert torch.equal((view > 0.5).float(), view_mask)
        flipped += int(not torch.equal(view_mask, mask))
    assert flipped > 0
    for seed in range(6):  # every spatial transform: the mask stays binary and on its object
        view, view_mask = MonaiView(IMAGING_TRANSFORMS, with_mask=True)(image, mask, seed)
        assert set(view_mask.unique().tolist()) <= {0.0, 1.0}
        assert view.shape == image.shape and view_mask.shape == mask.shape
        inside, outside = view[view_mask > 0], view[view_mask == 0]
        assert inside.numel() and outside.numel() and inside.mean() > outside.mean()


def test_the_segmentation_pack_augments_image_and_mask_together() -> None:
    data = pack("imaging-seg", augment="flip,rotate90").load_site("academic", None, 0).train
    assert isinstance(data, AugmentedDataset)
    for index in range(8):
        (image, mask), (raw_image, raw_mask) = data[index], data.raw[index]
        assert mask.shape == raw_mask.shape and mask.sum() == raw_mask.sum()
        # A flip or quarter turn moves pixels exactly: the image moves as its mask does.
        for k in range(4):
            for flip in (None, 1, 2):
                moved = torch.rot90(raw_image, k, (1, 2))
                moved_mask = torch.rot90(raw_mask, k, (1, 2))
                if flip:
                    moved, moved_mask = moved.flip(flip), moved_mask.flip(flip)
                if torch.equal(moved_mask, mask) and torch.allclose(moved, image):
                    break
            else:
                continue
            break
        else:
            pytest.fail(f"view {index} is no flip/quarter turn of image and mask together")


@pytest.mark.parametrize("name", ECG_TRANSFORMS)
def test_ecg_transforms_keep_shape_dtype_and_finite_values(name: str) -> None:
    rng = np.random.default_rng(0)
    for window in (rng.normal(size=(1, 500)), rng.normal(size=(3, 500))):
        window = window.astype(np.float32)
        out = CATALOGUE[name](window.copy(), np.random.default_rng(1))
        assert out.shape == window.shape and out.dtype == np.float32
        assert np.isfinite(out).all() and not np.shares_memory(out, window)


def test_lead_dropout_zeroes_a_lead_or_a_short_segment() -> None:
    leads = lead_dropout(np.ones((3, 500), np.float32), np.random.default_rng(0))
    assert sorted((leads == 0).all(axis=1).tolist()) == [False, False, True]
    single = lead_dropout(np.ones((1, 500), np.float32), np.random.default_rng(0))
    assert 0 < (single == 0).sum() <= 30


def test_an_ecg_view_is_a_function_of_its_seed() -> None:
    window, label = torch.randn(1, 500), torch.tensor(2)
    view = EcgView(ECG_TRANSFORMS)
    first, kept = view(window, label, 5)
    assert kept is label and first.dtype == torch.float32 and first.shape == window.shape
    assert torch.equal(first, view(window, label, 5)[0])
    assert not torch.equal(first, view(window, label, 6)[0])
    batch = next(iter(DataLoader(AugmentedDataset(TensorDataset(window[None], label[None]),
                                                  view), batch_size=1)))  # fmt: skip
    assert batch[0].shape == (1, 1, 500)


def test_fedmed_run_trains_with_augmentation(repo: Path, tmp_path: Path) -> None:
    """The production entry point: one round of two imaging sites, ``--set augment=strong``,
    with DP-SGD (the default of the example) — the round trains and is accounted as usual."""
    out = tmp_path / "run"
    code = main(["run", str(repo / "examples" / "imaging-cls"), "--rounds", "1",
                 "--sites-home", str(tmp_path / "homes"), "--out", str(out),
                 "--set", "sites=academic,legacy", "--set", "augment=strong"])  # fmt: skip
    assert code == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert set(metrics["final"]["per_site"]) == {"academic", "legacy"}
    assert metrics["config"]["augment"] == "strong"
