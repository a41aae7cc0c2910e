"""Faithfulness: does taking away what a map calls important change the model's decision?

Deletion and insertion (Petsiuk et al. 2018, "RISE: randomized input sampling for
explanation of black-box models"). The image's units (pixels, or superpixels) are ordered
by attribution, highest first, and

* ``deletion``: starting from the image, units are replaced by a baseline in that order;
  the curve is the model's softmax probability of the explained class against the
  fraction removed. A faithful map makes it fall fast: **lower AUC is better**;
* ``insertion``: starting from the baseline, the image's units are put back in that
  order. A faithful map makes the probability rise fast: **higher AUC is better**.

The curve has ``n_steps + 1`` points, at fractions ``k / n_steps`` (``round(fraction *
n_units)`` units changed; the first point is the untouched start, the last the fully
changed image); the AUC is the trapezoidal area over ``[0, 1]``. All perturbed images of a
batch go through the model ``batch_size`` at a time.

**Random-order reference** (``random_reference``, on by default): the same procedure with
the units in a random order, seeded per sample (``np.random.default_rng([seed, index])``),
stored as ``<name>_random`` and ``<name>_random_curve``. An AUC means little alone (it
depends on the model's confidence and the baseline); compared with chance on the same
image it says whether the ordering carries information.

**Baselines**, in model-input space (after :func:`xaiflow.preprocess.to_input`, which
standardises each image): ``"zeros"`` (which is therefore the image's mean intensity),
``"mean"`` (each image's own mean per channel; equal to ``"zeros"`` up to rounding for
standardised inputs, different for other preprocessing), ``"blur"`` (the image under a
Gaussian blur of ``blur_sigma`` px, Petsiuk's insertion canvas), or a constant. Defaults
follow Petsiuk et al.: deletion to ``"zeros"``, insertion from ``"blur"``.

**Superpixels** (``unit: superpixel``): SLIC (Achanta et al. 2012) on the image scaled to
[0, 1]; a superpixel's score is the mean attribution inside it (region perturbation, as in
Samek et al. 2017), and the fraction on the curve counts superpixels.

**Ties** (the flat parts of a Grad-CAM map, an occlusion block, LIME's segments) are taken in
a random order, seeded per sample (``[seed, index, TIE_STREAM]``, a stream apart from the random
orders'): a raster order would remove tied top rows first and bottom rows last, so a value would
depend on where things sit in the image (a data bar at the bottom) rather than on the map.
Values are still deterministic for a given ``seed`` and sample index.
"""

from __future__ import annotations

from typing import ClassVar, Literal

import numpy as np
import torch
from pydantic import Field
from scipy import ndimage
from skimage.segmentation import slic
from torch import Tensor

from xaiflow.attribution.base import make_baseline
from xaiflow.metrics.base import METRICS, Metric, MetricInputs, MetricParams, Output, as_tensor_targets
from xaiflow.models.base import MicrographModel

BaselineName = Literal["zeros", "mean", "blur"]


class PerturbationParams(MetricParams):
    n_steps: int = Field(16, ge=2, le=1024, description="curve points after the first: fractions k/n_steps")
    unit: Literal["pixel", "superpixel"] = Field("pixel", description="what is removed or inserted at each step")
    n_segments: int = Field(64, ge=2, le=10_000, description="unit=superpixel: approximate number of SLIC superpixels")
    compactness: float = Field(0.1, gt=0, description="unit=superpixel: SLIC shape regularity (image in [0, 1])")
    baseline: BaselineName | float = Field("zeros", description="what replaces removed units (see module docs)")
    blur_sigma: float = Field(5.0, gt=0, description="baseline=blur: Gaussian sigma in px (Petsiuk et al.: 5)")
    random_reference: bool = Field(True, description="also compute the curve for a random order (chance level)")
    seed: int = Field(0, ge=0, description="seed of the random orders and of the order of tied units "
                                           "(streams per sample index)")
    batch_size: int = Field(64, ge=1, le=4096, description="perturbed images per forward pass (speed and memory only)")


class InsertionParams(PerturbationParams):
    baseline: BaselineName | float = Field("blur", description="the canvas the units are inserted into")


