"""Superpixel LIME (Ribeiro et al. 2016, "Why should I trust you?"), reimplemented.

``lime`` cuts the image into superpixels, switches random subsets of them off (replaced by
their mean, or a constant), scores each perturbed image with the model, and fits a
weighted linear surrogate: the class probability as a function of which superpixels are
on. Each pixel's value in the map is its superpixel's surrogate weight.

This is the algorithm of ``lime.lime_image.LimeImageExplainer.explain_instance``, step
for step and draw for draw, so that with the same segmentation and seed the weights equal
lime's ``explanation.local_exp[label]`` (the test suite checks it):

1. ``rng = np.random.RandomState(seed)``; one ``rng.randint(0, 1000)`` is drawn for the
   segmentation (lime does this when no ``random_seed`` is given; it seeds quickshift);
2. the perturbations are ``rng.randint(0, 2, num_samples * n_superpixels)`` reshaped to
   ``(num_samples, n_superpixels)``, first row all ones (the unperturbed image);
3. "off" superpixels are filled with the superpixel's mean per channel (``hide_color=
   "mean"``, lime's ``hide_color=None``) or a constant;
4. sample weights ``sqrt(exp(-d**2 / kernel_width**2))`` with ``d`` the cosine distance
   between each perturbation and the all-ones row;
5. ``Ridge(alpha=1, fit_intercept=True)`` fitted on (perturbations, softmax probability of
   the target class) with those weights; its coefficients are the superpixel weights.

Why not call lime: it builds every perturbed image in a Python loop (a deep copy and one
mask per hidden superpixel) and scores them ``batch_size`` at a time through numpy; here
the perturbed images are built as one tensor operation per batch on the model's device.
(lime also fits an extra ridge model to order the features, which does not change the
weights.) Two lime pitfalls are avoided: superpixels are relabelled 0..n-1 (lime assumes
this; SLIC's default labels start at 1), and grayscale needs no RGB round trip.

Segmentation runs on the image (channel mean) rescaled to [0, 1]:
``"slic"`` (Achanta et al. 2012; ``n_segments``, ``compactness``) or ``"quickshift"``
(Vedaldi & Soatto 2008, on the gray image as RGB in Lab space, lime's default algorithm
with lime's defaults ``kernel_size=4, max_dist=200, ratio=0.2``).
"""

from __future__ import annotations

from typing import Literal

import numpy as np
import torch
from pydantic import Field
from skimage.color import gray2rgb
from skimage.segmentation import quickshift, slic
from sklearn.linear_model import Ridge
from sklearn.metrics import pairwise_distances
from torch import Tensor

from xaiflow.attribution.base import (MAX_PER_PASS, METHODS, AttributionMethod, Cost, MethodParams,
                                      image_values)

#: upper limits of LIME's sample and superpixel counts (the surrogate's design matrix is their product)
MAX_LIME_SAMPLES = 100_000
MAX_SEGMENTS = 10_000


class LimeParams(MethodParams):
    segmentation: Literal["slic", "quickshift"] = Field("slic", description="superpixel algorithm")
    n_segments: int = Field(50, ge=1, le=MAX_SEGMENTS, description="slic: approximate number of superpixels")
    compactness: float = Field(
        0.1, gt=0, description="slic: shape regularity versus intensity fit (image scaled to [0, 1])"
    )
    kernel_size: float = Field(4.0, gt=0, description="quickshift: width of the density kernel (pixels)")
    max_dist: float = Field(200.0, gt=0, description="quickshift: cut-off distance of the hierarchy")
    ratio: float = Field(0.2, ge=0, le=1, description="quickshift: balance of color versus space")
    num_samples: int = Field(500, ge=2, le=MAX_LIME_SAMPLES,
                             description="number of perturbed images (the first is the image itself)")
    batch_size: int = Field(64, ge=1, le=MAX_PER_PASS, description="perturbed images per forward pass (bounds memory)")
    hide_color: Literal["mean"] | float = Field(
        "mean", description="fill of switched-off superpixels: 'mean' (the superpixel's own mean) or a constant"
    )
    kernel_width: float = Field(0.25, gt=0, description="width of the exponential kernel on cosine distance")
    seed: int = Field(0, description="seed of the numpy RandomState drawing the perturbations")


