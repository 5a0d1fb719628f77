"""A multi-site 2-D imaging benchmark with per-site acquisition shift (nothing is downloaded).

No labelled real imaging set ships in any installable package, so the ``imaging-cls`` and
``imaging-seg`` packs train on scenes drawn with MONAI's own test-image generator
(:func:`monai.data.synthetic.create_test_image_2d`, circles of random size and class). What
makes hospitals differ here is mostly the scanner, so every site draws its scenes from the same
generator (only the share of lesion cases differs, :class:`Site`) and then "acquires" them with
its own :class:`Acquisition`:

- **resolution**: the scene is area-averaged onto a coarser grid and interpolated back, as
  when a low-field or portable device reconstructs fewer pixels;
- **blur**: a Gaussian point-spread function (reconstruction kernel, motion);
- **contrast**: a gamma curve on tissue intensities (sequence/window differences);
- **bias field**: a smooth multiplicative intensity ramp (coil inhomogeneity) — unlike a
  global scale it survives per-image normalisation;
- **noise**: Gaussian noise relative to the brightest tissue (field strength, dose);
- **intensity scale and offset**: the stored units (12-bit MR-like counts, offset CT-like
  values), quantised to integers like real pixel data.

Every acquired image then goes through :func:`fedmed.data.imaging_readers.normalise_intensity`
— the normalisation applied to real files — so the federation sees the shift only through what
survives it: scale and offset vanish, resolution, blur, contrast, bias and noise remain.

Targets. ``masks`` mark every object (the segmentation target). ``labels`` (the
classification target) say whether the image holds a *large lesion*: a connected object of at
least :data:`LARGE_AREA` pixels. Scenes are drawn as a few small objects (radius 2–5 px) plus,
with the site's ``lesion_rate``, one large one (radius 7–10 px), so the two classes are
separated by a clear size margin and the task is learnable from pixels; the label is still
computed from the final mask, so merged small objects count as what they look like.

The retrieval pack's relevance label is graded instead: :func:`lesion_size_class` bins the
largest object's area into small, medium and large (:data:`SIZE_CLASSES`).

Image size. The benchmark is defined on a 32 × 32 grid (:data:`IMAGE_SIZE`); a pack's
``image-size`` setting renders the same sites on a larger grid (up to 224, what ImageNet
backbones were trained at). Lengths scale with the grid — radii, the large-lesion area, the
blur — so a scene at 128 px is the 32 px scene seen four times sharper, not a different task.
Above 32 px a scene is also given what a real scan has and a 32 px thumbnail cannot show
(:func:`texture`): a body outline of soft tissue around the objects, tissue texture (a smooth
multiplicative random field, different in every image) and magnitude-image (Rician) noise
instead of Gaussian noise, so a pretrained network sees grain and structure, not flat discs.
At 32 px nothing changes: the published 32 px results stay reproducible.

Determinism: the training split depends on ``(site, seed)``; the test split on the site only
(its own random stream), so seeds vary training, never the yardstick.
"""

from __future__ import annotations

import functools
import zlib
from dataclasses import dataclass

import numpy as np
import torch
from scipy import ndimage

from fedmed.data.imaging_readers import normalise_intensity
from fedmed.errors import ConfigError

IMAGE_SIZE = 32  # the benchmark's grid; lengths below are in pixels of this grid
MAX_IMAGE_SIZE = 224
N_TRAIN = 512  # enough for DP-SGD at ε = 1 to learn (192 did not)
N_TEST = 128
SMALL_RADII = (2, 6)  # create_test_image_2d draws radii in [rad_min, rad_max): 2–5 px
LARGE_RADII = (7, 11)  # 7–10 px
SMALL_OBJECTS = (1, 4)  # inclusive range of small objects per scene
LARGE_AREA = 130  # pixels; a radius-5 disc covers 81, a radius-7 disc 149
MEDIUM_AREA = 60  # pixels; between a radius-4 (49) and a radius-5 (81) disc
SIZE_CLASSES = ("small", "medium", "large")  # lesion_size_class: largest object's area
# Tissue intensity of each object class drawn by the generator (class 0 is background).
TISSUE = np.array([0.05, 0.45, 0.7, 1.0])
# Above IMAGE_SIZE (see texture()): the body outline's tissue intensity, the texture's
# relative amplitude and its grain (correlation length in pixels of the 32 px grid).
BODY_TISSUE = 0.25
TEXTURE_AMPLITUDE = 0.2
TEXTURE_GRAIN = 0.6


