"""The metric contract, the registry of metrics, and the spec that names one in a run.

A metric scores attribution maps: for every map of a batch it returns one or more numbers
(scalars) and optionally curves. The contract, checked for every registered entry by the
shared tests in ``tests/metrics/test_metrics.py`` (they loop over :data:`METRICS`):

* a :class:`~xaiflow.plugins.Plugin`: ``__init__(**params)``, keyword parameters only,
  validated by the class's ``Params`` (a :class:`MetricParams`: unknown names are errors,
  every field has a documented default), kept in :attr:`Metric.params`;
  :meth:`Metric.identity` (name and parameters, defaults filled in, without
  :attr:`Metric.batch_param`; with :attr:`Metric.version`, raised when a change of the code
  changes the values) is what a stored result is compared with on a re-run.
* :meth:`Metric.outputs` declares what :meth:`Metric.compute` returns, before anything is
  computed (the runner lays out the store from it): output name -> :class:`Output`, a
  scalar per map, or a curve along a named dimension with known coordinates. Every name
  starts with the metric's ``name``; a run that stores the metric under another key
  replaces that prefix (:func:`stored_name`), so one metric can be stored twice with
  different parameters. The first scalar is the metric's headline value.
* :meth:`Metric.compute` takes one batch of ``B`` maps and whatever the metric declares
  it needs, all on one device:

  ===========  =====================================================================
  ``maps``     ``(B, H, W)`` numpy float32, the raw maps as stored (finite)
  ``x``        ``(B, C, H, W)`` float32 tensor, the model input the maps explain
               (:func:`xaiflow.preprocess.to_input` of the stored pixels);
               required when ``needs_model``
  ``targets``  ``(B,)`` integer numpy array, the class each map explains;
               required when ``needs_model``
  ``index``    ``(B,)`` integer numpy array, the samples' positions in the dataset
               (default ``arange(B)``): seeds per-sample randomness, so that a value
               does not depend on how samples were batched, chunked or resumed
  ``model``    the classifier, in eval mode (``needs_model``)
  ``masks``    ``(B, H, W)`` bool, the region a map should point at (``needs_mask``)
  ``method``   the :class:`~xaiflow.attribution.AttributionMethod` that made the maps,
               bound to ``model`` (``needs_method``: the metric recomputes maps)
  ===========  =====================================================================

  and returns ``{output name: float32 array}``, ``(B,)`` for a scalar and
  ``(B, len(coords))`` for a curve, exactly the names of :meth:`outputs`. Results are
  deterministic (seeded where random) and each map's values depend on that map's inputs
  only. Where a value is undefined (an empty mask, an all-zero map) it is NaN, as the
  metric's docstring says; it is never silently replaced by a number.

Metrics hold no state between calls and start no parallel work: the runner
(:mod:`xaiflow.metrics.runner`) calls them once per batch inside one Dask task per chunk.

To add a metric: subclass :class:`Metric`, set ``name``, ``Params``, the ``needs_*``
flags and ``citation``, implement :meth:`Metric.outputs` and :meth:`Metric._compute`, and
register it with ``@METRICS.register(name)`` in a module imported by
:mod:`xaiflow.metrics` (or by a plugin module named in ``$XAIFLOW_PLUGINS``). The contract
checks (:func:`xaiflow.testing.check_metric`) then cover it; add its hand-computed cases.
"""

from __future__ import annotations

from abc import abstractmethod
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np
import torch
from torch import Tensor

from xaiflow.attribution.base import AttributionMethod
from xaiflow.errors import XaiflowError
from xaiflow.models.base import MicrographModel
from xaiflow.plugins import Plugin, PluginParams
from xaiflow.registry import Registry


class MetricParamsError(XaiflowError):
    """A metric's parameters are invalid; names the metric, the parameter and the value."""


class MetricParams(PluginParams):
    """Base of every metric's ``Params``: unknown names are errors, values are frozen."""


@dataclass(frozen=True)
class Output:
    """One result per map: a scalar (``dim=None``) or a curve along ``dim`` at ``coords``.

    ``higher_is_better`` says which way a better explanation moves the value (None: neither,
    e.g. a curve); it travels into the store's attrs so tables and figures can say it.
    """

    description: str
    higher_is_better: bool | None = None
    dim: str | None = None
    coords: tuple[Any, ...] = ()


@dataclass(frozen=True)
class MetricInputs:
    """One validated batch, as :meth:`Metric._compute` receives it (see the module docstring)."""

    maps: np.ndarray
    x: Tensor | None
    targets: np.ndarray | None
    index: np.ndarray
    model: MicrographModel | None
    masks: np.ndarray | None
    method: AttributionMethod | None


