"""CNN architectures for micrograph classification, built by name from a run config.

``build_model("small_cnn", num_classes=4)`` looks the architecture up in :data:`MODELS`
(importing this package registers the built-in ones) and checks the hyperparameters
against its constructor, so a typo in a YAML config fails with the valid names instead
of being ignored. Checkpoints: :mod:`xaiflow.models.checkpoint`.
"""

from __future__ import annotations

import inspect
from typing import Any

from xaiflow.models import backbone, resnet, small_cnn  # noqa: F401  (registers the architectures)
from xaiflow.models.base import MODELS, MicrographModel, UnknownLayerError

__all__ = ["MODELS", "MicrographModel", "UnknownLayerError", "build_model", "model_params"]


def model_params(arch: str) -> list[str]:
    """Hyperparameter names that ``arch`` accepts besides ``num_classes`` and ``in_channels``."""
    signature = inspect.signature(MODELS.get(arch).__init__)
    return [p for p in signature.parameters if p not in ("self", "num_classes", "in_channels")]


def build_model(arch: str, num_classes: int, in_channels: int = 1, **params: Any) -> MicrographModel:
    """Build architecture ``arch`` with ``num_classes`` outputs (random initial weights).

    Raises :class:`xaiflow.registry.UnknownEntryError` for an unknown ``arch`` and
    ``TypeError`` for a parameter ``arch`` does not take; both messages list the valid names.
    """
    cls = MODELS.get(arch)
    valid = model_params(arch)
    unknown = sorted(set(params) - set(valid))
    if unknown:
        raise TypeError(
            f"model architecture {arch!r} got unknown parameter(s) {', '.join(map(repr, unknown))}; "
            f"valid: {', '.join(valid) or '(none)'}"
        )
    return cls(num_classes=num_classes, in_channels=in_channels, **params)
