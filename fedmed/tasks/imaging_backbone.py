"""The imaging packs' own settings, and which part of a pretrained backbone trains.

Settings (``--set KEY=VALUE`` or the federation folder; :class:`fedmed.config.TaskRef`
carries them to every process):

- ``image-size``: the grid the images are rendered or resized to, 32 (default) … 224;
- ``backbone``: ``densenet-small`` (default; the pack's small DenseNet, trained from scratch)
  or ``efficientnet-lite0`` (ImageNet-pretrained, :mod:`fedmed.tasks.efficientnet_lite`);
- ``fine-tune`` (pretrained backbone only): ``head`` (default; a new linear layer on the
  pooled 1280 features), ``last-blocks`` (the last :data:`LAST_BLOCKS` inverted-bottleneck
  block, the 1×1 head convolution and the linear layer) or ``all``;
- ``backbone-norm`` (pretrained backbone only): ``frozen-bn`` (default; ImageNet's BatchNorm
  statistics and affine kept as constants) or ``groupnorm`` (BatchNorm replaced by trainable
  GroupNorm; the pretrained statistics are lost);
- ``augment``: training-time augmentation, ``none`` (default), ``light``, ``strong`` or a comma
  list of transforms (:mod:`fedmed.tasks.imaging_augment`). Refused with ``head`` or
  ``last-blocks``: those train on encodings made once per image (below), and a new view of an
  image every step would have to be encoded again every step.

Why the frozen part runs once per site (:class:`LiteCut`): with ``head`` or ``last-blocks``
everything below the cut is a fixed function of the image and public weights, so a site
encodes each image once when it loads its data and trains only the part above on those
encodings — a round costs the trainable part alone, the federation exchanges (and DP-SGD
noises) only its parameters, and per-example DP is unchanged: an image's encoding depends on
that image and public weights only. The encodings are kept in the site's admission home
(:func:`cached_encoding`), as the ICD pack keeps its frozen transformer states.
"""

from __future__ import annotations

import copy
import hashlib
import io
import pickle
from collections.abc import Mapping
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path

import torch
from torch import nn
from torch.utils.data import TensorDataset

from fedmed.config import Scalar
from fedmed.data.imaging_synth import IMAGE_SIZE, check_size
from fedmed.data.private_files import write_private
from fedmed.errors import ConfigError
from fedmed.tasks.efficientnet_lite import (
    BLOCKS,
    FEATURES,
    WEIGHTS_SHA256,
    ImageNetInput,
    freeze_batch_norm,
    pretrained_lite0,
    to_group_norm,
)
from fedmed.tasks.imaging_augment import imaging_transforms
from fedmed.tasks.site_size import parse_train_size

SCRATCH = "densenet-small"
PRETRAINED = "efficientnet-lite0"
BACKBONES = (SCRATCH, PRETRAINED)
SCHEDULES = ("head", "last-blocks", "all")
NORMS = ("frozen-bn", "groupnorm")
LAST_BLOCKS = 1  # blocks that train under "last-blocks": the last stage (192 → 320 channels)
# The chain of lite_stages: input, stem, the blocks, the pooled head, the linear layer.
HEAD_STAGE = 2 + BLOCKS
CUTS = {"all": 0, "last-blocks": HEAD_STAGE - LAST_BLOCKS, "head": HEAD_STAGE + 1}
GRADCAM_LAYER = f"{HEAD_STAGE}.act"  # the last feature map, in the whole chain
_ENCODE_BATCH = 64


@dataclass(frozen=True)
class ImagingSettings:
    """An imaging pack's own settings, checked (module docstring)."""

    image_size: int = IMAGE_SIZE
    backbone: str = SCRATCH
    fine_tune: str = "all"
    backbone_norm: str = "frozen-bn"
    # Not in the repr, which names cached encodings (cached_encoding): views never reach them.
    augment: tuple[str, ...] = field(default=(), repr=False)
    # Training images per built-in site (fedmed.tasks.site_size); None: the built-in count.
    train_size: int | None = field(default=None, repr=False)

    @classmethod
    def parse(cls, settings: Mapping[str, Scalar], accepted: tuple[str, ...]) -> ImagingSettings:
        """The settings a pack was given; ConfigError on one it does not take or a bad value."""
        unknown = sorted(set(settings) - set(accepted))
        if unknown:
            raise ConfigError(f"this imaging pack takes {', '.join(accepted)}; "
                              f"not {', '.join(unknown)}")  # fmt: skip
        size = int(settings.get("image-size", IMAGE_SIZE))
        check_size(size)
        augment = imaging_transforms(str(settings.get("augment", "none")))
        train_size = parse_train_size(settings)
        backbone = str(settings.get("backbone", SCRATCH))
        _choose("backbone", backbone, BACKBONES)
        if backbone == SCRATCH:
            for name in ("fine-tune", "backbone-norm"):
                if name in settings:
                    raise ConfigError(f"{name} applies to a pretrained backbone; {SCRATCH} "
                                      "trains every layer from scratch")  # fmt: skip
            return cls(image_size=size, augment=augment, train_size=train_size)
        fine_tune = str(settings.get("fine-tune", "head"))
        norm = str(settings.get("backbone-norm", "frozen-bn"))
        _choose("fine-tune", fine_tune, SCHEDULES)
        _choose("backbone-norm", norm, NORMS)
        if augment and fine_tune != "all":
            raise ConfigError(
                f"augment needs fine-tune=all with {PRETRAINED}: fine-tune={fine_tune} trains on "
                "encodings of each image made once by the frozen part, which a new view of the "
                "image every step would have to redo every step")
        return cls(size, backbone, fine_tune, norm, augment, train_size)

    @property
    def pretrained(self) -> bool:
        return self.backbone == PRETRAINED

    @property
    def encodes(self) -> bool:
        """Whether a site encodes its images once with a frozen part (module docstring)."""
        return self.pretrained and self.fine_tune != "all"