class Metric(Plugin):
    """Base class of all metrics (see the module docstring for the contract)."""

    family = "metric"
    error = MetricParamsError
    Params: ClassVar[type[PluginParams]] = MetricParams
    needs_model: ClassVar[bool] = False
    needs_mask: ClassVar[bool] = False
    needs_method: ClassVar[bool] = False
    #: raised when a change of the code changes the values a metric stores; in the identity from 2
    #: on (older stored identities stay valid for metrics that never changed), so a stored result
    #: of an older version is refused on a re-run instead of mixed with new values
    version: ClassVar[int] = 1

    def identity(self) -> dict[str, Any]:
        """Name, every parameter that changes the values (defaults filled in) and the
        :attr:`version` when above 1, JSON-ready."""
        identity = {"metric": self.name, "params": self.identity_params()}
        return identity if self.version == 1 else {**identity, "version": self.version}

    def check_image_size(self, height: int, width: int) -> None:
        """Raise a :class:`~xaiflow.errors.XaiflowError` if images of ``height`` x ``width`` px cannot
        be scored; the runner calls it when a run is planned, before any task. Any size by default."""

    @abstractmethod
    def outputs(self, model: MicrographModel | None = None) -> dict[str, Output]:
        """What :meth:`compute` returns; ``model`` is given (and needed) when ``needs_model``."""

    def compute(self, maps: np.ndarray, x: Tensor | None = None, targets: np.ndarray | None = None, *,
                index: np.ndarray | None = None, model: MicrographModel | None = None,
                masks: np.ndarray | None = None, method: AttributionMethod | None = None) -> dict[str, np.ndarray]:
        """Score a batch of maps; inputs and outputs as in the module docstring (checked here)."""
        inputs = self._inputs(maps, x, targets, index, model, masks, method)
        result = self._compute(inputs)
        expected = self.outputs(model)
        if set(result) != set(expected):
            raise RuntimeError(f"metric {self.name!r} returned {sorted(result)}, declared {sorted(expected)}")
        out = {}
        for name, spec in expected.items():
            value = np.asarray(result[name], dtype=np.float32)
            shape = (len(maps),) if spec.dim is None else (len(maps), len(spec.coords))
            if value.shape != shape:
                raise RuntimeError(f"metric {self.name!r}: output {name!r} has shape {value.shape}, expected {shape}")
            out[name] = value
        return out

    def _inputs(self, maps: np.ndarray, x: Tensor | None, targets: np.ndarray | None, index: np.ndarray | None,
                model: MicrographModel | None, masks: np.ndarray | None,
                method: AttributionMethod | None) -> MetricInputs:
        maps = np.asarray(maps)
        if maps.ndim != 3 or maps.dtype.kind != "f":
            raise ValueError(f"maps must be a float array (B, H, W), got {maps.shape} {maps.dtype}")
        b = len(maps)
        index = np.arange(b) if index is None else np.asarray(index)
        if index.shape != (b,) or index.dtype.kind not in "iu":
            raise ValueError(f"index must be an integer array of shape ({b},), got {index.shape} {index.dtype}")
        if self.needs_model:
            if model is None or x is None or targets is None:
                raise ValueError(f"metric {self.name!r} needs the model, its input x and the targets")
            if model.training:
                raise ValueError(f"metric {self.name!r}: put the model in eval mode (model.eval()) first")
            if x.ndim != 4 or x.shape[0] != b or tuple(x.shape[2:]) != maps.shape[1:]:
                raise ValueError(f"x must be (B, C, H, W) matching maps {maps.shape}, got {tuple(x.shape)}")
            targets = np.asarray(targets)
            if targets.shape != (b,) or targets.dtype.kind not in "iu":
                raise ValueError(f"targets must be an integer array of shape ({b},), "
                                 f"got {targets.shape} {targets.dtype}")
        if self.needs_mask:
            if masks is None or np.shape(masks) != maps.shape:
                raise ValueError(f"metric {self.name!r} needs boolean masks of the maps' shape {maps.shape}, "
                                 f"got {None if masks is None else np.shape(masks)}")
            masks = np.asarray(masks, dtype=bool)
        if self.needs_method and method is None:
            raise ValueError(f"metric {self.name!r} needs the attribution method that made the maps")
        return MetricInputs(maps.astype(np.float32, copy=False), x, targets, index, model, masks, method)

    @abstractmethod
    def _compute(self, inputs: MetricInputs) -> dict[str, np.ndarray]:
        """``{output name: (B,) or (B, K) array}`` for validated inputs."""

METRICS: Registry[type[Metric]] = Registry("metric")


def make_metric(name: str, **params: Any) -> Metric:
    """The metric registered as ``name`` with ``params`` (validated; errors list the valid names)."""
    return METRICS.get(name)(**params)


def stored_name(output: str, metric: str, key: str) -> str:
    """Name under which a run stores ``output`` of ``metric`` when the run calls it ``key``.

    Output names and curve dimensions that start with the metric's name take the key
    instead (``deletion_curve`` of key ``deletion_blur`` -> ``deletion_blur_curve``);
    others (a ``layer`` dimension) are shared by every key.
    """
    return key + output[len(metric):] if output.startswith(metric) else output


def as_tensor_targets(targets: np.ndarray, device: torch.device) -> Tensor:
    """Targets as the long tensor torch and the attribution methods take."""
    return torch.as_tensor(np.asarray(targets, dtype=np.int64), device=device)
