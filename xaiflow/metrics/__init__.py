"""Metrics of attribution maps: faithfulness, sanity, localization against masks, complexity.

``make_metric("deletion", n_steps=32).compute(maps, x, targets, model=model)`` scores a
batch of maps; :func:`xaiflow.metrics.runner.run_metrics` scores every stored map of a
dataset and writes ``metrics/<dataset>/<model_id>``. Importing this package registers the
built-in metrics in :data:`METRICS` (contract: :mod:`xaiflow.metrics.base`):

* :mod:`.faithfulness` - ``deletion``, ``insertion`` (Petsiuk et al. 2018), each with a
  seeded random-order reference;
* :mod:`.road` - ``road`` (Rong et al. 2022: MoRF/LeRF with noisy linear imputation) and
  ``region_perturbation`` (Samek et al. 2017: superpixels removed and filled from their
  surroundings), each with a seeded random-order reference;
* :mod:`.randomization` - ``model_randomization``, cascading parameter randomization
  (Adebayo et al. 2018);
* :mod:`.localization` - ``pointing_game`` (Zhang et al. 2018), ``relevance_mass_accuracy``
  and ``relevance_rank_accuracy`` (Arras et al. 2022), against a mask region;
* :mod:`.complexity` - ``sparseness`` (Gini index, Chalasani et al. 2020) and ``entropy``
  (Bhatt et al. 2020).
"""

from __future__ import annotations

from xaiflow.metrics import complexity, faithfulness, localization, randomization, road  # noqa: F401  (register)
from xaiflow.metrics.base import METRICS, Metric, MetricParams, Output, make_metric

__all__ = ["METRICS", "Metric", "MetricParams", "Output", "make_metric"]
