"""Base class of every classifier the workspace trains, explains and extracts features from.

A :class:`MicrographModel` is a plain ``torch.nn.Module`` mapping a grayscale batch
``(B, in_channels, H, W)`` float32 to logits ``(B, num_classes)``. On top of that it names
the layers that the rest of xaiflow needs, so no caller has to know an architecture:

* :meth:`layer_names` - the named layers usable for Grad-CAM and feature extraction,
  ordered from input to output;
* :meth:`get_layer` - the module for one of those names (clear error listing valid names);
* :attr:`cam_layer` - the default layer for Grad-CAM (the last convolutional stage).

Constructor arguments are stored verbatim in :attr:`hparams` so that a checkpoint can
rebuild the model from its config alone (:meth:`from_hparams`).

To add an architecture: subclass :class:`MicrographModel`, take ``num_classes`` and
``in_channels`` plus keyword hyperparameters (JSON-serializable values only, since they go
into the checkpoint manifest), set ``arch``, ``cam_layer`` and ``_named`` (the exposed layer
names), and register with ``@MODELS.register(arch)``. Use one ``nn.ReLU``
module per use (never a functional or reused ReLU): Captum's DeepLift, LRP and guided
backprop hook those modules and give wrong maps when one is reused. If the defaults are slow
on a CPU, give ``quick_hparams`` (a small configuration for contract checks and smoke tests).
The contract checks (:func:`xaiflow.testing.check_model`, and every attribution method on
it: :func:`xaiflow.testing.check_method`) loop over :data:`MODELS` and cover a new entry for free.
"""

from __future__ import annotations

from typing import Any, ClassVar, TypeVar

from torch import nn

from xaiflow.errors import XaiflowError
from xaiflow.registry import Registry


M = TypeVar("M", bound="MicrographModel")


class UnknownLayerError(XaiflowError, KeyError):
    """A layer name the model does not expose; the message lists the valid layers."""

    def __str__(self) -> str:
        return str(self.args[0])


class MicrographModel(nn.Module):
    """See the module docstring. Subclasses set ``arch``, ``cam_layer`` and ``_named``.

    ``_named`` holds the exposed layer names, input to output; each is a submodule path.
    """

    arch: ClassVar[str]
    cam_layer: str
    _named: tuple[str, ...]
    #: hyperparameters of a small, quick configuration (contract checks, smoke tests)
    quick_hparams: ClassVar[dict[str, Any]] = {}

    def __init__(self, num_classes: int, in_channels: int = 1, **hparams: Any) -> None:
        super().__init__()
        for name, value in (("num_classes", num_classes), ("in_channels", in_channels)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive integer, got {value!r}")
        self.num_classes = num_classes
        self.in_channels = in_channels
        self.hparams = {"num_classes": num_classes, "in_channels": in_channels, **hparams}

    def layer_names(self) -> list[str]:
        """Names of the layers exposed for attribution and feature extraction, input to output."""
        return list(self._named)

    def get_layer(self, name: str) -> nn.Module:
        if name not in self.layer_names():
            raise UnknownLayerError(
                f"model {self.arch!r} has no layer {name!r}; valid layers: {', '.join(self.layer_names())}"
            )
        return self.get_submodule(name)

    @classmethod
    def from_hparams(cls: type[M], hparams: dict[str, Any]) -> M:
        """Rebuild the architecture from :attr:`hparams` (e.g. a checkpoint manifest).

        The weights come from the caller (a checkpoint), so subclasses that would otherwise
        load pretrained weights at construction override this to skip that step.
        """
        return cls(**hparams)


def check_dropout(dropout: float) -> None:
    """Validate a dropout probability (shared by the architectures' constructors)."""
    if not 0.0 <= dropout < 1.0:
        raise ValueError(f"dropout must be in [0, 1), got {dropout!r}")


MODELS: Registry[type[MicrographModel]] = Registry("model architecture")
