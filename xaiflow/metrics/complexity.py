"""Complexity: how concentrated a map's attribution is, whatever the model or the masks.

An explanation that spreads its relevance thinly over every pixel is hard to read; one
that puts it on few pixels is concise. Both metrics look at the magnitude ``|map|`` only.

* ``sparseness`` - the Gini index of ``|map|`` (Chalasani et al. 2020, "Concise explanations
  of neural networks using adversarial training", after Hurley & Rickard 2009): with the
  ``n`` magnitudes sorted ascending, ``G = sum_i (2i - n - 1) a_(i) / (n sum_i a_(i))``,
  0 for a uniform map, ``1 - 1/n`` for a single non-zero pixel. Higher is sparser.
* ``entropy`` - the Shannon entropy (nats) of the normalised magnitudes ``p = |map| / sum|map|``
  (Bhatt et al. 2020, "Evaluating and aggregating feature-based model explanations",
  Quantus' ``Complexity``), ``0 log 0 = 0``: 0 for a single pixel, ``log n`` for a uniform
  map. Lower is more concise.

An all-zero map has no distribution of relevance: both values are NaN. Quantus adds
``1e-7`` (sparseness) or ``1e-12`` (entropy) instead, which differs from these values only
by that epsilon for other maps.
"""

from __future__ import annotations

import numpy as np

from xaiflow.metrics.base import METRICS, Metric, MetricInputs, Output
from xaiflow.models.base import MicrographModel


def _magnitudes(maps: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``|maps|`` flattened to (B, n) float64, and their per-map sums (NaN where all zero)."""
    a = np.abs(maps.reshape(len(maps), -1).astype(np.float64))
    total = a.sum(axis=1)
    return a, np.where(total > 0, total, np.nan)


def gini(maps: np.ndarray) -> np.ndarray:
    """Gini index of ``|map|`` per map, (B, H, W) -> (B,) (NaN for all-zero maps)."""
    a, total = _magnitudes(maps)
    n = a.shape[1]
    weights = 2 * np.arange(1, n + 1) - n - 1
    return (np.sort(a, axis=1) @ weights) / (n * total)


def entropy(maps: np.ndarray) -> np.ndarray:
    """Shannon entropy (nats) of ``|map| / sum |map|`` per map, (B, H, W) -> (B,) (NaN for all-zero maps)."""
    a, total = _magnitudes(maps)
    p = a / total[:, None]
    with np.errstate(divide="ignore", invalid="ignore"):
        terms = np.where(p > 0, p * np.log(p), 0.0)
    return np.where(np.isfinite(total), 0.0 - terms.sum(axis=1), np.nan)  # 0.0 - : no -0.0


@METRICS.register("sparseness")
class Sparseness(Metric):
    """Gini index of ``|map|`` (Chalasani et al. 2020); higher is sparser."""

    name = "sparseness"
    citation = "Chalasani et al. 2020, Concise explanations of neural networks using adversarial training (ICML)"

    def outputs(self, model: MicrographModel | None = None) -> dict[str, Output]:
        return {"sparseness": Output("Gini index of |map|: 0 uniform, 1 - 1/n one pixel", higher_is_better=True)}

    def _compute(self, inputs: MetricInputs) -> dict[str, np.ndarray]:
        return {"sparseness": gini(inputs.maps)}


@METRICS.register("entropy")
class Entropy(Metric):
    """Shannon entropy of the normalised ``|map|`` (Bhatt et al. 2020); lower is more concise."""

    name = "entropy"
    citation = "Bhatt et al. 2020, Evaluating and aggregating feature-based model explanations (IJCAI)"

    def outputs(self, model: MicrographModel | None = None) -> dict[str, Output]:
        return {"entropy": Output("entropy (nats) of |map| / sum |map|: 0 one pixel, log n uniform",
                                  higher_is_better=False)}

    def _compute(self, inputs: MetricInputs) -> dict[str, np.ndarray]:
        return {"entropy": entropy(inputs.maps)}
