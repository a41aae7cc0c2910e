"""Reading micrograph files (PNG, JPEG, TIFF) into 2-D arrays, with errors that name the file."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from xaiflow.sources.base import SourceError

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp")
_TIFF = (".tif", ".tiff")

#: the default pixel limit of one decoded image (``source.max_pixels``): 100 MP, 100 MB as uint8;
#: a micrograph is rarely over 30 MP, and a decompression bomb (a few KB of PNG declaring 30000 x
#: 30000 px) is refused from its header, before a byte is decoded
DEFAULT_MAX_PIXELS = 100_000_000
# Pillow's own bomb check (a warning from 89 MP, an error from 179 MP) would refuse large panoramas
# that a config allows: every decode goes through read_image, which checks the declared size first
Image.MAX_IMAGE_PIXELS = None


def image_shape(path: Path) -> tuple[int, int]:
    """(height, width) from the file header, without decoding the pixels."""
    try:
        if path.suffix.lower() in _TIFF:
            import tifffile

            with tifffile.TiffFile(path) as tif:
                shape = tif.pages[0].shape
            return int(shape[0]), int(shape[1])
        with Image.open(path) as im:
            return im.height, im.width
    except FileNotFoundError:
        raise SourceError(f"{path}: file not found") from None
    except (UnidentifiedImageError, OSError, ValueError, IndexError) as e:
        raise SourceError(f"{path}: not a readable image ({e})") from None


def to_gray(arr: np.ndarray, path: Path) -> np.ndarray:
    """Collapse channels to one: R=G=B images keep one channel, colour images use luminance."""
    if arr.ndim == 2:
        return arr
    if arr.ndim == 3 and arr.shape[-1] in (3, 4):
        rgb = arr[..., :3]
        if np.array_equal(rgb[..., 0], rgb[..., 1]) and np.array_equal(rgb[..., 0], rgb[..., 2]):
            return np.ascontiguousarray(rgb[..., 0])
        gray = rgb.astype(np.float32) @ np.array([0.2126, 0.7152, 0.0722], np.float32)
        return gray.astype(arr.dtype) if np.issubdtype(arr.dtype, np.integer) else gray
    raise SourceError(f"{path}: unsupported image layout {arr.shape} (expected 2-D gray or RGB)")


def check_size(path: Path, max_pixels: int, field: str = "source.max_pixels") -> tuple[int, int]:
    """The declared (height, width) of an image file, refused (naming the file, its size and the limit)
    when it exceeds ``max_pixels``: read from the header, nothing is decoded."""
    h, w = image_shape(path)
    if h * w > max_pixels:
        raise SourceError(f"{path}: the image declares {h} x {w} = {h * w:,} pixels, more than {field} = "
                          f"{max_pixels:,}; raise {field} if the file is trusted")
    return h, w


def decode(path: Path, adapt: Callable[[Image.Image], Image.Image], what: str = "image") -> np.ndarray:
    """The pixels of an image file as stored (TIFF: the first page; others through PIL, ``adapt``
    choosing the mode), every decoder failure a :class:`SourceError` naming the file. Call
    :func:`check_size` first."""
    try:
        if path.suffix.lower() in _TIFF:
            import tifffile

            return tifffile.imread(path, key=0)
        with Image.open(path) as im:
            im.load()
            return np.asarray(adapt(im))
    except FileNotFoundError:
        raise SourceError(f"{path}: file not found") from None
    except Exception as e:  # decoders raise many types (OSError, SyntaxError, zlib.error, ...)
        raise SourceError(f"{path}: cannot decode {what} ({type(e).__name__}: {e})") from None


def _as_rgb(im: Image.Image) -> Image.Image:
    return im.convert("RGB") if im.mode in ("P", "PA", "LA", "RGBA", "CMYK", "YCbCr") else im


def read_image(path: Path, max_pixels: int = DEFAULT_MAX_PIXELS) -> np.ndarray:
    """Decode an image file to a 2-D uint8, uint16 or float32 array, after :func:`check_size`."""
    check_size(path, max_pixels)
    arr = to_gray(decode(path, _as_rgb), path)
    if arr.dtype == bool:
        arr = arr.astype(np.uint8) * 255
    if arr.dtype not in (np.uint8, np.uint16):
        arr = arr.astype(np.float32)
    return arr
