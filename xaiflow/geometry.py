"""From a source image to a fixed-shape sample: window planning, resampling, dtype.

The window (in source pixels) is recorded with every sample so that a saliency map of
the sample can be mapped back onto its source image (see the ``tile_*`` coordinates).
"""

from __future__ import annotations

import math

import numpy as np
from PIL import Image

from xaiflow.config import GeometryConfig
from xaiflow.sources.base import SourceError, Window


def plan_window(height: int, width: int, um_per_px: float, geom: GeometryConfig, name: str) -> Window:
    """The centred source window that becomes the sample (see :class:`GeometryConfig`)."""
    th, tw = geom.size
    if geom.mode == "crop":
        wh, ww = th, tw
    elif geom.target_um_per_px is not None:
        if not (um_per_px > 0):
            raise SourceError(f"{name}: target_um_per_px needs the image's um_per_px, which is missing")
        factor = geom.target_um_per_px / um_per_px
        wh, ww = round(th * factor), round(tw * factor)
    else:
        scale = min(height / th, width / tw)
        wh, ww = max(1, math.floor(th * scale)), max(1, math.floor(tw * scale))
    if wh > height or ww > width:
        what = (f"the field of view {th}x{tw} px at {geom.target_um_per_px} um/px needs {wh}x{ww} source px"
                if geom.target_um_per_px is not None else f"the requested crop {wh}x{ww} px")
        raise SourceError(f"{name}: image of {height}x{width} px is smaller than {what}")
    return Window((height - wh) // 2, (width - ww) // 2, wh, ww)


def resample(arr: np.ndarray, window: Window, size: tuple[int, int], nearest: bool = False) -> np.ndarray:
    """Cut ``window`` out of ``arr`` and resample it to ``size`` (antialiased when shrinking).

    Masks use nearest-neighbour so class indices stay class indices.
    """
    th, tw = size
    cut = arr[window.y0:window.y0 + window.h, window.x0:window.x0 + window.w]
    if cut.shape == (th, tw):
        return np.ascontiguousarray(cut)
    if nearest or arr.dtype == np.uint8:
        img = Image.fromarray(np.ascontiguousarray(cut))
        out = img.resize((tw, th), Image.Resampling.NEAREST if nearest else Image.Resampling.BILINEAR)
        return np.asarray(out)
    img = Image.fromarray(np.ascontiguousarray(cut, dtype=np.float32), mode="F")
    out = np.asarray(img.resize((tw, th), Image.Resampling.BILINEAR))
    if arr.dtype == np.uint16:
        return np.clip(np.rint(out), 0, 65535).astype(np.uint16)
    return out.astype(np.float32)


def convert_dtype(arr: np.ndarray, dtype: str) -> np.ndarray:
    """Convert to the dataset dtype, scaling by the integer range (uint16 -> uint8 divides by 257)."""
    target = np.dtype(dtype)
    if arr.dtype == target:
        return arr
    if arr.dtype == np.uint16 and target == np.uint8:
        return (arr.astype(np.uint32) // 257).astype(np.uint8)
    if arr.dtype == np.uint8 and target == np.uint16:
        return arr.astype(np.uint16) * 257
    if target == np.float32:
        scale = float(np.iinfo(arr.dtype).max) if np.issubdtype(arr.dtype, np.integer) else 1.0
        return (arr.astype(np.float32) / scale).astype(np.float32)
    # float source into an integer dataset: values are taken as fractions of the range
    hi = np.iinfo(target).max
    return np.clip(np.rint(np.asarray(arr, np.float32) * hi), 0, hi).astype(target)