def superpixels(x: Tensor, n_segments: int, compactness: float) -> np.ndarray:
    """SLIC labels ``(B, H, W)`` int64 numbered 0..n-1 per image, for model inputs ``(B, C, H, W)``."""
    labels = []
    for image in x.detach().mean(dim=1).cpu().numpy().astype(np.float64):
        span = image.max() - image.min()
        scaled = (image - image.min()) / span if span > 0 else np.zeros_like(image)
        raw = slic(scaled, n_segments=n_segments, compactness=compactness, channel_axis=None, start_label=0)
        labels.append(np.unique(raw, return_inverse=True)[1].reshape(raw.shape))
    return np.stack(labels).astype(np.int64)


#: third seed word of the stream that breaks ties of the attribution order; the random orders use
#: ``[seed, index]`` (deletion, insertion) and ``[seed, index, r]`` with r < 64 (road), never this
TIE_STREAM = 0x7469_6573


def attribution_orders(maps: np.ndarray, index: np.ndarray, seed: int, labels: np.ndarray | None = None
                       ) -> list[np.ndarray]:
    """Each image's units ordered by attribution, highest first, ties in random order.

    Units are pixels (``labels=None``) or the superpixels of ``labels`` ``(B, H, W)``
    (numbered 0..n-1), a unit's score its mean attribution. Tied units are ordered by a
    random key from the sample's own stream (``[seed, index, TIE_STREAM]``), so the order
    does not depend on their position, the batch, or the other samples.
    """
    orders = []
    for i in range(len(maps)):
        flat = (labels[i] if labels is not None else np.arange(maps[i].size)).ravel()
        n = int(flat.max()) + 1
        total = np.bincount(flat, weights=maps[i].ravel().astype(np.float64), minlength=n)
        score = total / np.bincount(flat, minlength=n)
        key = np.random.default_rng([seed, int(index[i]), TIE_STREAM]).random(n)
        orders.append(np.lexsort((key, -score)))  # by score, then by the random key
    return orders


def unit_ranks(maps: np.ndarray, labels: np.ndarray | None, orders: list[np.ndarray]
               ) -> tuple[np.ndarray, np.ndarray]:
    """Rank of each pixel's unit (0 = first changed), ``(B, H, W)``, and the unit counts ``(B,)``.

    Units are pixels (``labels=None``) or the superpixels of ``labels``; ``orders`` holds one
    permutation of the units per image (:func:`attribution_orders`, :func:`random_orders`).
    """
    b, h, w = maps.shape
    if labels is None:
        labels = np.broadcast_to(np.arange(h * w).reshape(h, w), maps.shape)
    ranks = np.empty(maps.shape, dtype=np.int64)
    counts = np.empty(b, dtype=np.int64)
    for i, order in enumerate(orders):
        n = len(order)
        rank = np.empty(n, dtype=np.int64)
        rank[order] = np.arange(n)
        ranks[i], counts[i] = rank[labels[i]], n
    return ranks, counts


def random_orders(counts: np.ndarray, index: np.ndarray, seed: int) -> list[np.ndarray]:
    """One random permutation of each image's units, from the sample's own stream."""
    return [np.random.default_rng([seed, int(i)]).permutation(int(n)) for n, i in zip(counts, index)]


def baseline_input(x: Tensor, baseline: BaselineName | float, blur_sigma: float) -> Tensor:
    """The reference image for each image of ``x`` (see the module docstring), same shape."""
    if baseline == "blur":
        sigma = (0, 0, blur_sigma, blur_sigma)
        blurred = ndimage.gaussian_filter(x.detach().cpu().numpy(), sigma=sigma, mode="reflect")
        return torch.from_numpy(blurred).to(x.device, x.dtype)
    return make_baseline(x, baseline)