def _choose(name: str, value: str, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise ConfigError(f"{name} must be one of {', '.join(choices)}; got {value!r}")


def lite_stages(norm: str) -> list[nn.Module]:
    """Pretrained EfficientNet-Lite0 as a chain ending in one new logit: grey-to-ImageNet
    input, stem, blocks, pooled head, a zero-initialised linear layer (the noisy first DP
    steps then start from "no opinion", probability 0.5)."""
    net = pretrained_lite0()
    freeze_batch_norm(net) if norm == "frozen-bn" else to_group_norm(net)
    logit = nn.Linear(FEATURES, 1)
    nn.init.zeros_(logit.weight)
    nn.init.zeros_(logit.bias)
    return [ImageNetInput(), *net.stages()[:-1], logit]


@dataclass(frozen=True)
class LiteCut:
    """A schedule's split of the pretrained chain: ``frozen`` (images → encodings, eval mode,
    no gradients) and ``trainable`` (encodings → logit: the pack's model)."""

    frozen: nn.Sequential
    trainable: nn.Sequential

    @classmethod
    def of(cls, settings: ImagingSettings) -> LiteCut:
        stages = lite_stages(settings.backbone_norm)
        cut = CUTS[settings.fine_tune]
        frozen = nn.Sequential(*stages[:cut]).eval().requires_grad_(False)
        return cls(frozen, nn.Sequential(*stages[cut:]).train())  # a fresh model's mode

    def whole(self, trained: nn.Module) -> nn.Sequential:
        """The frozen part and a trained copy of ``trainable`` as one chain (image → logit),
        numbered as :func:`lite_stages`, so :data:`GRADCAM_LAYER` names its last feature map.
        Gradients flow through the frozen part too: Grad-CAM reads them at that feature map."""
        return nn.Sequential(*copy.deepcopy(self.frozen), *trained).requires_grad_(True)


@lru_cache(maxsize=4)
def frozen_part(settings: ImagingSettings) -> nn.Sequential:
    """The frozen part of ``settings``' schedule, built once per process."""
    return LiteCut.of(settings).frozen


class EncodedImages(TensorDataset):
    """(encoding, label) pairs that also keep their images, for explanations."""

    def __init__(self, encodings: torch.Tensor, labels: torch.Tensor, images: torch.Tensor):
        super().__init__(encodings, labels)
        self.images = images


def encode(frozen: nn.Module, images: torch.Tensor) -> torch.Tensor:
    """The frozen part on ``images`` (n × 1 × H × W) in batches, without gradients."""
    with torch.no_grad():  # not inference_mode: the encodings are trained on later
        parts = [frozen(images[start:start + _ENCODE_BATCH])
                 for start in range(0, len(images), _ENCODE_BATCH)]  # fmt: skip
    return torch.cat(parts) if parts else torch.zeros((0,))


def cached_encoding(settings: ImagingSettings, images: torch.Tensor, folder: Path) -> torch.Tensor:
    """:func:`encode`, read from ``folder`` when the same images were encoded there before.

    The file name hashes the images, the schedule and the weights, so other images or another
    schedule never read a stale file. It holds data derived from patient images, so it is
    written like admitted data: mode 0600, atomically (simulated nodes of one site may race).
    A file that cannot be read back whole, or has the wrong shape, is encoded again.
    """
    identity = f"{settings}|{LAST_BLOCKS}|{WEIGHTS_SHA256}|{torch.__version__}".encode()
    digest = hashlib.sha256(identity + str(tuple(images.shape)).encode())
    digest.update(images.numpy().tobytes())
    path = folder / f"lite0-{digest.hexdigest()[:32]}.pt"
    try:
        kept = torch.load(path, weights_only=True)
        if isinstance(kept, torch.Tensor) and len(kept) == len(images):
            return kept
    except (OSError, RuntimeError, EOFError, ValueError, pickle.UnpicklingError):
        pass  # absent or unreadable: encode again below
    encodings = encode(frozen_part(settings), images)
    buffer = io.BytesIO()
    torch.save(encodings, buffer)
    folder.mkdir(parents=True, exist_ok=True, mode=0o700)
    write_private(path, buffer.getvalue())
    return encodings
