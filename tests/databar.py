"""A folder collection whose class is written only in the *content* of a fixed SEM-style data bar.

Each 48 x 48 micrograph is a textured matrix with bright blobs (mask class ``structure``) whose
number, size and placement are drawn the same way for every class, so they carry no class
information; the bottom 8 rows are a dark data bar (mask class ``databar``) at the same place in
every image, holding a bright scale bar whose *length* encodes the class (like a scale bar at
a class-specific magnification). With ``randomized=True`` the length is drawn independently of
the class: the same images, with the bar's content meaning nothing.

Written as PNG images, mask PNGs (class indices 0 matrix, 1 structure, 2 databar) and a
``labels.csv`` (file, label, specimen) for the ``folder`` source (:func:`databar_config`).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image
from scipy import ndimage

CLASSES = ("ferrite", "pearlite", "martensite")
MASK_CLASSES = ["matrix", "structure", "databar"]
SIZE = 48
#: first row of the data bar
BAR_TOP = 40
#: scale-bar length (px) per class index
BAR_LENGTHS = (6, 18, 30)


def _micrograph(rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """A class-free micrograph (float image in [0, 255], uint8 mask) above the bar."""
    h = BAR_TOP
    texture = ndimage.gaussian_filter(rng.normal(0, 1, (h, SIZE)), 1.5)
    image = 90 + 60 * texture / (texture.std() + 1e-6)
    yy, xx = np.mgrid[:h, :SIZE]
    mask = np.zeros((h, SIZE), np.uint8)
    for _ in range(rng.integers(3, 7)):
        cy, cx, r = rng.uniform(0, h), rng.uniform(0, SIZE), rng.uniform(2, 5)
        mask[(yy - cy) ** 2 + (xx - cx) ** 2 <= r * r] = 1
    image = image + 70 * ndimage.gaussian_filter(mask.astype(float), 0.7)
    return image, mask


def _bar(length: int, rng: np.random.Generator) -> np.ndarray:
    """The data bar: dark band, a bright scale bar of ``length`` px from x=4, faint noise."""
    bar = 20 + rng.normal(0, 3, (SIZE - BAR_TOP, SIZE))
    bar[3:5, 4:4 + length] = 235
    return bar


def write_databar_collection(root: Path, *, randomized: bool = False, specimens_per_class: int = 8,
                             images_per_specimen: int = 3, seed: int = 0) -> Path:
    """Write the collection into ``root`` (images in ``img/``, masks in ``masks/``, ``labels.csv``)."""
    rng = np.random.default_rng([seed, int(randomized)])
    (root / "img").mkdir(parents=True, exist_ok=True)
    (root / "masks").mkdir(parents=True, exist_ok=True)
    rows = ["file,label,specimen"]
    for k, label in enumerate(CLASSES):
        for s in range(specimens_per_class):
            for i in range(images_per_specimen):
                top, mask = _micrograph(rng)
                length = BAR_LENGTHS[rng.integers(len(BAR_LENGTHS)) if randomized else k]
                image = np.clip(np.concatenate([top, _bar(length, rng)]), 0, 255).astype(np.uint8)
                full_mask = np.concatenate([mask, np.full((SIZE - BAR_TOP, SIZE), 2, np.uint8)])
                name = f"{label}_{s}_{i}"
                Image.fromarray(image).save(root / "img" / f"{name}.png")
                Image.fromarray(full_mask).save(root / "masks" / f"{name}.png")
                rows.append(f"img/{name}.png,{label},{label}-{s}")
    (root / "labels.csv").write_text("\n".join(rows) + "\n")
    return root


def databar_config(root: Path, name: str = "bar") -> dict:
    """The dataset config mapping of a collection written by :func:`write_databar_collection`."""
    return {"name": name,
            "source": {"kind": "folder", "root": str(root), "csv": "labels.csv",
                       "columns": {"file": "file", "label": "label", "group": "specimen"},
                       "masks": {"dir": "masks", "classes": MASK_CLASSES}},
            "geometry": {"size": [SIZE, SIZE]}, "chunk_size": 16}