def perturbation_curves(model: MicrographModel, x: Tensor, targets: np.ndarray, baseline: Tensor, ranks: np.ndarray,
                        counts: np.ndarray, fractions: np.ndarray, insertion: bool, batch_size: int) -> np.ndarray:
    """Probability of ``targets`` after changing the first ``round(f * counts)`` units, ``(B, len(fractions))``.

    Deletion (``insertion=False``) puts ``baseline`` where the rank is below the count,
    insertion puts the image there and the baseline elsewhere.
    """
    b, steps = len(x), len(fractions)
    changed = np.floor(fractions[None, :] * counts[:, None] + 0.5).astype(np.int64)  # (B, steps)
    image_of, step_of = np.divmod(np.arange(b * steps), steps)
    ranks_t = torch.as_tensor(ranks, device=x.device)
    changed_t = torch.as_tensor(changed, device=x.device)
    targets_t = as_tensor_targets(targets, x.device)
    first, second = (baseline, x) if not insertion else (x, baseline)
    out = np.empty(b * steps, dtype=np.float32)
    with torch.no_grad():
        for start in range(0, b * steps, batch_size):
            i = torch.as_tensor(image_of[start:start + batch_size], device=x.device)
            k = torch.as_tensor(step_of[start:start + batch_size], device=x.device)
            hit = (ranks_t[i] < changed_t[i, k][:, None, None])[:, None]  # (n, 1, H, W)
            batch = torch.where(hit, first[i], second[i])
            probs = torch.softmax(model(batch), dim=1)
            out[start:start + len(i)] = probs[torch.arange(len(i), device=x.device), targets_t[i]].cpu().numpy()
    return out.reshape(b, steps)


class _PerturbationCurve(Metric):
    """Deletion or insertion (see the module docstring); ``insertion`` picks which."""

    Params: ClassVar[type[MetricParams]] = PerturbationParams
    params: PerturbationParams
    needs_model = True
    batch_param = "batch_size"
    citation = "Petsiuk et al. 2018, RISE: randomized input sampling for explanation of black-box models (BMVC)"
    version = 2  # 2: tied units in a seeded random order (1: raster order)
    insertion: ClassVar[bool]

    @property
    def fractions(self) -> np.ndarray:
        return np.linspace(0.0, 1.0, self.params.n_steps + 1)

    def outputs(self, model: MicrographModel | None = None) -> dict[str, Output]:
        verb = "inserted" if self.insertion else "removed"
        dim, coords = f"{self.name}_fraction", tuple(self.fractions.tolist())
        out = {
            self.name: Output(f"area under the probability-vs-fraction-{verb} curve, attribution order",
                              higher_is_better=self.insertion),
            f"{self.name}_curve": Output(f"probability of the explained class vs fraction {verb}, attribution order",
                                         dim=dim, coords=coords),
        }
        if self.params.random_reference:
            out[f"{self.name}_random"] = Output("area under the curve for a random order (chance level)")
            out[f"{self.name}_random_curve"] = Output(f"probability vs fraction {verb}, random order",
                                                      dim=dim, coords=coords)
        return out

    def _compute(self, inputs: MetricInputs) -> dict[str, np.ndarray]:
        p = self.params
        x, model, targets = inputs.x, inputs.model, inputs.targets
        assert x is not None and model is not None and targets is not None  # checked: needs_model
        labels = superpixels(x, p.n_segments, p.compactness) if p.unit == "superpixel" else None
        baseline = baseline_input(x, p.baseline, p.blur_sigma)
        ranks, counts = unit_ranks(inputs.maps, labels, attribution_orders(inputs.maps, inputs.index, p.seed, labels))
        runs = {self.name: ranks}
        if p.random_reference:
            shuffled = random_orders(counts, inputs.index, p.seed)
            runs[f"{self.name}_random"] = unit_ranks(inputs.maps, labels, shuffled)[0]
        out: dict[str, np.ndarray] = {}
        for name, order_ranks in runs.items():
            curve = perturbation_curves(model, x, targets, baseline, order_ranks, counts, self.fractions,
                                        self.insertion, p.batch_size)
            out[f"{name}_curve"] = curve
            out[name] = np.trapezoid(curve, self.fractions, axis=1)
        return out


@METRICS.register("deletion")
class Deletion(_PerturbationCurve):
    """Deletion AUC (Petsiuk et al. 2018): probability as top-attributed units are removed; lower is better."""

    name = "deletion"
    insertion = False
    quick_params = {"n_steps": 4}


@METRICS.register("insertion")
class Insertion(_PerturbationCurve):
    """Insertion AUC (Petsiuk et al. 2018): probability as top-attributed units are restored; higher is better."""

    name = "insertion"
    Params = InsertionParams
    insertion = True
    quick_params = {"n_steps": 4, "blur_sigma": 2.0}
