"""ROAD and region perturbation: faithfulness with removed pixels filled from their neighbours.

Deletion to a constant (``deletion``) pushes the image off the data the model knows: the
model's probability then falls (or not) for reasons unrelated to the map, and every method
scores about the same. ROAD (Rong et al. 2022, "A consistent and efficient evaluation strategy
for attribution methods", ICML) removes pixels and fills them by **noisy linear imputation**:
each removed pixel becomes the weighted mean of its 8 neighbours (weight 1/6 for the 4 direct,
1/12 for the 4 diagonal ones; neighbours outside the image do not count), which for a set of
removed pixels is one sparse linear system

    sum_n w_n * (v_p - v_n) = 0   for every removed pixel p (v_n: removed or kept neighbours),

solved per channel (:func:`scipy.sparse.linalg.splu`), plus Gaussian noise of std ``noise``
(in model-input units; :func:`xaiflow.preprocess.to_input` standardises images) on the filled
pixels. The filled image carries little information about where pixels were removed, so a
drop of the probability means the removed pixels mattered.

``road`` scores one map with two curves of the explained class's softmax probability against
the fraction of pixels removed (``fractions``, plus the untouched image at 0):

* MoRF, most relevant first: the top-ranked pixels are removed; a faithful map makes it fall
  fast (``road_morf``, its area: **lower is better**);
* LeRF, least relevant first: the bottom-ranked pixels are removed; a faithful map keeps it
  high (``road_lerf``: **higher is better**);
* ``road``, the headline: ``road_lerf - road_morf``, the LeRF-MoRF gap, which cancels what
  both curves share (the model's confidence, the imputation's own effect) and is the most
  discriminative of the three (**higher is better**; about 0 for an uninformative order).

An area is the trapezoidal area under the curve from 0 to the largest fraction divided by that
fraction: the mean probability over the removal range.

``region_perturbation`` (Samek et al. 2017, "Evaluating the visualization of what a deep
neural network has learned", IEEE TNNLS): the same MoRF removal over SLIC superpixels
(:func:`xaiflow.metrics.faithfulness.superpixels`) ranked by their mean attribution, each
removed region filled by noisy linear imputation (``fill: road``) or by the blurred image
(``fill: blur``). Its headline is Samek's AOPC, the mean over the curve's points of the
probability lost against the untouched image (**higher is better**).

Units with equal attribution (a flat map, an occlusion block) are taken in a random order
seeded per sample (:func:`xaiflow.metrics.faithfulness.attribution_orders`), not in raster
order, so MoRF and LeRF do not depend on where the tied pixels sit.

**Random-order reference** (``random_reference``, on by default): the same curves with the
units in ``n_random`` random orders, seeded per sample (``[seed, index, r]``), averaged over
the orders, stored as ``<name>_random...``: the value of an uninformative map on the same
image, the chance level a method's value is compared with (for ``road`` the random MoRF
order's reverse is its LeRF order). Imputation noise is seeded per sample, curve and step, so
values do not depend on batching.

Cost: one sparse solve per image, curve and fraction; a solve's time grows with the number of
removed pixels and the size of the holes (a few ms for 10% of a 128 px image, 0.15-0.5 s for
90%), which is why ``road`` stops at half the pixels by default (~0.3 s of CPU per 128 px map
with the random reference, against 4-5 s up to 90%) and ``region_perturbation`` fills with the
blurred image unless asked (``fill: road``, 3-5x the cost). Images are limited to
:data:`MAX_PIXELS` pixels (the factorisation's memory grows faster than the pixel count).
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from typing import Any, ClassVar, Literal

import numpy as np
import torch
from pydantic import Field, field_validator
from scipy import sparse
from scipy.sparse.linalg import splu
from torch import Tensor

from xaiflow.errors import XaiflowError
from xaiflow.metrics.base import (
    METRICS,
    Metric,
    MetricInputs,
    MetricParams,
    Output,
    as_tensor_targets,
)
from xaiflow.metrics.faithfulness import attribution_orders, baseline_input, superpixels, unit_ranks
from xaiflow.models.base import MicrographModel

#: (dy, dx, weight) of the neighbours a removed pixel is the weighted mean of (Rong et al. 2022)
NEIGHBOURS = ((-1, -1, 1 / 12), (-1, 0, 1 / 6), (-1, 1, 1 / 12), (0, -1, 1 / 6),
              (0, 1, 1 / 6), (1, -1, 1 / 12), (1, 0, 1 / 6), (1, 1, 1 / 12))
#: largest image (H * W) imputed: the sparse factorisation's memory grows faster than the pixel count
MAX_PIXELS = 512 * 512


class ImputationError(XaiflowError):
    """An image cannot be imputed (too large, or nothing left to impute from)."""


def imputation_system(removed: np.ndarray) -> tuple[sparse.csc_matrix, sparse.csr_matrix, np.ndarray]:
    """The linear system of noisy linear imputation for one ``(H, W)`` removal mask.

    Returns ``A`` (n x n, n removed pixels), ``K`` (n x H*W) and the removed pixels' flat
    indices, such that the imputed values ``v`` solve ``A v = K @ image.ravel()``: row p
    says ``(sum of p's in-image neighbour weights) v_p - sum over removed neighbours w v_n
    = sum over kept neighbours w image_n``.
    """
    h, w = removed.shape
    idx = np.flatnonzero(removed.ravel())
    n = len(idx)
    if n == removed.size:
        raise ImputationError(f"cannot impute an image with every pixel removed ({h}x{w})")
    var = np.full(h * w, -1, dtype=np.int64)
    var[idx] = np.arange(n)
    r, c = np.divmod(idx, w)
    diag = np.zeros(n)
    a_rows, a_cols, a_vals, k_rows, k_cols, k_vals = [], [], [], [], [], []
    for dy, dx, weight in NEIGHBOURS:
        rr, cc = r + dy, c + dx
        inside = np.flatnonzero((rr >= 0) & (rr < h) & (cc >= 0) & (cc < w))
        neighbour = rr[inside] * w + cc[inside]
        diag[inside] += weight
        unknown = var[neighbour] >= 0
        a_rows.append(inside[unknown]); a_cols.append(var[neighbour[unknown]])
        a_vals.append(np.full(int(unknown.sum()), -weight))
        k_rows.append(inside[~unknown]); k_cols.append(neighbour[~unknown])
        k_vals.append(np.full(int((~unknown).sum()), weight))
    a = sparse.csc_matrix((np.concatenate([diag, *a_vals]),
                           (np.concatenate([np.arange(n), *a_rows]), np.concatenate([np.arange(n), *a_cols]))),
                          shape=(n, n))
    k = sparse.csr_matrix((np.concatenate(k_vals), (np.concatenate(k_rows), np.concatenate(k_cols))),
                          shape=(n, h * w))
    return a, k, idx


def noisy_linear_impute(image: np.ndarray, removed: np.ndarray, noise: float, rng: np.random.Generator) -> np.ndarray:
    """``image`` ``(C, H, W)`` with the pixels of ``removed`` ``(H, W)`` replaced by the
    solution of :func:`imputation_system` (every channel) plus ``N(0, noise^2)``; float32."""
    out = np.array(image, dtype=np.float64)
    if not removed.any():
        return out.astype(np.float32)
    a, k, idx = imputation_system(removed)
    flat = out.reshape(len(out), -1)
    values = splu(a).solve(np.ascontiguousarray(k @ flat.T))  # (n, C)
    if noise > 0:
        values = values + rng.normal(0.0, noise, size=values.shape)
    flat[:, idx] = values.T
    return out.astype(np.float32)


def removed_counts(fractions: np.ndarray, counts: np.ndarray) -> np.ndarray:
    """Units removed at each fraction, ``(B, K)``: ``round(f * n)``, for ``f`` in (0, 1) at least 1
    and at most ``n - 1``, so every fraction removes something and leaves something to impute
    from (an image of one unit keeps it: its curve stays flat)."""
    k = np.floor(fractions[None, :] * counts[:, None] + 0.5).astype(np.int64)
    most = counts[:, None] - 1
    inner = (fractions > 0) & (fractions < 1)
    return np.where(inner[None, :], np.clip(k, np.minimum(1, most), most), k)


def removal_mask(ranks: np.ndarray, count: int, n_removed: int, least_first: bool) -> np.ndarray:
    """Pixels whose unit is among the first ``n_removed`` (MoRF) or the last (LeRF) of the ranking."""
    return ranks >= count - n_removed if least_first else ranks < n_removed


def removal_curves(model: MicrographModel, x: Tensor, targets: np.ndarray, curves: list[tuple[np.ndarray, bool]],
                   counts: np.ndarray, fractions: np.ndarray, index: np.ndarray, seed: int, noise: float,
                   fill: Literal["road", "blur"], blur: Tensor | None, batch_size: int) -> np.ndarray:
    """Probability of ``targets`` with the units removed at each fraction, ``(len(curves), B, K)``.

    ``curves``: one ``(ranks (B, H, W), least_first)`` per curve. A fraction of 0 is the
    untouched image. ``fill="road"`` imputes (noise seeded by ``[seed, index, curve, step]``),
    ``"blur"`` takes the pixels of ``blur``. Perturbed images are made as the model consumes
    them, ``batch_size`` at a time, so memory does not grow with the number of steps.
    """
    b, steps = len(x), len(fractions)
    n_removed = removed_counts(fractions, counts)
    images = x.detach().cpu().numpy()
    blurred = blur.detach().cpu().numpy() if blur is not None else None
    targets_t = as_tensor_targets(targets, x.device)

    def perturbed() -> Iterator[tuple[int, np.ndarray]]:
        for j, (ranks, least_first) in enumerate(curves):
            for i in range(b):
                for k in range(steps):
                    removed = removal_mask(ranks[i], int(counts[i]), int(n_removed[i, k]), least_first)
                    if fill == "blur":
                        assert blurred is not None
                        yield i, np.where(removed[None], blurred[i], images[i])
                    else:
                        rng = np.random.default_rng([seed, int(index[i]), j, k])
                        yield i, noisy_linear_impute(images[i], removed, noise, rng)

    def probabilities(batch: list[tuple[int, np.ndarray]]) -> np.ndarray:
        which = torch.as_tensor([i for i, _ in batch], device=x.device)
        inputs = torch.from_numpy(np.stack([image for _, image in batch])).to(x.device, x.dtype)
        with torch.no_grad():
            probs = torch.softmax(model(inputs), dim=1)
        return probs[torch.arange(len(batch), device=x.device), targets_t[which]].cpu().numpy()

    out: list[np.ndarray] = []
    batch: list[tuple[int, np.ndarray]] = []
    for item in perturbed():
        batch.append(item)
        if len(batch) == batch_size:
            out.append(probabilities(batch))
            batch = []
    if batch:
        out.append(probabilities(batch))
    return np.concatenate(out).astype(np.float32).reshape(len(curves), b, steps)


def mean_area(curve: np.ndarray, fractions: np.ndarray) -> np.ndarray:
    """Trapezoidal area under ``curve`` (``(B, K)``) over ``[0, fractions[-1]]`` divided by its width."""
    return np.trapezoid(curve, fractions, axis=-1) / fractions[-1]


def random_unit_orders(counts: np.ndarray, index: np.ndarray, seed: int, r: int) -> list[np.ndarray]:
    """The ``r``-th random permutation of each image's units, from the sample's own stream."""
    return [np.random.default_rng([seed, int(i), r]).permutation(int(n)) for n, i in zip(counts, index)]


def _check_size(height: int, width: int, name: str) -> None:
    if height * width > MAX_PIXELS:
        raise ImputationError(f"metric {name!r}: images of {height}x{width} px are above the "
                              f"{MAX_PIXELS} pixels noisy linear imputation is limited to; resize the dataset "
                              "(geometry: size) or use fill: blur")


class _RemovalParams(MetricParams):
    noise: float = Field(0.01, ge=0, le=10, description="std of the Gaussian noise added to imputed pixels "
                                                        "(model-input units; Rong et al.: 0.01)")
    random_reference: bool = Field(True, description="also compute the curves for random orders (chance level)")
    n_random: int = Field(1, ge=1, le=64, description="random orders averaged per sample for the reference")
    seed: int = Field(0, ge=0, description="seed of the random orders, the order of tied units and the "
                                           "imputation noise")
    batch_size: int = Field(64, ge=1, le=4096, description="perturbed images per forward pass (speed and memory only)")


class ROADParams(_RemovalParams):
    fractions: tuple[float, ...] = Field((0.1, 0.3, 0.5), min_length=1, max_length=64,
                                         description="fractions of pixels removed, increasing, in (0, 1); the "
                                                     "curves also hold 0 (the untouched image). Rong et al. go to "
                                                     "0.9; a solve's cost grows with the fraction")

    @field_validator("fractions")
    @classmethod
    def _increasing(cls, v: tuple[float, ...]) -> tuple[float, ...]:
        if not all(0 < f < 1 for f in v) or any(b <= a for a, b in itertools.pairwise(v)):
            raise ValueError(f"fractions must increase strictly within (0, 1), got {list(v)}")
        return v


@METRICS.register("road")
class ROAD(Metric):
    """ROAD (Rong et al. 2022): MoRF and LeRF curves with noisy linear imputation; headline LeRF - MoRF."""

    name = "road"
    Params: ClassVar[type[MetricParams]] = ROADParams
    params: ROADParams
    needs_model = True
    batch_param = "batch_size"
    version = 2  # 2: tied pixels in a seeded random order (1: raster order)
    citation = ("Rong et al. 2022, A consistent and efficient evaluation strategy for attribution methods "
                "(ICML), ROAD: RemOve And Debias")
    quick_params: ClassVar[dict[str, Any]] = {"fractions": (0.2, 0.5)}

    @property
    def fractions(self) -> np.ndarray:
        return np.array((0.0, *self.params.fractions))

    def check_image_size(self, height: int, width: int) -> None:
        """Images above :data:`MAX_PIXELS` are refused (:class:`ImputationError`)."""
        _check_size(height, width, self.name)

    def outputs(self, model: MicrographModel | None = None) -> dict[str, Output]:
        dim, coords = f"{self.name}_fraction", tuple(self.fractions.tolist())
        out = {}
        for prefix, what, ref in (("", "attribution order", False), ("_random", "random order (chance level)", True)):
            if ref and not self.params.random_reference:
                break
            out |= {  # a reference has no direction (like deletion_random): it is what values are compared with
                f"{self.name}{prefix}": Output(f"LeRF area - MoRF area, {what}", higher_is_better=None if ref else True),
                f"{self.name}{prefix}_morf": Output(f"mean probability of the explained class as the most relevant "
                                                    f"pixels are removed and imputed, {what}",
                                                    higher_is_better=None if ref else False),
                f"{self.name}{prefix}_lerf": Output(f"mean probability of the explained class as the least relevant "
                                                    f"pixels are removed and imputed, {what}",
                                                    higher_is_better=None if ref else True),
                f"{self.name}{prefix}_morf_curve": Output(f"probability vs fraction removed, most relevant first, "
                                                          f"{what}", dim=dim, coords=coords),
                f"{self.name}{prefix}_lerf_curve": Output(f"probability vs fraction removed, least relevant first, "
                                                          f"{what}", dim=dim, coords=coords),
            }
        return out

    def _compute(self, inputs: MetricInputs) -> dict[str, np.ndarray]:
        p = self.params
        x, model, targets = inputs.x, inputs.model, inputs.targets
        assert x is not None and model is not None and targets is not None  # checked: needs_model
        self.check_image_size(x.shape[2], x.shape[3])
        ranks, counts = unit_ranks(inputs.maps, None, attribution_orders(inputs.maps, inputs.index, p.seed))
        curves = [(ranks, False), (ranks, True)]
        if p.random_reference:
            for r in range(p.n_random):
                shuffled = unit_ranks(inputs.maps, None, random_unit_orders(counts, inputs.index, p.seed, r))[0]
                curves += [(shuffled, False), (shuffled, True)]
        probs = removal_curves(model, x, targets, curves, counts, self.fractions, inputs.index, p.seed, p.noise,
                               "road", None, p.batch_size)
        out: dict[str, np.ndarray] = {}
        runs = {"": (probs[0], probs[1])}
        if p.random_reference:
            runs["_random"] = (probs[2::2].mean(axis=0), probs[3::2].mean(axis=0))
        for prefix, (morf, lerf) in runs.items():
            out[f"{self.name}{prefix}_morf_curve"], out[f"{self.name}{prefix}_lerf_curve"] = morf, lerf
            out[f"{self.name}{prefix}_morf"] = mean_area(morf, self.fractions)
            out[f"{self.name}{prefix}_lerf"] = mean_area(lerf, self.fractions)
            out[f"{self.name}{prefix}"] = out[f"{self.name}{prefix}_lerf"] - out[f"{self.name}{prefix}_morf"]
        return out


class RegionPerturbationParams(_RemovalParams):
    n_segments: int = Field(64, ge=2, le=10_000, description="approximate number of SLIC superpixels (regions)")
    compactness: float = Field(0.1, gt=0, description="SLIC shape regularity (image scaled to [0, 1])")
    max_fraction: float = Field(0.5, gt=0, lt=1, description="largest fraction of regions removed")
    n_steps: int = Field(5, ge=1, le=256, description="curve points after the first: fractions "
                                                      "k * max_fraction / n_steps")
    fill: Literal["road", "blur"] = Field("blur", description="what fills a removed region: noisy linear "
                                                              "imputation, or the image blurred by blur_sigma")
    blur_sigma: float = Field(5.0, gt=0, description="fill=blur: Gaussian sigma in px")


@METRICS.register("region_perturbation")
class RegionPerturbation(Metric):
    """Region perturbation (Samek et al. 2017): superpixels removed most relevant first, filled
    from their surroundings; headline AOPC, higher is better."""

    name = "region_perturbation"
    Params: ClassVar[type[MetricParams]] = RegionPerturbationParams
    params: RegionPerturbationParams
    needs_model = True
    batch_param = "batch_size"
    version = 2  # 2: tied regions in a seeded random order (1: raster order)
    citation = ("Samek et al. 2017, Evaluating the visualization of what a deep neural network has learned "
                "(IEEE TNNLS); fill: Rong et al. 2022 (ICML)")
    quick_params: ClassVar[dict[str, Any]] = {"n_steps": 2, "n_segments": 16}

    @property
    def fractions(self) -> np.ndarray:
        return np.linspace(0.0, self.params.max_fraction, self.params.n_steps + 1)

    def check_image_size(self, height: int, width: int) -> None:
        """With ``fill: road``, images above :data:`MAX_PIXELS` are refused (:class:`ImputationError`)."""
        if self.params.fill == "road":
            _check_size(height, width, self.name)

    def outputs(self, model: MicrographModel | None = None) -> dict[str, Output]:
        dim, coords = f"{self.name}_fraction", tuple(self.fractions.tolist())
        out = {
            self.name: Output("AOPC: mean probability lost as the most relevant regions are removed, attribution "
                              "order", higher_is_better=True),
            f"{self.name}_curve": Output("probability of the explained class vs fraction of regions removed, "
                                         "attribution order", dim=dim, coords=coords),
        }
        if self.params.random_reference:
            out[f"{self.name}_random"] = Output("AOPC for random orders of the regions (chance level)")
            out[f"{self.name}_random_curve"] = Output("probability vs fraction of regions removed, random order",
                                                      dim=dim, coords=coords)
        return out

    def _compute(self, inputs: MetricInputs) -> dict[str, np.ndarray]:
        p = self.params
        x, model, targets = inputs.x, inputs.model, inputs.targets
        assert x is not None and model is not None and targets is not None  # checked: needs_model
        self.check_image_size(x.shape[2], x.shape[3])
        labels = superpixels(x, p.n_segments, p.compactness)
        ranks, counts = unit_ranks(inputs.maps, labels, attribution_orders(inputs.maps, inputs.index, p.seed, labels))
        curves = [(ranks, False)]
        if p.random_reference:
            curves += [(unit_ranks(inputs.maps, labels, random_unit_orders(counts, inputs.index, p.seed, r))[0], False)
                       for r in range(p.n_random)]
        blur = baseline_input(x, "blur", p.blur_sigma) if p.fill == "blur" else None
        probs = removal_curves(model, x, targets, curves, counts, self.fractions, inputs.index, p.seed, p.noise,
                               p.fill, blur, p.batch_size)
        out = {f"{self.name}_curve": probs[0], self.name: aopc(probs[0])}
        if p.random_reference:
            random = probs[1:].mean(axis=0)
            out[f"{self.name}_random_curve"], out[f"{self.name}_random"] = random, aopc(random)
        return out


def aopc(curve: np.ndarray) -> np.ndarray:
    """Samek et al.'s area over the perturbation curve: mean over its points of ``curve[0] - curve[k]``."""
    return (curve[:, :1] - curve).mean(axis=1)
