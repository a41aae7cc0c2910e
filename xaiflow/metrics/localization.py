"""Localization: does a map point at the region an expert (or the generator) marked?

The region is a boolean mask per map (the runner builds it from ``masks/<dataset>`` with a
:class:`~xaiflow.maskspec.MaskSelection`: one mask class, a union of several, or classes chosen
per image label; empty for images without a mask, which are then NaN). Each of the three scores
a map that knows nothing at the region's share of the image, on average: the chance level the
runner stores beside them (``<key>_chance``). Definitions follow Arras et al. 2022 ("CLEVR-XAI: a
benchmark dataset for the ground truth evaluation of neural network explanations") and
Quantus' names:

* ``pointing_game`` (Zhang et al. 2018, "Top-down neural attention by excitation
  backprop"): is the map's maximum inside the mask? 1 or 0 when the maximum is one pixel;
  when several pixels share the maximum, the share of them inside the mask (the hit rate
  of picking one of them at random), so a constant map scores the mask's area fraction,
  chance level, rather than a hit (Quantus counts a hit if any of them is inside).
* ``relevance_mass_accuracy`` (Arras et al. 2022): the share of the positive relevance that
  falls inside the mask, ``sum_{mask} max(R, 0) / sum max(R, 0)``; NaN if the map has no
  positive relevance.
* ``relevance_rank_accuracy`` (Arras et al. 2022): with ``K`` the mask's size, the share of
  the ``K`` highest-ranked pixels that are inside the mask. Pixels tied at the ``K``-th
  value count with the share of the tie inside the mask (the expectation over random tie
  breaks), so the value does not depend on pixel order.

All three are 1 for a perfect map and NaN for an empty mask. ``absolute: true`` scores
``|map|`` instead of the signed map, for methods whose sign is not evidence for or against
the class (Quantus' ``abs``); the default follows Arras et al. and Quantus (signed).
"""

from __future__ import annotations

from typing import Callable, ClassVar

import numpy as np
from pydantic import Field

from xaiflow.metrics.base import METRICS, Metric, MetricInputs, MetricParams, Output
from xaiflow.models.base import MicrographModel

_CITATION = ("Arras et al. 2022, CLEVR-XAI: a benchmark dataset for the ground truth evaluation of neural "
             "network explanations (Information Fusion)")


class LocalizationParams(MetricParams):
    absolute: bool = Field(False, description="score |map| instead of the signed map")


def _flat(maps: np.ndarray, masks: np.ndarray, absolute: bool) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Scores (B, n) float64, masks (B, n) bool, and the mask sizes (B,) float with NaN for empty masks."""
    b = len(maps)
    scores = np.asarray(maps).reshape(b, -1).astype(np.float64)
    masks = np.asarray(masks, dtype=bool).reshape(b, -1)
    size = masks.sum(axis=1).astype(np.float64)
    return (np.abs(scores) if absolute else scores), masks, np.where(size > 0, size, np.nan)


def pointing_game(maps: np.ndarray, masks: np.ndarray, absolute: bool = False) -> np.ndarray:
    """Share of the maximal pixels inside the mask (1 or 0 for a unique maximum), (B, H, W) -> (B,)."""
    scores, masks, size = _flat(maps, masks, absolute)
    top = scores == scores.max(axis=1, keepdims=True)
    hit = (top & masks).sum(axis=1) / top.sum(axis=1)
    return np.where(np.isfinite(size), hit, np.nan)


def relevance_mass_accuracy(maps: np.ndarray, masks: np.ndarray, absolute: bool = False) -> np.ndarray:
    """Share of the positive relevance inside the mask, (B, H, W) -> (B,)."""
    scores, masks, size = _flat(maps, masks, absolute)
    positive = np.maximum(scores, 0.0)
    total = positive.sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        share = (positive * masks).sum(axis=1) / total
    return np.where(np.isfinite(size) & (total > 0), share, np.nan)


def relevance_rank_accuracy(maps: np.ndarray, masks: np.ndarray, absolute: bool = False) -> np.ndarray:
    """Share of the K top-ranked pixels inside the mask (K = mask size, ties shared), (B, H, W) -> (B,)."""
    scores, masks, size = _flat(maps, masks, absolute)
    k = np.nan_to_num(size).astype(np.int64)
    ranked = -np.sort(-scores, axis=1)
    threshold = np.take_along_axis(ranked, np.maximum(k - 1, 0)[:, None], axis=1)  # the K-th value
    above = scores > threshold
    tied = scores == threshold
    share_tied_inside = (tied & masks).sum(axis=1) / tied.sum(axis=1)
    hits = (above & masks).sum(axis=1) + (k - above.sum(axis=1)) * share_tied_inside
    return hits / size


class _Localization(Metric):
    """One scalar, computed by ``function`` from the maps and masks."""

    Params = LocalizationParams
    params: LocalizationParams
    needs_mask = True
    citation = _CITATION
    description: ClassVar[str]
    function: ClassVar[Callable[[np.ndarray, np.ndarray, bool], np.ndarray]]

    def outputs(self, model: MicrographModel | None = None) -> dict[str, Output]:
        return {self.name: Output(self.description, higher_is_better=True)}

    def _compute(self, inputs: MetricInputs) -> dict[str, np.ndarray]:
        return {self.name: self.function(inputs.maps, inputs.masks, self.params.absolute)}


@METRICS.register("pointing_game")
class PointingGame(_Localization):
    """Is the maximum of the map inside the mask (Zhang et al. 2018)? Tied maxima share the hit."""

    name = "pointing_game"
    citation = "Zhang et al. 2018, Top-down neural attention by excitation backprop (IJCV)"
    description = "the map's maximum is inside the mask (share of tied maxima inside)"
    function = staticmethod(pointing_game)


@METRICS.register("relevance_mass_accuracy")
class RelevanceMassAccuracy(_Localization):
    """Share of the positive relevance inside the mask (Arras et al. 2022)."""

    name = "relevance_mass_accuracy"
    description = "share of the positive relevance inside the mask"
    function = staticmethod(relevance_mass_accuracy)


@METRICS.register("relevance_rank_accuracy")
class RelevanceRankAccuracy(_Localization):
    """Share of the K top-ranked pixels inside the mask, K = mask size (Arras et al. 2022)."""

    name = "relevance_rank_accuracy"
    description = "share of the K highest-ranked pixels inside the mask (K = mask size)"
    function = staticmethod(relevance_rank_accuracy)
