"""The feature-extractor contract and its registry.

A feature extractor maps a stack of stored micrographs to one fixed-length vector per
image, so that classic classifiers can be trained on them (Ling et al. 2017: CNN
activations pooled per layer beat hand-made descriptors for microstructure images; texture
statistics are the baseline they are compared with).

To add an extractor, subclass :class:`FeatureExtractor` and register it with
``@FEATURES.register("<name>")``. The contract, checked for every registered entry by
:func:`xaiflow.testing.check_extractor` (the test suite loops over ``FEATURES.names()``):

* a :class:`~xaiflow.plugins.Plugin`: keyword parameters only, declared in ``Params`` (a
  :class:`FeatureParams` with JSON-serializable fields, defaults and descriptions);
  invalid ones raise :class:`FeatureError` naming the parameter and value. The parameters
  go into the workspace as provenance, and a re-run compares their
  :meth:`~xaiflow.plugins.Plugin.identity_params`;
* optional :meth:`FeatureExtractor.bind`: the parameters to run with in a given workspace
  (e.g. the CNN extractor takes the run's default model and the workspace's models folder);
* :meth:`compute`: ``(N, H, W)`` numpy array (uint8, uint16 or float32) -> ``(N, F)``;
  every row depends on its own image only (so chunks can be computed anywhere, in any
  order), the result is deterministic and finite (:meth:`transform` wraps it with the
  input and output checks, callers use that);
* :meth:`feature_labels`: ``F`` unique, human-readable names (``"contrast_d1"``);
  :meth:`feature_families`: the family of each feature (``"glcm/contrast"``, a CNN
  layer and pooling ``"block3/max"``), used to say which kinds of features survive a
  feature-reduction study;
* optional :meth:`fit` (``requires_fit = True``): learn label-free state from images
  (e.g. a channel projection); fitted state is kept on the instance and pickled with it
  to the Dask workers;
* ``runtime_params``: names of parameters that do not change the result (device, batch
  size, where checkpoints live); they are left out of the identity.

Parallelism is not the extractor's business: :mod:`xaiflow.features.extract` runs one
Dask task per image chunk.
"""

from __future__ import annotations

from abc import abstractmethod
from typing import Any, Callable, ClassVar

import numpy as np

from xaiflow.errors import XaiflowError
from xaiflow.plugins import Plugin, PluginParams
from xaiflow.registry import Registry


class FeatureError(XaiflowError):
    """Bad extractor parameters, bad input images, or non-finite features; names what and where."""


class FeatureParams(PluginParams):
    """Base of every extractor's ``Params``: unknown names are errors, values are frozen."""


class FeatureExtractor(Plugin):
    """Base class: see the module docstring for the contract."""

    family = "feature extractor"
    error = FeatureError
    Params: ClassVar[type[PluginParams]] = FeatureParams
    requires_fit: bool = False  # a class attribute, or a property when it depends on the parameters

    def __init__(self, **params: Any) -> None:
        super().__init__(**params)
        self._fitted = False

    # -------------------------------------------------------------- parameters

    @classmethod
    def bind(cls, params: dict[str, Any], workspace: str, default_model: Callable[[], str | None]) -> dict[str, Any]:
        """The parameters to run with on ``workspace``; ``default_model()`` gives the run's default model
        (an id resolved from the ``features.model`` reference, None without one), asked only by an
        extractor that needs it. Default: the parameters as given."""
        return dict(params)

    def provenance(self) -> dict[str, Any]:
        """What else identifies the features besides the parameters (e.g. a checkpoint hash)."""
        return {}

    def configure_threads(self, n: int) -> None:
        """Called in a Dask worker with its thread count before the first chunk (default: nothing)."""

    # -------------------------------------------------------------- the contract

    @abstractmethod
    def feature_labels(self) -> list[str]:
        """``F`` unique feature names, known from the parameters (and the model) alone."""

    def feature_families(self) -> list[str]:
        """The family of each feature; default: every feature belongs to the extractor."""
        return [self.name] * len(self.feature_labels())

    @abstractmethod
    def compute(self, images: np.ndarray) -> np.ndarray:
        """``(N, H, W)`` checked numpy images -> ``(N, F)``; see the contract."""

    def _fit(self, images: np.ndarray) -> None:
        """Learn state from images; only called when ``requires_fit``."""

    # -------------------------------------------------------------- public API

    def fit(self, images: Any) -> FeatureExtractor:
        """Learn label-free state from ``images`` (no-op unless ``requires_fit``); returns self."""
        if self.requires_fit:
            self._fit(self._check_images(images))
            self._fitted = True
        return self

    def transform(self, images: Any) -> np.ndarray:
        """``(N, H, W)`` images (numpy, dask or xarray) -> ``(N, F)`` float32, checked finite."""
        if self.requires_fit and not self._fitted:
            raise FeatureError(f"extractor {self.name!r} must be fitted first (call fit on images)")
        arr = self._check_images(images)
        out = np.asarray(self.compute(arr), dtype=np.float32)
        n_features = len(self.feature_labels())
        if out.shape != (arr.shape[0], n_features):
            raise FeatureError(
                f"extractor {self.name!r} returned shape {out.shape}, expected ({arr.shape[0]}, {n_features})")
        bad = ~np.isfinite(out).all(axis=1)
        if bad.any():
            raise FeatureError(
                f"extractor {self.name!r} produced NaN/inf features for {int(bad.sum())} of {len(out)} images "
                f"(positions {np.flatnonzero(bad)[:10].tolist()} in this batch); check those images")
        return out

    def fit_transform(self, images: Any) -> np.ndarray:
        return self.fit(images).transform(images)

    def _check_images(self, images: Any) -> np.ndarray:
        arr = np.asarray(images)  # computes a dask array, unwraps an xarray DataArray
        if arr.ndim != 3:
            raise FeatureError(f"extractor {self.name!r} expects images of shape (N, H, W), got {arr.shape}")
        if not any(arr.dtype == d for d in (np.uint8, np.uint16, np.float32, np.float64)):
            raise FeatureError(f"extractor {self.name!r}: unsupported image dtype {arr.dtype}")
        if arr.dtype.kind == "f" and not np.isfinite(arr).all():
            raise FeatureError(f"extractor {self.name!r}: input images contain NaN/inf")
        return arr


FEATURES: Registry[type[FeatureExtractor]] = Registry("feature extractor")


def build_extractor(name: str, params: dict[str, Any] | None = None) -> FeatureExtractor:
    """Build a registered extractor; unknown names and parameters give errors listing the valid ones."""
    return FEATURES.get(name)(**(params or {}))


def normalize_images(images: np.ndarray, low: float = 0.5, high: float = 99.5) -> np.ndarray:
    """Per-image robust min-max to [0, 1] (percentiles ``low``/``high``), float64.

    Texture statistics should describe the structure, not the brightness and contrast of an
    acquisition session; a flat image maps to all zeros.
    """
    x = images.astype(np.float64)
    lo = np.percentile(x, low, axis=(1, 2), keepdims=True)
    hi = np.percentile(x, high, axis=(1, 2), keepdims=True)
    span = np.where(hi - lo > 0, hi - lo, 1.0)
    return np.clip((x - lo) / span, 0.0, 1.0)
