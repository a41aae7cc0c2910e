"""Synthetic micrographs with known ground truth: structures, masks, domain shifts, shortcuts.

Tests and examples need answers known in advance: *does the model look at the
class-defining structures, or at a planted shortcut?* This module draws grayscale
micrograph-like images of four microstructure classes, each defined only by its
structures on a textured matrix common to all classes:

``particles``
    dispersed bright, roughly round carbide particles (spheroidite-like);
``lamellae``
    colonies of parallel alternating plates with one orientation per colony (pearlite-like);
``network``
    a bright grain-boundary network around polygonal (Voronoi) grains;
``needles``
    thin elongated laths at a few orientations (Widmanstatten-like).

Every image comes with a uint8 mask of the same shape (:data:`MASK_CLASSES`):
0 = matrix, 1 = class-defining structure, 2 = planted shortcut. The structures are drawn
from the mask (image = matrix texture + contrast * slightly smoothed structure mask), so
the mask lines up with what is seen.

**Acquisition conditions.** A :class:`Condition` shifts the domain: structure contrast,
brightness offset, optical blur, additive noise, and ``scale`` (a magnification change: all
structure sizes, in pixels, are multiplied by it). The random draws of the structures come
before the noise, so two conditions with the same ``scale`` give the *same* structures and
masks for a sample: paired images of one field of view under two acquisitions.

**Planted shortcut.** With a :class:`ShortcutSpec`, a bright bar (like a burned-in scale
bar) is overlaid at a corner. Class ``k`` (its index in :data:`CLASSES`) owns corner
``CORNERS[k % 4]``; with probability ``ShortcutSpec.probability`` the bar sits at its class's
corner, otherwise at the corner of a uniformly drawn *other* class of the data set. The bar
is an overlay added after blur and noise (as acquisition software burns in annotations),
so mask == 2 covers exactly the pixels it changed. ``shortcut=None`` means no bar at all.
Each sample records ``shortcut_position`` (corner or ``none``) and ``has_shortcut`` (1.0 when
the bar is at its own class's corner, else 0.0) as metadata, so accuracy can be split by it.

**A bar whose content says whose it is.** A network that standardizes each image and pools
globally barely sees *where* a bar sits, so a corner alone is a weak shortcut for it. With
``ShortcutSpec.length_code`` the bar also differs in length by corner (the bar at
``CORNERS[i]`` is ``1 + i/2`` times as long, like a scale bar whose length follows the
magnification): the marker of class ``k`` is then readable from its content alone.

**Splits given by the source.** With ``splits: {train: 3, val: 1, test: 2}`` (whole specimens
per class, in specimen order: specimens 0-2 train, 3 val, 4-5 test; the counts must add up to
``specimens_per_class``) every sample records its ``split`` as metadata, and ingest keeps it
instead of drawing its own. Without ``splits`` ingest splits by specimen as for any source.

**A shortcut that differs by split.** ``ShortcutSpec.test_probability`` (needs ``splits``) is
the chance that the bar is at its class's corner in the *test* split; ``probability`` then
holds for train and val. ``{probability: 1.0, test_probability: 0.25}`` with the four classes
makes the bar fully predictive where a model learns (train, val) and uninformative where it
is tested (0.25 = one corner in four: the bar is at a uniformly random class's corner), the
situation of a burned-in annotation that happened to follow the class in the training data.
A model that learned the bar loses accuracy on test images whose bar is at another class's
corner (``has_shortcut`` 0); one that learned the structures does not. Left out (None), the
test split uses ``probability`` too, exactly as before.

**Determinism and specimens.** Every sample is regenerated from its own random streams,
``np.random.default_rng([seed, stream, class_index, specimen_index, image_index])``, so any
sample can be read on any process in any order. Each class has ``specimens_per_class``
specimens; a specimen draws its structure parameters (particle size and density, lamella
spacing, grain size, needle orientations, ...) once, so images of one specimen are alike
and splits must be made by specimen (the sample's ``group``), as with real data.
"""

from __future__ import annotations

import re
import threading
from collections import OrderedDict
from typing import Any, Callable, ClassVar, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator
from scipy import ndimage
from skimage import segmentation