@dataclass(frozen=True)
class Acquisition:
    """How a scanner turns a scene into stored pixels (see the module docstring)."""

    downsample: int  # 1 = native resolution; k = reconstructed on a grid k times coarser
    blur_sigma: float  # Gaussian PSF, in pixels of the model grid
    gamma: float  # contrast curve applied to tissue intensities in [0, 1]
    bias: float  # amplitude of the multiplicative linear bias field
    noise: float  # Gaussian noise SD relative to the brightest tissue
    scale: float  # stored units per unit of intensity
    offset: float  # stored value of zero intensity


@dataclass(frozen=True)
class Site:
    """A simulated hospital: its scanner and its case mix."""

    description: str
    scanner: Acquisition
    lesion_rate: float  # fraction of scenes drawn with a large lesion


SITES: dict[str, Site] = {
    "academic": Site(
        "university hospital, modern 3 T scanner: sharp, clean, native resolution",
        Acquisition(
            downsample=1, blur_sigma=0.0, gamma=1.0, bias=0.0, noise=0.02, scale=4095.0, offset=0.0
        ),
        lesion_rate=0.5,
    ),
    "community": Site(
        "community hospital, 1.5 T: soft kernel, flatter contrast, mild coil shading",
        Acquisition(
            downsample=1,
            blur_sigma=1.0,
            gamma=0.45,
            bias=0.3,
            noise=0.1,
            scale=1000.0,
            offset=100.0,
        ),
        lesion_rate=0.4,
    ),
    "mobile": Site(
        "portable low-field unit: half resolution, very noisy",
        Acquisition(
            downsample=2, blur_sigma=0.5, gamma=1.0, bias=0.1, noise=0.3, scale=255.0, offset=0.0
        ),
        lesion_rate=0.5,
    ),
    "legacy": Site(
        "ageing scanner: blurred, steep contrast, strong shading, offset units",
        Acquisition(
            downsample=1,
            blur_sigma=1.8,
            gamma=2.5,
            bias=0.45,
            noise=0.06,
            scale=2000.0,
            offset=-1024.0,
        ),
        lesion_rate=0.6,
    ),
}


@dataclass(frozen=True)
class SiteImages:
    """Normalised images (n × H × W, float32), object masks (uint8) and lesion labels (int64)."""

    images: np.ndarray
    masks: np.ndarray
    labels: np.ndarray


@dataclass(frozen=True)
class SiteSplits:
    """One site's training and test images."""

    train: SiteImages
    test: SiteImages


def site_profile(site: str) -> Site:
    """A built-in site; ConfigError naming the known sites."""
    try:
        return SITES[site]
    except KeyError:
        raise ConfigError(f"unknown imaging site {site!r}; sites: {', '.join(SITES)}") from None


@functools.lru_cache(maxsize=64)
def make_site_images(
    site: str, seed: int, n_train: int = N_TRAIN, n_test: int = N_TEST, size: int = IMAGE_SIZE
) -> SiteSplits:
    """Train split for ``(site, seed)`` and the site's fixed test split (cached, read-only)."""
    return SiteSplits(
        train=simulate_site(site, n_train, seed, size=size),
        test=simulate_site(site, n_test, 0, split="test", size=size),
    )


