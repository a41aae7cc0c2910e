"""Classic texture descriptors: grey-level co-occurrence statistics and local binary patterns.

They are the hand-made baseline that CNN features are compared with (Ling et al. 2017;
DeCost et al. 2017 used the same kind of baseline on the UHCS micrographs). Both work on
each image after a per-image robust contrast stretch (:func:`normalize_images`), so they
describe the structure rather than the brightness of an acquisition session, and both are
rotation-averaged: micrographs have no preferred orientation.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from xaiflow.features.base import FEATURES, FeatureError, FeatureExtractor, normalize_images

GLCM_PROPS = ("contrast", "dissimilarity", "homogeneity", "energy", "correlation", "ASM")


def _positive_ints(name: str, extractor: str, values: Sequence[int]) -> list[int]:
    out = list(values)
    if not out or any(isinstance(v, bool) or not isinstance(v, int) or v < 1 for v in out):
        raise FeatureError(f"{extractor}: {name} must be a non-empty list of positive integers, got {values!r}")
    return out


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

    def __init__(self, distances: Sequence[int] = (1, 2, 4, 8), angles: int = 4, levels: int = 32,
                 props: Sequence[str] = GLCM_PROPS) -> None:
        super().__init__(distances=distances, angles=angles, levels=levels, props=props)
        self.distances = _positive_ints("distances", self.name, distances)
        if isinstance(angles, bool) or not isinstance(angles, int) or angles < 1:
            raise FeatureError(f"glcm: angles must be a positive integer, got {angles!r}")
        if isinstance(levels, bool) or not isinstance(levels, int) or not 2 <= levels <= 256:
            raise FeatureError(f"glcm: levels must be an integer in 2..256, got {levels!r}")
        unknown = [p for p in props if p not in GLCM_PROPS]
        if unknown or not props:
            raise FeatureError(f"glcm: unknown props {unknown or props!r}; valid: {list(GLCM_PROPS)}")
        self.props = list(props)
        self.angles = [np.pi * i / angles for i in range(angles)]
        self.levels = levels

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

    def __init__(self, radii: Sequence[int] = (1, 2, 3), points_per_radius: int = 8) -> None:
        super().__init__(radii=radii, points_per_radius=points_per_radius)
        self.radii = _positive_ints("radii", self.name, radii)
        if isinstance(points_per_radius, bool) or not isinstance(points_per_radius, int) or points_per_radius < 4:
            raise FeatureError(f"lbp: points_per_radius must be an integer >= 4, got {points_per_radius!r}")
        self.points = [points_per_radius * r for r in self.radii]

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