@METHODS.register("lime")
class LimeMethod(AttributionMethod):
    """Superpixel LIME (Ribeiro et al. 2016), equal to lime's ``LimeImageExplainer`` weights."""

    name = "lime"
    batch_param = "batch_size"
    quick_params = {"num_samples": 60, "n_segments": 12}
    Params = LimeParams
    params: LimeParams
    libraries = ("scikit-learn", "scikit-image")

    memory_param = "num_samples"

    def cost(self, image_shape: tuple[int, ...]) -> Cost:
        return Cost(self.params.num_samples, "fwd")

    def extra_bytes(self, images_per_call: int, image_shape: tuple[int, ...]) -> int:
        # the surrogate's design matrix (samples x superpixels, float64, and its weighted copy), the
        # class probabilities, and one batch of perturbed images
        p = self.params
        return (2 * p.num_samples * p.n_segments * 8 + p.num_samples * 64
                + 2 * p.batch_size * image_values(image_shape) * 4)

    def evals_per_pass(self, images_per_call: int) -> int:
        return self.params.batch_size  # perturbed copies of one image per pass

    def _attribute(self, x: Tensor, target: Tensor) -> Tensor:
        maps = []
        for image, label in zip(x.detach(), target.tolist()):
            segments, weights = self.explain_image(image, label)
            maps.append(torch.from_numpy(weights[segments]).to(device=x.device, dtype=torch.float32))
        return torch.stack(maps)[:, None]

    def segment(self, image: Tensor, seed: int) -> np.ndarray:
        """Superpixel labels ``(H, W)`` int, numbered 0..n-1, for one image ``(C, H, W)``."""
        p = self.params
        gray = image.detach().mean(dim=0).cpu().numpy().astype(np.float64)
        span = gray.max() - gray.min()
        scaled = (gray - gray.min()) / span if span > 0 else np.zeros_like(gray)
        if p.segmentation == "slic":
            labels = slic(scaled, n_segments=p.n_segments, compactness=p.compactness, channel_axis=None, start_label=0)
        else:
            labels = quickshift(
                gray2rgb(scaled), kernel_size=p.kernel_size, max_dist=p.max_dist, ratio=p.ratio, rng=seed
            )
        return np.unique(labels, return_inverse=True)[1].reshape(labels.shape)

    def explain_image(self, image: Tensor, label: int) -> tuple[np.ndarray, np.ndarray]:
        """Superpixels ``(H, W)`` and their LIME weights ``(n_superpixels,)`` float64 for one image."""
        p = self.params
        rng = np.random.RandomState(p.seed)
        segments = self.segment(image, seed=rng.randint(0, high=1000))
        n_features = int(segments.max()) + 1
        data = rng.randint(0, 2, p.num_samples * n_features).reshape((p.num_samples, n_features))
        data[0, :] = 1

        scores = self._score(image, segments, data, label)
        distances = pairwise_distances(data, data[0].reshape(1, -1), metric="cosine").ravel()
        weights = np.sqrt(np.exp(-(distances**2) / p.kernel_width**2))
        surrogate = Ridge(alpha=1, fit_intercept=True).fit(data, scores, sample_weight=weights)
        return segments, surrogate.coef_

    def _fill(self, image: Tensor, segments: np.ndarray) -> Tensor:
        """The image with every superpixel switched off (``hide_color``), ``(C, H, W)``."""
        if self.params.hide_color != "mean":
            return torch.full_like(image, float(self.params.hide_color))
        # per superpixel and channel np.mean of the float32 pixels, exactly as lime computes it
        pixels = image.cpu().numpy()
        filled = np.empty_like(pixels)
        for k in range(int(segments.max()) + 1):
            inside = segments == k
            for c in range(pixels.shape[0]):
                filled[c][inside] = np.mean(pixels[c][inside])
        return torch.from_numpy(filled).to(image.device)

    def _score(self, image: Tensor, segments: np.ndarray, data: np.ndarray, label: int) -> np.ndarray:
        """Softmax probability of ``label`` for each perturbation (rows of ``data``), float32."""
        filled = self._fill(image, segments)
        superpixel = torch.from_numpy(segments).to(image.device)
        on = torch.from_numpy(data.astype(bool)).to(image.device)
        scores = []
        with torch.no_grad():
            for start in range(0, len(data), self.params.batch_size):
                keep = on[start : start + self.params.batch_size][:, superpixel]  # (b, H, W)
                batch = torch.where(keep[:, None], image[None], filled[None])
                scores.append(torch.softmax(self.model(batch), dim=1)[:, label].cpu())
        return torch.cat(scores).numpy()