def check_size(size: int) -> None:
    """ConfigError unless ``size`` is a grid the benchmark renders (32 … 224 pixels)."""
    if not IMAGE_SIZE <= size <= MAX_IMAGE_SIZE:
        raise ConfigError(f"image-size must be in [{IMAGE_SIZE}, {MAX_IMAGE_SIZE}], got {size}")


def simulate_site(
    site: str,
    n: int,
    seed: int,
    scanner: Acquisition | None = None,
    split: str = "train",
    size: int = IMAGE_SIZE,
) -> SiteImages:
    """``n`` scenes of ``site`` acquired with ``scanner`` (default: the site's own).

    ``split`` names an independent random stream, so no training seed can reproduce the test
    images. Passing another site's scanner images the very same scenes (same masks and labels)
    the way that site would: the cleanest way to see what the acquisition shift alone does.
    ``size``: the grid, in pixels (module docstring).
    """
    check_size(size)
    profile = site_profile(site)
    rng = np.random.default_rng([zlib.crc32(site.encode()), zlib.crc32(split.encode()), seed])
    scenes = draw_scenes(n, profile.lesion_rate, rng, size)
    intensity = TISSUE[scenes]
    if size > IMAGE_SIZE:
        intensity = texture(intensity, scenes > 0, rng)
    raw = acquire(intensity, scanner or profile.scanner, rng)
    masks = (scenes > 0).astype(np.uint8)
    labels = np.array([has_large_lesion(mask) for mask in masks], dtype=np.int64)
    images = normalise_intensity(raw, "MR", axes=(-2, -1))
    for array in (images, masks, labels):
        array.flags.writeable = False  # cached: callers must copy, never modify
    return SiteImages(images=images, masks=masks, labels=labels)


def draw_scenes(
    n: int, lesion_rate: float, rng: np.random.Generator, size: int = IMAGE_SIZE
) -> np.ndarray:
    """Label maps (n × size × size, class per pixel, 0 = background) from MONAI's generator;
    radii scale with the grid (at 32 px exactly those of the module constants)."""
    from monai.data.synthetic import create_test_image_2d  # MONAI's import is slow: lazily

    state = np.random.RandomState(int(rng.integers(2**31)))
    scenes = np.zeros((n, size, size), dtype=np.int64)
    classes = len(TISSUE) - 1
    small, large = (tuple(round(r * size / IMAGE_SIZE) for r in radii)
                    for radii in (SMALL_RADII, LARGE_RADII))  # fmt: skip
    for index in range(n):
        groups = [(int(state.randint(SMALL_OBJECTS[0], SMALL_OBJECTS[1] + 1)), small)]
        if state.random_sample() < lesion_rate:
            groups.append((1, large))
        for count, (rad_min, rad_max) in groups:
            _, label_map = create_test_image_2d(
                size,
                size,
                num_objs=count,
                rad_max=rad_max,
                rad_min=rad_min,
                num_seg_classes=classes,
                random_state=state,
            )
            scenes[index] = np.maximum(scenes[index], label_map)
    return scenes


def largest_object_area(mask: np.ndarray) -> float:
    """Pixels of the largest connected object of a binary mask, in pixels of the 32 px grid
    (an area at another grid is rescaled), 0 for an empty mask."""
    components, count = ndimage.label(mask)
    if not count:
        return 0.0
    return int(np.bincount(components.ravel())[1:].max()) / (mask.shape[-1] / IMAGE_SIZE) ** 2


def has_large_lesion(mask: np.ndarray) -> bool:
    """Whether a binary mask holds a connected object of at least :data:`LARGE_AREA` pixels
    (of the 32 px grid: the area scales with the mask's grid)."""
    return largest_object_area(mask) >= LARGE_AREA