from xaiflow.sources.base import SOURCES, ImageSource, SampleRef, SourceError

CLASSES: tuple[str, ...] = ("particles", "lamellae", "network", "needles")
MASK_CLASSES = ["matrix", "structure", "shortcut"]
#: marker corners; class k owns CORNERS[k % 4]
CORNERS: tuple[str, ...] = ("top-left", "top-right", "bottom-right", "bottom-left")

#: mean matrix level, matrix texture amplitude and structure contrast (image units, [0, 1])
_MATRIX_LEVEL = 0.32
_MATRIX_TEXTURE = 0.05
_STRUCTURE_CONTRAST = 0.38
#: the structure mask is smoothed this much (px) before it is drawn, for soft edges
_EDGE_SIGMA = 0.7
#: reference image side for ``ShortcutSpec.size``
_REFERENCE_SIDE = 128
#: widest margin (px) around the image in which Voronoi seeds are placed
_MAX_VORONOI_PAD = 24

# random-stream tags: the second entry of every seed list, so streams never collide
_STREAM_SPECIMEN = 1
_STREAM_IMAGE = 2
_STREAM_SHORTCUT = 3


class Condition(BaseModel):
    """An acquisition condition: the domain shift applied to every image of a data set.

    Values are in image units (the image is in [0, 1] before conversion to uint8).
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    noise_std: float = Field(0.05, ge=0.0, le=1.0, description="std of additive Gaussian noise")
    contrast: float = Field(1.0, ge=0.0, le=5.0, description="multiplier of structure contrast")
    brightness: float = Field(0.0, ge=-1.0, le=1.0, description="offset added to every pixel")
    blur_sigma: float = Field(0.0, ge=0.0, le=20.0, description="Gaussian blur sigma in px")
    scale: float = Field(
        1.0, ge=0.25, le=4.0, description="magnification factor: multiplies all structure sizes"
    )


class ShortcutSpec(BaseModel):
    """A label-correlated marker: a bright bar of ``size/2 x 2*size`` px at 128 px images.

    ``size`` scales with the image (by ``min(height, width) / 128``); ``probability`` is the
    chance that the bar is at its class's corner rather than another class's corner;
    ``test_probability`` (None: ``probability``) is that chance in the test split (it needs the
    source's ``splits``, see the module docstring); ``length_code`` makes the bar's length say
    whose corner it belongs to (the bar at ``CORNERS[i]`` is ``1 + i/2`` times as long).
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    probability: float = Field(1.0, ge=0.0, le=1.0)
    size: int = Field(8, ge=2, le=64)
    intensity: float = Field(1.0, ge=0.0, le=1.0)
    # left out of dumps when unset, so configs (and config hashes) written before them stay the same
    length_code: bool = Field(False, exclude_if=lambda v: not v,
                              description="the bar's length also says whose corner it belongs to")
    test_probability: float | None = Field(None, ge=0.0, le=1.0, exclude_if=lambda v: v is None,
                                           description="chance of the class's corner in the test split "
                                                       "(default: probability)")

    def probability_in(self, split: str | None) -> float:
        """The chance of the class's corner for a sample of ``split`` (None: no split given)."""
        if split == "test" and self.test_probability is not None:
            return self.test_probability
        return self.probability


class SpecimenSplits(BaseModel):
    """Whole specimens per class in each split, assigned in specimen order (train, then val, then test)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    train: int = Field(0, ge=0)
    val: int = Field(0, ge=0)
    test: int = Field(0, ge=0)

    def of(self, specimen: int) -> str:
        """The split of specimen number ``specimen`` (0-based)."""
        if specimen < self.train:
            return "train"
        return "val" if specimen < self.train + self.val else "test"


# ----------------------------------------------------------------------------- random streams


def sample_rng(seed: int, stream: int, *indices: int) -> np.random.Generator:
    """A generator for one stream of one specimen or image, independent of every other one."""
    return np.random.default_rng([seed, stream, *indices])


def _class_index(class_name: str) -> int:
    """Index of a class in :data:`CLASSES`; raises :class:`SourceError` listing valid names."""
    try:
        return CLASSES.index(class_name)
    except ValueError:
        raise SourceError(
            f"unknown synthetic class {class_name!r}; valid: {', '.join(CLASSES)}"
        ) from None


# ----------------------------------------------------------------------------- specimen params


def _particles_params(rng: np.random.Generator) -> dict[str, float]:
    return {
        "radius": rng.uniform(2.2, 4.2),
        "radius_cv": rng.uniform(0.15, 0.35),
        "fraction": rng.uniform(0.08, 0.18),
        "max_aspect": rng.uniform(1.1, 1.6),
    }


def _lamellae_params(rng: np.random.Generator) -> dict[str, float]:
    return {
        "spacing": rng.uniform(5.0, 8.0),
        "duty": rng.uniform(0.28, 0.42),
        "colony_size": rng.uniform(40.0, 65.0),
        "waviness": rng.uniform(0.1, 0.4),
    }


def _network_params(rng: np.random.Generator) -> dict[str, float]:
    return {
        "grain_size": rng.uniform(20.0, 32.0),
        "width": rng.uniform(1.5, 2.8),
        "width_jitter": rng.uniform(0.15, 0.4),
    }


def _needles_params(rng: np.random.Generator) -> dict[str, float]:
    return {
        "orientation": rng.uniform(0.0, np.pi),
        "n_orientations": float(rng.integers(2, 5)),
        "width": rng.uniform(1.4, 2.4),
        "length": rng.uniform(20.0, 40.0),
        "fraction": rng.uniform(0.07, 0.13),
    }


_SPECIMEN_PARAMS: dict[str, Callable[[np.random.Generator], dict[str, float]]] = {
    "particles": _particles_params,
    "lamellae": _lamellae_params,
    "network": _network_params,
    "needles": _needles_params,
}


def draw_specimen_params(class_name: str, rng: np.random.Generator) -> dict[str, float]:
    """Structure parameters of one specimen (sizes in px at ``scale=1``), drawn once."""
    _class_index(class_name)
    return _SPECIMEN_PARAMS[class_name](rng)


# ----------------------------------------------------------------------------- building blocks


def smooth_noise(shape: tuple[int, int], corr_len: float, rng: np.random.Generator) -> np.ndarray:
    """Zero-mean, unit-std Gaussian random field with correlation length ``corr_len`` px.

    White noise low-pass filtered in Fourier space: one FFT pair, much faster than a wide
    spatial Gaussian filter. The field is periodic, which is invisible at these lengths.
    """
    white = rng.standard_normal(shape)
    ky = np.fft.fftfreq(shape[0])[:, None]
    kx = np.fft.rfftfreq(shape[1])[None, :]
    lowpass = np.exp(-2.0 * (np.pi * corr_len) ** 2 * (ky**2 + kx**2))
    field = np.fft.irfft2(np.fft.rfft2(white) * lowpass, s=shape)
    field -= field.mean()
    return field / (field.std() + 1e-12)


def _voronoi_labels(shape: tuple[int, int], seeds: np.ndarray, pad: int) -> np.ndarray:
    """Label (1..n) of the nearest seed for every pixel; seeds are (y, x) image coordinates.

    Computed with one Euclidean distance transform on the image padded by ``pad`` px, so
    cells at the border are cut rather than squeezed; seeds outside the padded canvas are
    dropped (the result is still a Voronoi tessellation, of the remaining seeds).
    """
    canvas = (shape[0] + 2 * pad, shape[1] + 2 * pad)
    ys, xs = np.round(seeds.T).astype(int) + pad
    keep = (ys >= 0) & (ys < canvas[0]) & (xs >= 0) & (xs < canvas[1])
    seed_labels = np.zeros(canvas, dtype=np.int32)
    seed_labels[ys[keep], xs[keep]] = np.arange(1, keep.sum() + 1)
    _, (iy, ix) = ndimage.distance_transform_edt(seed_labels == 0, return_indices=True)
    return seed_labels[iy, ix][pad : pad + shape[0], pad : pad + shape[1]]


def _jittered_grid(
    shape: tuple[int, int], spacing: float, pad: int, rng: np.random.Generator
) -> np.ndarray:
    """Seeds (y, x), one per cell of a square grid over the padded image: equiaxed cells."""
    ys = np.arange(-pad, shape[0] + pad, spacing)
    xs = np.arange(-pad, shape[1] + pad, spacing)
    grid = np.stack(np.meshgrid(ys, xs, indexing="ij"), axis=-1).reshape(-1, 2)
    return grid + rng.uniform(0.0, spacing, size=grid.shape)


def _voronoi(shape: tuple[int, int], cell_size: float, rng: np.random.Generator) -> np.ndarray:
    """Labels of a Voronoi tessellation with cells of about ``cell_size`` px.

    The padding is capped: a wider margin would only reshape cut border cells, and the
    distance transform's cost grows with the padded area.
    """
    pad = int(min(cell_size, _MAX_VORONOI_PAD))
    return _voronoi_labels(shape, _jittered_grid(shape, cell_size, pad, rng), pad)


def _stamp(
    shape: tuple[int, int],
    centres: np.ndarray,
    reach: float,
    inside: Callable[[np.ndarray, np.ndarray], np.ndarray],
) -> np.ndarray:
    """Rasterise many small objects at once (no per-object Python loop).

    Every object gets a square window of half-side ``reach`` px around its centre;
    ``inside(dy, dx)`` receives the (n, k, k) offsets of the window pixels from the
    centres and returns which pixels belong to each object (its own parameters broadcast
    as (n, 1, 1) arrays).
    """
    k = int(np.ceil(reach))
    offsets = np.arange(-k, k + 1)
    base = np.floor(centres).astype(int)
    frac = centres - base
    dy = offsets[None, :, None] - frac[:, 0, None, None]
    dx = offsets[None, None, :] - frac[:, 1, None, None]
    hit = inside(np.broadcast_to(dy, (len(centres), 2 * k + 1, 2 * k + 1)), dx)
    rows = base[:, 0, None, None] + offsets[None, :, None]
    cols = base[:, 1, None, None] + offsets[None, None, :]
    hit &= (rows >= 0) & (rows < shape[0]) & (cols >= 0) & (cols < shape[1])
    mask = np.zeros(shape, dtype=bool)
    mask[np.broadcast_to(rows, hit.shape)[hit], np.broadcast_to(cols, hit.shape)[hit]] = True
    return mask


# ----------------------------------------------------------------------------- structures


def _draw_particles(
    shape: tuple[int, int], p: dict[str, float], scale: float, rng: np.random.Generator
) -> np.ndarray:
    """Randomly placed ellipses, log-normal radii, mild elongation, area fraction ``fraction``."""
    radius = p["radius"] * scale
    count = max(1, round(p["fraction"] * shape[0] * shape[1] / (np.pi * radius**2)))
    radii = np.minimum(radius * rng.lognormal(0.0, p["radius_cv"], size=count), 3.0 * radius)
    aspects = rng.uniform(1.0, p["max_aspect"], size=count)
    centres = rng.uniform(0.0, 1.0, size=(count, 2)) * shape
    angles = rng.uniform(0.0, np.pi, size=count)
    semi_major = (radii * np.sqrt(aspects))[:, None, None]
    semi_minor = np.maximum(radii / np.sqrt(aspects), 0.8)[:, None, None]
    cos, sin = np.cos(angles)[:, None, None], np.sin(angles)[:, None, None]

    def inside(dy: np.ndarray, dx: np.ndarray) -> np.ndarray:
        u = dx * cos + dy * sin
        v = dy * cos - dx * sin
        return (u / semi_major) ** 2 + (v / semi_minor) ** 2 <= 1.0

    return _stamp(shape, centres, semi_major.max(), inside)


def _draw_lamellae(
    shape: tuple[int, int], p: dict[str, float], scale: float, rng: np.random.Generator
) -> np.ndarray:
    """Voronoi colonies, each filled with straight, slightly wavy plates of its own orientation."""
    labels = _voronoi(shape, p["colony_size"] * scale, rng)
    n = labels.max() + 1
    theta = rng.uniform(0.0, np.pi, size=n)
    spacing = p["spacing"] * scale * rng.uniform(0.85, 1.15, size=n)
    phase = rng.uniform(0.0, 1.0, size=n)
    wobble = p["waviness"] * smooth_noise(shape, 4.0 * p["spacing"] * scale, rng)
    y, x = np.indices(shape, dtype=np.float32)
    kx, ky = (np.cos(theta) / spacing)[labels], (np.sin(theta) / spacing)[labels]
    return np.mod(x * kx + y * ky + phase[labels] + wobble, 1.0) < p["duty"]


def _draw_network(
    shape: tuple[int, int], p: dict[str, float], scale: float, rng: np.random.Generator
) -> np.ndarray:
    """Boundaries of a Voronoi grain structure, thickened to ``width`` with a smooth jitter."""
    grain = p["grain_size"] * scale
    boundary = segmentation.find_boundaries(_voronoi(shape, grain, rng), mode="inner")
    distance = ndimage.distance_transform_edt(~boundary)
    jitter = 1.0 + p["width_jitter"] * smooth_noise(shape, grain / 3.0, rng)
    half_width = 0.5 * p["width"] * scale * np.clip(jitter, 0.3, None)
    return distance < np.maximum(half_width, 0.5)


def _draw_needles(
    shape: tuple[int, int], p: dict[str, float], scale: float, rng: np.random.Generator
) -> np.ndarray:
    """Thin laths along a few specimen orientations (evenly spread over 180 deg, +-4 deg jitter).

    Each lath has parallel sides over its middle 60 % and tapers linearly to pointed tips.
    """
    width = max(p["width"] * scale, 1.0)
    length = p["length"] * scale
    count = max(1, round(p["fraction"] * shape[0] * shape[1] / (0.8 * width * length)))
    n_orient = int(p["n_orientations"])
    base = p["orientation"] + np.pi * rng.integers(0, n_orient, size=count) / n_orient
    thetas = base + rng.normal(0.0, np.deg2rad(4.0), size=count)
    half_len = (0.5 * length * rng.uniform(0.6, 1.4, size=count))[:, None, None]
    half_wid = (0.5 * width * rng.uniform(0.8, 1.25, size=count))[:, None, None]
    centres = rng.uniform(0.0, 1.0, size=(count, 2)) * shape
    cos, sin = np.cos(thetas)[:, None, None], np.sin(thetas)[:, None, None]

    def inside(dy: np.ndarray, dx: np.ndarray) -> np.ndarray:
        along = np.abs(dx * cos + dy * sin)
        across = np.abs(dy * cos - dx * sin)
        taper = np.clip((half_len - along) / (0.4 * half_len), 0.0, 1.0)
        return (across <= np.maximum(half_wid * taper, 0.5)) & (along <= half_len)

    return _stamp(shape, centres, half_len.max(), inside)


_DRAWERS: dict[
    str,
    Callable[[tuple[int, int], dict[str, float], float, np.random.Generator], np.ndarray],
] = {
    "particles": _draw_particles,
    "lamellae": _draw_lamellae,
    "network": _draw_network,
    "needles": _draw_needles,
}


# ----------------------------------------------------------------------------- shortcut marker


def marker_shape(size: tuple[int, int], spec: ShortcutSpec, corner: str | None = None) -> tuple[int, int]:
    """(height, width) of the marker bar in an image of ``size``: ``size/2 x 2*size`` at 128 px;
    with ``spec.length_code``, the bar at ``corner`` is ``1 + CORNERS.index(corner) / 2`` times as long."""
    side = max(2, round(spec.size * min(size) / _REFERENCE_SIDE))
    width = 2 * side
    if spec.length_code and corner is not None:
        width = round(width * (1 + CORNERS.index(corner) / 2))
    return max(1, side // 2), width


def corner_position(corner: str, size: tuple[int, int], spec: ShortcutSpec) -> tuple[int, int]:
    """Top-left pixel (y, x) of the marker at ``corner``, inset from the edges by half its side."""
    if corner not in CORNERS:
        raise SourceError(f"unknown corner {corner!r}; valid: {', '.join(CORNERS)}")
    h, w = marker_shape(size, spec, corner)
    margin = max(1, marker_shape(size, spec)[1] // 4)
    y0 = margin if corner.startswith("top") else size[0] - margin - h
    x0 = margin if corner.endswith("left") else size[1] - margin - w
    return y0, x0


def class_corner(class_name: str) -> str:
    """The corner owned by a class: ``CORNERS[CLASSES.index(class_name) % 4]``."""
    return CORNERS[_class_index(class_name) % len(CORNERS)]


def choose_shortcut_corner(
    class_name: str, classes: list[str] | tuple[str, ...], probability: float,
    rng: np.random.Generator,
) -> str:
    """The class's corner with ``probability``, else the corner of a random other class.

    "Other" classes are those of ``classes`` (the data set) whose corner differs; with none
    (a one-class data set) the marker stays at the class's own corner.
    """
    own = class_corner(class_name)
    others = sorted({class_corner(c) for c in classes} - {own}, key=CORNERS.index)
    if rng.random() < probability or not others:
        return own
    return others[rng.integers(len(others))]


# ----------------------------------------------------------------------------- the generator


def _to_uint8(image: np.ndarray) -> np.ndarray:
    return np.round(np.clip(image, 0.0, 1.0) * 255.0).astype(np.uint8)


def generate_micrograph(
    class_name: str,
    size: tuple[int, int],
    rng: np.random.Generator,
    condition: Condition = Condition(),
    specimen_params: dict | None = None,
    shortcut_position: tuple[int, int] | None = None,
    shortcut: ShortcutSpec | None = None,
    shortcut_corner: str | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """One micrograph and its mask, both uint8 (H, W); see the module docstring.

    ``specimen_params`` come from :func:`draw_specimen_params` (drawn from ``rng`` when None,
    i.e. the image is its own specimen). ``shortcut_position`` is the marker's top-left
    (y, x); when None and ``shortcut`` is set, the marker sits at ``shortcut_corner``, or at a
    corner chosen from ``rng`` among all :data:`CLASSES` with ``shortcut.probability``. Draw
    order: specimen params (if drawn), matrix texture, structures, then noise, so a change of
    noise, contrast, brightness or blur leaves the structures and the mask unchanged.
    """
    _class_index(class_name)
    shape = (int(size[0]), int(size[1]))
    params = draw_specimen_params(class_name, rng) if specimen_params is None else specimen_params
    matrix = _MATRIX_LEVEL + _MATRIX_TEXTURE * smooth_noise(shape, 6.0 * condition.scale, rng)
    structure = _DRAWERS[class_name](shape, params, condition.scale, rng)
    soft = ndimage.gaussian_filter(structure.astype(np.float32), _EDGE_SIGMA)
    image = matrix + condition.contrast * _STRUCTURE_CONTRAST * soft + condition.brightness
    if condition.blur_sigma > 0:
        image = ndimage.gaussian_filter(image, condition.blur_sigma)
    if condition.noise_std > 0:
        image = image + rng.normal(0.0, condition.noise_std, size=shape)
    image = _to_uint8(image)
    mask = structure.astype(np.uint8)
    if shortcut is not None:
        if shortcut_position is None:
            shortcut_corner = shortcut_corner or choose_shortcut_corner(class_name, CLASSES, shortcut.probability,
                                                                         rng)
            shortcut_position = corner_position(shortcut_corner, shape, shortcut)
        _overlay_marker(image, mask, shortcut_position, marker_shape(shape, shortcut, shortcut_corner), shortcut)
    return image, mask


def _overlay_marker(
    image: np.ndarray, mask: np.ndarray, top_left: tuple[int, int], hw: tuple[int, int],
    spec: ShortcutSpec,
) -> None:
    """Burn the marker bar into ``image`` and label its pixels 2 in ``mask`` (in place)."""
    y0, x0 = top_left
    region = (slice(max(y0, 0), max(y0 + hw[0], 0)), slice(max(x0, 0), max(x0 + hw[1], 0)))
    image[region] = _to_uint8(np.float64(spec.intensity))
    mask[region] = 2


# ----------------------------------------------------------------------------- the source


class SyntheticConfig(BaseModel):
    """Configuration of a synthetic data set: classes x specimens x images under one condition.

    ``um_per_px`` is the nominal pixel size at ``condition.scale == 1``. ``scale`` is a
    magnification change (structures of fixed physical size look ``scale`` times larger),
    so each sample reports ``um_per_px / condition.scale``.
    """

    model_config = ConfigDict(extra="forbid")

    kind: Literal["synthetic"] = "synthetic"
    classes: list[str] = Field(default_factory=lambda: list(CLASSES), min_length=1)
    images_per_specimen: int = Field(4, ge=1)
    specimens_per_class: int = Field(6, ge=1)
    size: tuple[int, int] = (128, 128)
    seed: int = Field(0, ge=0)
    condition: Condition = Field(default_factory=Condition)
    condition_name: str = "default"
    um_per_px: float = Field(0.1, gt=0)
    shortcut: ShortcutSpec | None = None
    # left out of dumps when unset, so configs (and config hashes) written before it stay the same
    splits: SpecimenSplits | None = Field(None, exclude_if=lambda v: v is None,
                                          description="specimens per class in train/val/test (default: ingest "
                                                      "splits by specimen itself)")

    @model_validator(mode="after")
    def _splits_cover_specimens(self) -> "SyntheticConfig":
        s = self.splits
        if s is not None and s.train + s.val + s.test != self.specimens_per_class:
            raise ValueError(f"splits {s.train} + {s.val} + {s.test} specimens must add up to specimens_per_class "
                             f"({self.specimens_per_class})")
        if self.shortcut is not None and self.shortcut.test_probability is not None and s is None:
            raise ValueError("shortcut.test_probability needs splits (which specimens are test), e.g. "
                             "splits: {train: 3, val: 1, test: 2}")
        return self

    @field_validator("classes")
    @classmethod
    def _known_classes(cls, classes: list[str]) -> list[str]:
        unknown = [c for c in classes if c not in CLASSES]
        if unknown:
            raise ValueError(f"unknown class(es) {unknown}; valid: {', '.join(CLASSES)}")
        if len(set(classes)) != len(classes):
            raise ValueError(f"classes must be unique, got {classes}")
        return classes

    @field_validator("size")
    @classmethod
    def _big_enough(cls, size: tuple[int, int]) -> tuple[int, int]:
        if min(size) < 32:
            raise ValueError(f"size (height, width) must be >= 32 px each, got {size}")
        return size


_ID_PATTERN = re.compile(r"^(?P<cls>[a-z]+)-s(?P<specimen>\d+)-i(?P<image>\d+)$")


@SOURCES.register("synthetic")
class SyntheticSource(ImageSource):
    """Samples of :func:`generate_micrograph`, with ids like ``particles-s03-i01``.

    Reading regenerates a sample from its id; the last few (image, mask) pairs are kept in a
    small per-instance cache so ``read`` then ``read_mask`` generate once. The cache and its
    lock are dropped when pickled (and rebuilt empty), so the source ships to Dask workers
    as its config only.
    """

    kind: ClassVar[str] = "synthetic"
    Config: ClassVar[type[SyntheticConfig]] = SyntheticConfig
    mask_classes = MASK_CLASSES
    cache_size: ClassVar[int] = 8

    def __init__(self, config: SyntheticConfig) -> None:
        self.config = config
        self._cache: OrderedDict[str, tuple[np.ndarray, np.ndarray]] = OrderedDict()
        self._lock = threading.Lock()

    def __getstate__(self) -> dict[str, Any]:
        return {"config": self.config}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__init__(state["config"])

    # -- listing

    def _id(self, class_name: str, specimen: int, image: int) -> str:
        sw = max(2, len(str(self.config.specimens_per_class - 1)))
        iw = max(2, len(str(self.config.images_per_specimen - 1)))
        return f"{class_name}-s{specimen:0{sw}d}-i{image:0{iw}d}"

    def _corner(self, class_name: str, specimen: int, image: int) -> str | None:
        """The marker's corner for one sample (its own random stream), or None without shortcut."""
        spec = self.config.shortcut
        if spec is None:
            return None
        rng = sample_rng(
            self.config.seed, _STREAM_SHORTCUT, _class_index(class_name), specimen, image
        )
        probability = spec.probability_in(self._split(specimen))
        return choose_shortcut_corner(class_name, self.config.classes, probability, rng)

    def _split(self, specimen: int) -> str | None:
        """The split of a specimen when the config gives splits, else None (ingest decides)."""
        return None if self.config.splits is None else self.config.splits.of(specimen)

    def list_samples(self) -> list[SampleRef]:
        cfg = self.config
        refs = []
        for class_name in cfg.classes:
            for specimen in range(cfg.specimens_per_class):
                for image in range(cfg.images_per_specimen):
                    sample_id = self._id(class_name, specimen, image)
                    corner = self._corner(class_name, specimen, image)
                    refs.append(
                        SampleRef(
                            id=sample_id,
                            uri=f"synthetic://seed={cfg.seed}/{sample_id}",
                            label=class_name,
                            group=sample_id.rsplit("-", 1)[0],
                            um_per_px=cfg.um_per_px / cfg.condition.scale,
                            metadata={
                                "condition": cfg.condition_name,
                                "shortcut_position": corner or "none",
                                # 1: the marker sits at this class's corner (the shortcut
                                # predicts the label); 0: no marker, or another class's corner
                                "has_shortcut": float(corner == class_corner(class_name)),
                                **({} if cfg.splits is None else {"split": self._split(specimen)}),
                            },
                        )
                    )
        return refs

    # -- reading

    def _parse(self, ref: SampleRef) -> tuple[str, int, int]:
        """(class, specimen, image) of a sample id; raises :class:`SourceError` if not ours."""
        match = _ID_PATTERN.match(ref.id)
        cfg = self.config
        if (
            match is None
            or match["cls"] not in cfg.classes
            or int(match["specimen"]) >= cfg.specimens_per_class
            or int(match["image"]) >= cfg.images_per_specimen
        ):
            raise SourceError(
                f"{ref.id!r} is not a sample of this synthetic source "
                f"(classes {cfg.classes}, {cfg.specimens_per_class} specimens x "
                f"{cfg.images_per_specimen} images)"
            )
        return match["cls"], int(match["specimen"]), int(match["image"])

    def _generate(
        self, class_name: str, specimen: int, image: int
    ) -> tuple[np.ndarray, np.ndarray]:
        cfg = self.config
        k = _class_index(class_name)
        params = draw_specimen_params(
            class_name, sample_rng(cfg.seed, _STREAM_SPECIMEN, k, specimen)
        )
        return generate_micrograph(
            class_name,
            cfg.size,
            sample_rng(cfg.seed, _STREAM_IMAGE, k, specimen, image),
            condition=cfg.condition,
            specimen_params=params,
            shortcut=cfg.shortcut,
            shortcut_corner=self._corner(class_name, specimen, image),
        )

    def _sample(self, ref: SampleRef) -> tuple[np.ndarray, np.ndarray]:
        """(image, mask) of a sample, from the cache or freshly generated."""
        key = self._parse(ref)
        with self._lock:
            if ref.id in self._cache:
                self._cache.move_to_end(ref.id)
                return self._cache[ref.id]
        pair = self._generate(*key)
        with self._lock:
            self._cache[ref.id] = pair
            while len(self._cache) > self.cache_size:
                self._cache.popitem(last=False)
        return pair

    def read(self, ref: SampleRef) -> np.ndarray:
        return self._sample(ref)[0].copy()

    def read_mask(self, ref: SampleRef) -> np.ndarray:
        return self._sample(ref)[1].copy()

    def describe(self) -> str:
        cfg = self.config
        c = cfg.condition
        shortcut = (
            "none"
            if cfg.shortcut is None
            else f"bar p={cfg.shortcut.probability:g} size={cfg.shortcut.size}"
            + ("" if cfg.shortcut.test_probability is None else f" test p={cfg.shortcut.test_probability:g}")
            + (" length-coded" if cfg.shortcut.length_code else "")
        )
        splits = "" if cfg.splits is None else (f"; splits given: {cfg.splits.train}/{cfg.splits.val}/"
                                                f"{cfg.splits.test} specimens per class (train/val/test)")
        return (
            f"synthetic seed={cfg.seed}: {len(cfg.classes)} classes x "
            f"{cfg.specimens_per_class} specimens x {cfg.images_per_specimen} images, "
            f"{cfg.size[0]}x{cfg.size[1]} px; condition {cfg.condition_name!r} "
            f"(noise_std={c.noise_std:g}, contrast={c.contrast:g}, brightness={c.brightness:g}, "
            f"blur_sigma={c.blur_sigma:g}, scale={c.scale:g}); shortcut {shortcut}{splits}"
        )
