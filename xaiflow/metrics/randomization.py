"""Sanity check: model parameter randomization (Adebayo et al. 2018, "Sanity checks for saliency maps").

A map that explains the *model* must change when the model's learned parameters are
destroyed; a map that survives it shows the image (edges, bright structures), not what the
network learned. Cascading randomization: on a copy of the model, the parameters of one
layer after another are re-initialised, top (the head) first and cumulatively, following
``model.layer_names()`` in reverse (layers without parameters, such as pooling, are
skipped). After each step the map is recomputed with the same method, parameters and
target, and compared with the trained model's map (the stored one):

* ``model_randomization_spearman`` (per ``layer``, the last layer randomized so far):
  Spearman rank correlation of the two maps (of ``|map|`` with ``absolute: true``, the
  setting of Adebayo et al.'s main figures);
* ``model_randomization_ssim`` (per ``layer``): structural similarity (Wang et al. 2004) of
  the two maps, each min-max scaled to [0, 1] (Adebayo et al. report both);
* ``model_randomization``: the Spearman correlation after the whole cascade (every layer
  randomized): near 0 for a method that depends on the learned parameters, near 1 for one
  that does not. Lower is better.

Re-initialisation calls each module's ``reset_parameters()`` (PyTorch's default
initialisation: convolution and linear weights drawn at random, batch norm reset to the
identity with fresh running statistics) with torch's RNG seeded to ``seed + step``, so a
value is reproducible; the trained model is never modified. A module with parameters but
no ``reset_parameters`` is an error naming it. A constant map has no ranks (e.g. Grad-CAM
of a randomized model with no positive evidence): its Spearman correlation is NaN.
"""

from __future__ import annotations

import copy

import numpy as np
from pydantic import Field
from scipy.stats import rankdata
from skimage.metrics import structural_similarity
from torch import nn

from xaiflow.attribution.base import seeded
from xaiflow.metrics.base import METRICS, Metric, MetricInputs, MetricParams, Output, as_tensor_targets
from xaiflow.models.base import MicrographModel


class RandomizationParams(MetricParams):
    seed: int = Field(0, ge=0, description="torch seed of the re-initialisation (step i uses seed + i)")
    absolute: bool = Field(True, description="compare |map| (Adebayo et al.'s main setting) instead of signed maps")


def cascade_layers(model: MicrographModel) -> list[str]:
    """The layers re-initialised in turn: ``model.layer_names()`` with parameters, output first."""
    return [name for name in reversed(model.layer_names()) if any(True for _ in model.get_layer(name).parameters())]


def reinitialize(layer: nn.Module, seed: int) -> None:
    """Re-draw every parameter of ``layer`` (in place) with PyTorch's default initialisation."""
    with seeded(seed):
        for module in layer.modules():
            if hasattr(module, "reset_parameters"):
                module.reset_parameters()
            elif any(True for _ in module.parameters(recurse=False)):
                raise ValueError(f"cannot re-initialise {type(module).__name__}: it has parameters but no "
                                 "reset_parameters()")


def spearman(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Spearman rank correlation of each pair of maps, (B, H, W) x2 -> (B,); NaN for a constant map."""
    ra = rankdata(a.reshape(len(a), -1), axis=1)
    rb = rankdata(b.reshape(len(b), -1), axis=1)
    ra -= ra.mean(axis=1, keepdims=True)
    rb -= rb.mean(axis=1, keepdims=True)
    with np.errstate(invalid="ignore", divide="ignore"):
        return (ra * rb).sum(axis=1) / np.sqrt((ra**2).sum(axis=1) * (rb**2).sum(axis=1))


def _unit_range(maps: np.ndarray) -> np.ndarray:
    low = maps.min(axis=(1, 2), keepdims=True)
    span = maps.max(axis=(1, 2), keepdims=True) - low
    return np.where(span > 0, (maps - low) / np.where(span > 0, span, 1.0), 0.0)


def ssim(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """SSIM of each pair of maps after min-max scaling each to [0, 1], (B, H, W) x2 -> (B,)."""
    a, b = _unit_range(a.astype(np.float64)), _unit_range(b.astype(np.float64))
    return np.array([structural_similarity(p, q, data_range=1.0) for p, q in zip(a, b)])


@METRICS.register("model_randomization")
class ModelRandomization(Metric):
    """Cascading model parameter randomization (Adebayo et al. 2018); see the module docstring."""

    name = "model_randomization"
    Params = RandomizationParams
    params: RandomizationParams
    needs_model = True
    needs_method = True
    citation = "Adebayo et al. 2018, Sanity checks for saliency maps (NeurIPS)"

    def outputs(self, model: MicrographModel | None = None) -> dict[str, Output]:
        if model is None:
            raise ValueError(f"metric {self.name!r} needs the model to list its layers")
        layers = tuple(cascade_layers(model))
        return {
            self.name: Output("Spearman correlation of the map with the map of the fully randomized model",
                              higher_is_better=False),
            f"{self.name}_spearman": Output("Spearman correlation with the map after randomizing down to layer",
                                            dim="layer", coords=layers),
            f"{self.name}_ssim": Output("SSIM with the map after randomizing down to layer", dim="layer",
                                        coords=layers),
        }

    def _compute(self, inputs: MetricInputs) -> dict[str, np.ndarray]:
        model, method, x, targets = inputs.model, inputs.method, inputs.x, inputs.targets
        assert model is not None and method is not None and x is not None and targets is not None  # checked
        prepare = np.abs if self.params.absolute else np.asarray
        trained = prepare(inputs.maps)
        randomized = copy.deepcopy(model).eval()
        target = as_tensor_targets(targets, x.device)
        layers = cascade_layers(model)
        rho = np.empty((len(trained), len(layers)))
        similarity = np.empty_like(rho)
        for step, layer in enumerate(layers):
            reinitialize(randomized.get_layer(layer), self.params.seed + step)
            again = type(method)(randomized, **method.params.model_dump())
            maps = prepare(again.attribute(x, target).cpu().numpy())
            rho[:, step] = spearman(trained, maps)
            similarity[:, step] = ssim(trained, maps)
        return {self.name: rho[:, -1], f"{self.name}_spearman": rho, f"{self.name}_ssim": similarity}