def lesion_size_class(mask: np.ndarray) -> int:
    """Which of :data:`SIZE_CLASSES` the largest object of a mask falls in.

    Why these bounds: a disc of radius 4 covers about 50 px and one of radius 5 about 80, so
    :data:`MEDIUM_AREA` splits the small objects the generator draws (radius 2–5) by size
    between the radius-4 and radius-5 discs, and :data:`LARGE_AREA` is the classification
    label's own bound: "large" is exactly ``has_large_lesion``. Three classes, not two, give
    retrieval (``imaging-retrieval``) a graded notion of a similar case."""
    return int(np.searchsorted((MEDIUM_AREA, LARGE_AREA), largest_object_area(mask), "right"))


def texture(intensity: np.ndarray, objects: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """What a scan above 32 px shows besides the objects (module docstring): soft tissue of a
    body outline (a random ellipse) behind them, and a smooth multiplicative texture."""
    n, size = len(intensity), intensity.shape[-1]
    axis = np.linspace(-1.0, 1.0, size)
    rows, cols = np.meshgrid(axis, axis, indexing="ij")
    half_axes = rng.uniform(0.75, 0.95, size=(n, 2, 1, 1))
    body = (rows / half_axes[:, 0]) ** 2 + (cols / half_axes[:, 1]) ** 2 <= 1.0
    tissue = np.where(objects, intensity, np.where(body, BODY_TISSUE, intensity))
    grain = TEXTURE_GRAIN * size / IMAGE_SIZE
    field = ndimage.gaussian_filter(rng.normal(size=tissue.shape), sigma=(0.0, grain, grain))
    field /= field.reshape(n, -1).std(axis=1).reshape(n, 1, 1) + 1e-12
    return np.clip(tissue * (1.0 + TEXTURE_AMPLITUDE * field), 0.0, 1.0)


def acquire(intensity: np.ndarray, setup: Acquisition, rng: np.random.Generator) -> np.ndarray:
    """Stored pixel values (n × H × W, float32) of tissue intensities seen through ``setup``.

    Lengths (the blur) are in pixels of the 32 px grid and scale with the image. Above 32 px
    the noise is a magnitude image's (Rician: two Gaussian channels, then the modulus), as MR
    stores it; at 32 px it stays additive Gaussian, as the benchmark was published."""
    size = intensity.shape[-1]
    image = np.power(intensity, setup.gamma)
    if setup.downsample > 1:
        image = _resample(image, setup.downsample)
    if setup.blur_sigma > 0:
        sigma = setup.blur_sigma * size / IMAGE_SIZE
        image = ndimage.gaussian_filter(image, sigma=(0.0, sigma, sigma))
    image = image * _bias_fields(len(image), setup.bias, rng, size)
    if size > IMAGE_SIZE:
        real = image + rng.normal(0.0, setup.noise, size=image.shape)
        image = np.hypot(real, rng.normal(0.0, setup.noise, size=image.shape))
    else:
        image = image + rng.normal(0.0, setup.noise, size=image.shape)
    return np.round(image * setup.scale + setup.offset).astype(np.float32)


def _resample(images: np.ndarray, factor: int) -> np.ndarray:
    """Area-average onto a grid ``factor`` times coarser, then interpolate back (bilinear)."""
    stack = torch.from_numpy(np.ascontiguousarray(images, dtype=np.float32))[:, None]
    coarse = torch.nn.functional.avg_pool2d(stack, factor)
    fine = torch.nn.functional.interpolate(
        coarse, size=images.shape[-2:], mode="bilinear", align_corners=False
    )
    return fine[:, 0].numpy().astype(np.float64)


def _bias_fields(
    n: int, amplitude: float, rng: np.random.Generator, size: int = IMAGE_SIZE
) -> np.ndarray:
    """``n`` multiplicative linear ramps ``1 ± amplitude`` across the image, random direction."""
    axis = np.linspace(-1.0, 1.0, size)
    rows, cols = np.meshgrid(axis, axis, indexing="ij")
    angle = rng.uniform(0.0, 2 * np.pi, size=(n, 1, 1))
    return 1.0 + amplitude * (np.cos(angle) * rows + np.sin(angle) * cols) / np.sqrt(2)
