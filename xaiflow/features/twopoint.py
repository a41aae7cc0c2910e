"""Radially averaged two-point correlation of a micrograph, computed with the FFT.

The two-point probability function S2(r) (Torquato 2002, Random Heterogeneous Materials,
ch. 2) is the chance that two points a distance r apart both lie in the same phase; it
holds the phase fraction (r = 0), the size of the structures (the decay length) and their
spacing (oscillations, e.g. a pearlite lamella period). Here it is computed for every
displacement at once with the Wiener-Khinchin theorem, with zero padding and division by
the overlap count so that the image is not treated as periodic, then averaged over
directions in 1-px radial bins (micrographs have no preferred orientation).

``phase="otsu"``: the image is thresholded (Otsu) into a bright phase indicator I and the
normalized autocovariance ``(S2(r) - phi^2) / (phi - phi^2)`` is returned (1 at r = 0,
0 for uncorrelated points). ``phase="intensity"``: the same normalized autocovariance of the
grey levels. Features: r = 1 .. ``r_max`` px, labelled ``r<r>``; an image without
contrast (flat, or one phase only) gives all zeros.
"""

from __future__ import annotations

from typing import Literal

import numpy as np
from pydantic import Field, PositiveInt

from xaiflow.features.base import FEATURES, FeatureError, FeatureExtractor, FeatureParams


def radial_autocovariance(fields: np.ndarray, r_max: int) -> np.ndarray:
    """(N, H, W) zero-mean fields -> (N, r_max) mean autocovariance at radius 1..r_max px.

    Non-periodic: the product sum at each displacement is divided by the number of pixel
    pairs that overlap at that displacement.
    """
    n, h, w = fields.shape
    shape = (2 * h, 2 * w)
    spectrum = np.fft.rfft2(fields, s=shape)
    products = np.fft.irfft2(np.abs(spectrum) ** 2, s=shape)
    counts = np.fft.irfft2(np.abs(np.fft.rfft2(np.ones((h, w)), s=shape)) ** 2, s=shape)
    dy = np.fft.fftfreq(shape[0], 1.0 / shape[0])[:, None]
    dx = np.fft.fftfreq(shape[1], 1.0 / shape[1])[None, :]
    radius = np.rint(np.hypot(dy, dx)).astype(np.int64)
    valid = (radius >= 1) & (radius <= r_max) & (counts > 0.5)
    bins = radius[valid] - 1
    per_bin = np.bincount(bins, minlength=r_max)
    cov = products[:, valid] / counts[valid][None, :]
    out = np.stack([np.bincount(bins, weights=row, minlength=r_max) for row in cov])
    return out / np.maximum(per_bin, 1)[None, :]


class TwoPointParams(FeatureParams):
    r_max: PositiveInt = Field(16, description="largest radius in px (at most half the shorter image side)")
    phase: Literal["otsu", "intensity"] = Field("otsu", description="otsu: phase indicator (S2); intensity: grey "
                                                                    "levels")


@FEATURES.register("twopoint")
class TwoPoint(FeatureExtractor):
    """Radially averaged, normalized two-point autocorrelation (see the module docstring).

    Args:
        r_max: largest radius in px (at most half the shorter image side); fixed by the
            parameters, not by the images, so that every chunk gets the same features.
        phase: ``"otsu"`` (phase indicator, Torquato's S2) or ``"intensity"`` (grey levels).
    """

    name = "twopoint"
    citation = "Torquato 2002, Random Heterogeneous Materials (Springer), two-point probability function S2(r)"
    Params = TwoPointParams
    params: TwoPointParams

    def __init__(self, **params: object) -> None:
        super().__init__(**params)
        self.r_max, self.phase = self.params.r_max, self.params.phase

    def feature_labels(self) -> list[str]:
        return [f"r{r}" for r in range(1, self.r_max + 1)]

    def feature_families(self) -> list[str]:
        return [f"twopoint/{self.phase}"] * self.r_max

    def compute(self, images: np.ndarray) -> np.ndarray:
        if 2 * self.r_max > min(images.shape[1:]):
            raise FeatureError(f"twopoint: r_max={self.r_max} px is more than half the image side "
                               f"{min(images.shape[1:])} px; lower r_max")
        x = images.astype(np.float64)
        if self.phase == "otsu":
            from skimage.filters import threshold_otsu

            x = np.stack([(img > threshold_otsu(img)) if img.max() > img.min() else np.zeros(img.shape, bool)
                          for img in x]).astype(np.float64)
        fields = x - x.mean(axis=(1, 2), keepdims=True)
        var = (fields ** 2).mean(axis=(1, 2))
        cov = radial_autocovariance(fields, self.r_max)
        flat = var <= 1e-12
        return np.where(flat[:, None], 0.0, cov / np.where(flat, 1.0, var)[:, None])
