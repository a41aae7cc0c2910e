"""Classic texture descriptors: grey-level co-occurrence statistics and local binary patterns.

They are the hand-made baseline that CNN features are compared with (Ling et al. 2017;
DeCost et al. 2017 used the same kind of baseline on the UHCS micrographs). Both work on
each image after a per-image robust contrast stretch (:func:`normalize_images`), so they
describe the structure rather than the brightness of an acquisition session, and both are
rotation-averaged: micrographs have no preferred orientation.
"""

from __future__ import annotations

from typing import Literal

import numpy as np
from pydantic import Field, PositiveInt, StrictInt

from xaiflow.features.base import FEATURES, FeatureExtractor, FeatureParams, normalize_images

GLCM_PROPS = ("contrast", "dissimilarity", "homogeneity", "energy", "correlation", "ASM")
GlcmProp = Literal["contrast", "dissimilarity", "homogeneity", "energy", "correlation", "ASM"]


class GLCMParams(FeatureParams):
    distances: list[PositiveInt] = Field([1, 2, 4, 8], min_length=1, description="pixel distances of the pairs")
    angles: PositiveInt = Field(4, description="directions, evenly spread over 180 degrees (averaged)")
    levels: StrictInt = Field(32, ge=2, le=256, description="grey levels the stretched image is quantized to")
    props: list[GlcmProp] = Field(list(GLCM_PROPS), min_length=1, description="Haralick statistics (graycoprops)")


class LBPParams(FeatureParams):
    radii: list[PositiveInt] = Field([1, 2, 3], min_length=1, description="radii R in px")
    points_per_radius: StrictInt = Field(8, ge=4, description="neighbours per unit radius (P = this * R)")


@FEATURES.register("glcm")
class GLCM(FeatureExtractor):
    """Haralick statistics of the grey-level co-occurrence matrix (Haralick et al. 1973).

    Each image is stretched to [0, 1] and quantized to ``levels`` grey levels; the
    symmetric, normalized co-occurrence matrix is computed (``skimage.feature.graycomatrix``)
    for every distance in ``distances`` (px) and ``angles`` directions evenly spread over
    180 degrees; each property of ``props`` (``skimage.feature.graycoprops``) is averaged
    over the directions. Features: ``len(props) * len(distances)``, labelled
    ``<prop>_d<distance>``, family ``glcm/<prop>``.
    """

    name = "glcm"
    citation = "Haralick, Shanmugam, Dinstein 1973, IEEE Trans. SMC 3:610 (doi:10.1109/TSMC.1973.4309314)"
    Params = GLCMParams
    params: GLCMParams

    def __init__(self, **params: object) -> None:
        super().__init__(**params)
        self.distances, self.props = list(self.params.distances), list(self.params.props)
        self.levels = self.params.levels
        self.angles = [np.pi * i / self.params.angles for i in range(self.params.angles)]

    def feature_labels(self) -> list[str]:
        return [f"{p}_d{d}" for p in self.props for d in self.distances]

    def feature_families(self) -> list[str]:
        return [f"glcm/{p}" for p in self.props for _ in self.distances]

    def compute(self, images: np.ndarray) -> np.ndarray:
        from skimage.feature import graycomatrix, graycoprops

        quantized = np.minimum((normalize_images(images) * self.levels).astype(np.uint8), self.levels - 1)
        out = np.empty((len(images), len(self.props) * len(self.distances)), np.float64)
        for i, img in enumerate(quantized):
            glcm = graycomatrix(img, self.distances, self.angles, levels=self.levels, symmetric=True, normed=True)
            # (distances, angles) per prop -> mean over angles
            out[i] = np.concatenate([graycoprops(glcm, p).mean(axis=1) for p in self.props])
        return out


@FEATURES.register("lbp")
class LBP(FeatureExtractor):
    """Histograms of rotation-invariant uniform local binary patterns (Ojala et al. 2002).

    For every radius ``R`` in ``radii`` (px), ``P = points_per_radius * R`` neighbours are
    compared with the centre (``skimage.feature.local_binary_pattern``, method
    ``"uniform"``: the ``P + 1`` uniform patterns and one bin for all others); the
    normalized histogram of the ``P + 2`` codes is the feature vector. Features are
    labelled ``r<R>_u<code>``, family ``lbp/r<R>``.
    """

    name = "lbp"
    citation = ("Ojala, Pietikainen, Maenpaa 2002, IEEE TPAMI 24:971, multiresolution gray-scale and "
                "rotation invariant texture classification with local binary patterns (doi:10.1109/TPAMI.2002.1017623)")
    Params = LBPParams
    params: LBPParams

    def __init__(self, **params: object) -> None:
        super().__init__(**params)
        self.radii = list(self.params.radii)
        self.points = [self.params.points_per_radius * r for r in self.radii]

    def feature_labels(self) -> list[str]:
        return [f"r{r}_u{c}" for r, p in zip(self.radii, self.points) for c in range(p + 2)]

    def feature_families(self) -> list[str]:
        return [f"lbp/r{r}" for r, p in zip(self.radii, self.points) for _ in range(p + 2)]

    def compute(self, images: np.ndarray) -> np.ndarray:
        from skimage.feature import local_binary_pattern

        grey = np.round(normalize_images(images) * 255).astype(np.uint8)
        rows = []
        for img in grey:
            hists = []
            for r, p in zip(self.radii, self.points):
                codes = local_binary_pattern(img, p, r, method="uniform").astype(np.int64)
                hists.append(np.bincount(codes.ravel(), minlength=p + 2)[:p + 2] / codes.size)
            rows.append(np.concatenate(hists))
        return np.asarray(rows, np.float64).reshape(len(images), -1)
