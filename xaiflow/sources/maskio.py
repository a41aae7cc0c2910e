"""Reading expert label images (segmentation masks) into class indices, with errors that name the file.

A lab's masks come in several encodings, declared in the config (``source.masks``):

* ``index``: the pixel value is the class index (0 = the first class in ``classes``);
* ``binary``: two classes, background 0 and foreground 255 (or 1), e.g. a thresholded mask
  saved by an image editor;
* an explicit ``values`` table, pixel value -> class name (``{0: matrix, 128: carbide, 255: pores}``).

Every mask becomes a uint8 array of class indices. A pixel value the encoding does not declare
is an error naming the file, the value(s) and the declared classes: a silently
misread mask would make every localization number wrong. Palette PNGs (the usual format of
segmentation label images) are read as their palette indices, not as colours; the declared
size is checked from the header before anything is decoded, as for micrographs.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from xaiflow.sources.base import SourceError
from xaiflow.sources.imageio import check_size, decode, to_gray

#: largest pixel value a ``values`` table may name (16-bit label images)
MAX_LABEL_VALUE = 65535


def value_table(classes: list[str], encoding: str, values: dict[int, str] | None = None) -> dict[int, int]:
    """Pixel value -> class index for an encoding (``index``, ``binary``) or an explicit ``values`` table."""
    if values:
        index = {c: i for i, c in enumerate(classes)}
        return {int(v): index[name] for v, name in values.items()}
    if encoding == "binary":
        return {0: 0, 1: 1, 255: 1}
    return {i: i for i in range(len(classes))}


def _describe(classes: list[str], table: dict[int, int]) -> str:
    return ", ".join(f"{v} = {classes[i]}" for v, i in sorted(table.items()))


def _label_mode(im: Image.Image) -> Image.Image:
    """Palette images keep their indices; alpha is dropped; colour spaces become RGB (refused later
    unless gray)."""
    if im.mode in ("PA", "LA"):
        return im.getchannel(0)  # the index / gray channel, without alpha
    return im.convert("RGB") if im.mode in ("RGBA", "CMYK", "YCbCr") else im


def read_label_image(path: Path, max_pixels: int, field: str = "source.max_pixels") -> np.ndarray:
    """Decode a label image to a 2-D integer array of raw pixel values (palette indices for
    palette images), after :func:`~xaiflow.sources.imageio.check_size`."""
    check_size(path, max_pixels, field)
    arr = decode(path, _label_mode, "mask image")
    if arr.ndim == 3 and arr.shape[-1] in (3, 4):
        rgb = arr[..., :3]
        if not (np.array_equal(rgb[..., 0], rgb[..., 1]) and np.array_equal(rgb[..., 0], rgb[..., 2])):
            raise SourceError(f"{path}: colour mask image; save masks as gray or palette images whose pixel "
                              "values are the class values (see source.masks.encoding)")
    arr = to_gray(arr, path)
    if arr.dtype == bool:
        return arr.astype(np.uint8)
    if arr.dtype.kind == "f":
        if not np.all(np.isfinite(arr)) or not np.array_equal(arr, np.round(arr)):
            raise SourceError(f"{path}: mask values must be whole numbers (class values), got floating point")
        arr = arr.astype(np.int64)
    if arr.dtype.kind not in "ui":
        raise SourceError(f"{path}: unsupported mask dtype {arr.dtype}")
    return arr


def to_class_indices(raw: np.ndarray, classes: list[str], table: dict[int, int], path: Path) -> np.ndarray:
    """Raw pixel values -> uint8 class indices; undeclared values are an error naming them."""
    found = np.unique(raw)
    bad = [int(v) for v in found if int(v) not in table]
    if bad:
        shown = ", ".join(map(str, bad[:8])) + (" ..." if len(bad) > 8 else "")
        hint = "; for 0/255 masks set source.masks.encoding: binary" if bad == [255] else ""
        raise SourceError(f"{path}: mask value(s) {shown} not declared; declared values: "
                          f"{_describe(classes, table)} (classes {classes}; see source.masks encoding/values{hint})")
    lut = np.zeros(int(found.max()) + 1 if found.size else 1, np.uint8)
    for v, i in table.items():
        if v < len(lut):
            lut[v] = i
    return lut[raw]
