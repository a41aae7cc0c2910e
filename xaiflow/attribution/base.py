"""The attribution-method contract, the registry of methods, and helpers shared by adapters.

An attribution method explains one classifier decision per image: given a batch ``x`` of
shape ``(B, C, H, W)`` (float) and the class to explain for each image, ``target`` of
shape ``(B,)`` (integer), :meth:`AttributionMethod.attribute` returns one map per image,
``(B, H, W)`` float32 at image resolution, detached, contiguous, on ``x``'s device.
Maps are raw (unnormalized, signed where the method is signed): normalization happens
at query time, so that evaluations can use the values the method produced.

Channel reduction: a method's input-space attribution ``(B, C, H, W)`` becomes the 2-D
map by summing over the input channels, the usual convention for additive attributions
(for grayscale micrographs, C = 1, this is only a squeeze).

To add a method: subclass :class:`AttributionMethod` (a :class:`~xaiflow.plugins.Plugin`),
set ``name`` and ``Params`` (a subclass of :class:`MethodParams` whose fields have defaults
and ``Field(description=...)``), implement :meth:`AttributionMethod._attribute` (validated
inputs in, an input-space attribution ``(B, C', H, W)`` out; the base class sums over
``C'``), and register the class with ``@METHODS.register(name)`` in a module imported by
``xaiflow.attribution`` (or by a plugin module named in ``$XAIFLOW_PLUGINS``). A method
that evaluates the model more than once per image says so: ``batch_param`` names the
parameter bounding the evaluations per forward pass, :meth:`AttributionMethod.cost` counts
the evaluations per image, and :meth:`AttributionMethod.batching` turns a budget of
evaluations per pass into that parameter's value; the engine, the benchmarks and memory
estimates ask the method, never its name. The contract checks
(:func:`xaiflow.testing.check_method`) then run for it on every registered architecture.

A method object holds the model and its validated parameters (:attr:`params`, a
``Params`` instance recorded verbatim in :meth:`provenance`); it does not change the
model's train/eval mode: :meth:`attribute` refuses a model in training mode, since
dropout and batch statistics would make maps random and batch-dependent.

Thread safety: hook-based methods (DeepLift, guided backprop, LRP) attach hooks to the
model's modules while they run, so one model object must not be explained by two threads
at once; the seeded methods serialize their use of the global RNGs (see :func:`seeded`).
"""

from __future__ import annotations

import threading
from abc import abstractmethod
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from importlib.metadata import version
from typing import Any, ClassVar, Literal, Union

import numpy as np
import torch
from torch import Tensor

from xaiflow.errors import XaiflowError
from xaiflow.models.base import MicrographModel
from xaiflow.plugins import Plugin, PluginParams
from xaiflow.registry import Registry

#: A reference input: ``"zeros"`` (all-zero image), ``"mean"`` (each image's own per-channel
#: mean, a flat image of the same brightness), or a constant pixel value.
Baseline = Union[Literal["zeros", "mean"], float]


_INTEGER_DTYPES = (torch.int64, torch.int32, torch.int16, torch.int8, torch.uint8)

#: upper limits of parameters that multiply memory or time per image (documented in each Params): a
#: config value can never ask for more; the engine's memory estimate refuses what does not fit anyway
MAX_SAMPLES = 4096  # path points, noisy copies, random draws per image
MAX_PER_PASS = 65_536  # evaluations or images per forward pass
MAX_SIDE = 4096  # window or stride sides in pixels


class MethodError(XaiflowError):
    """An attribution method's parameters are invalid; names the method, the parameter and the value."""


class MethodParams(PluginParams):
    """Base of every method's ``Params``: unknown names are errors, values are frozen."""


@dataclass(frozen=True)
class Cost:
    """Model evaluations a method runs per image, and of which kind (``fwd``: a forward pass
    only; ``fwd+bwd``: a forward and a backward pass to the input; ``fwd+bwd to the layer``)."""

    evaluations: int
    kind: str = "fwd+bwd"


class AttributionMethod(Plugin):
    """Base class of all attribution methods (see the module docstring for the contract)."""

    family = "attribution method"
    error = MethodError
    Params: ClassVar[type[PluginParams]] = MethodParams
    #: distributions whose versions change the maps; recorded in :meth:`provenance`
    libraries: ClassVar[tuple[str, ...]] = ("captum",)

    def __init__(self, model: MicrographModel, **params: Any) -> None:
        self.model = model
        super().__init__(**params)

    def cost(self, image_shape: tuple[int, ...]) -> Cost:
        """Model evaluations per image of shape ``(C, H, W)`` with these parameters (default: one)."""
        return Cost(1)

    @classmethod
    def batching(cls, images_per_call: int, evals_per_pass: int) -> dict[str, int]:
        """The value of :attr:`batch_param` that runs about ``evals_per_pass`` model evaluations per
        forward pass when :meth:`attribute` gets ``images_per_call`` images ({} without one)."""
        return {cls.batch_param: evals_per_pass} if cls.batch_param else {}

    def evals_per_pass(self, images_per_call: int) -> int:
        """Images the model sees per forward pass with these parameters (one pass per call by default)."""
        return images_per_call

    #: the parameter that most drives :meth:`extra_bytes` (named when a chunk cannot fit)
    memory_param: ClassVar[str | None] = None

    def extra_bytes(self, images_per_call: int, image_shape: tuple[int, ...]) -> int:
        """Bytes a call holds besides the model's activations (expanded inputs, accumulated gradients);
        default: a few copies of the input batch."""
        return 4 * images_per_call * image_values(image_shape) * 4

    def peak_bytes(self, images_per_call: int, image_shape: tuple[int, ...], evaluation_bytes: int) -> int:
        """Estimated peak memory of one :meth:`attribute` call on ``images_per_call`` images of shape
        ``(C, H, W)``, where one model evaluation with gradients takes ``evaluation_bytes``: what a chunk
        task checks against its worker's memory before it allocates."""
        return self.evals_per_pass(images_per_call) * evaluation_bytes + self.extra_bytes(images_per_call,
                                                                                           image_shape)

    def attribute(self, x: Tensor, target: Tensor) -> Tensor:
        """Maps ``(B, H, W)`` float32 explaining class ``target[i]`` for image ``x[i]``."""
        if x.ndim != 4 or not x.is_floating_point():
            raise ValueError(f"x must be a float tensor (B, C, H, W), got {tuple(x.shape)} {x.dtype}")
        if target.shape != (x.shape[0],) or target.dtype not in _INTEGER_DTYPES:
            raise ValueError(
                f"target must be an integer tensor of shape ({x.shape[0]},), got {tuple(target.shape)} {target.dtype}"
            )
        if self.model.training:
            raise ValueError(f"{self.name}: put the model in eval mode (model.eval()) before attributing")
        # A leaf input that requires grad: gradient methods need it, and Captum warns otherwise.
        inputs = x.detach().clone().requires_grad_(True)
        raw = self._attribute(inputs, target.to(device=x.device, dtype=torch.long))
        maps = raw.detach().sum(dim=1).to(torch.float32).contiguous()
        if maps.shape != (x.shape[0], *x.shape[2:]):
            raise RuntimeError(f"{self.name} produced maps of shape {tuple(maps.shape)} for input {tuple(x.shape)}")
        return maps

    @abstractmethod
    def _attribute(self, x: Tensor, target: Tensor) -> Tensor:
        """Input-space attribution ``(B, C', H, W)`` for validated ``x`` and ``target`` (long)."""

    def provenance(self) -> dict[str, Any]:
        """What produced the maps: method name, parameters and library versions."""
        record: dict[str, Any] = {"method": self.name, "params": self.params.model_dump(mode="json")}
        for dist in self.libraries:
            record[f"{dist.replace('-', '_')}_version"] = version(dist)
        return record


METHODS: Registry[type[AttributionMethod]] = Registry("attribution method")


def image_values(image_shape: tuple[int, ...]) -> int:
    """Values of one image ``(C, H, W)``."""
    return int(np.prod(image_shape))


def make_baseline(x: Tensor, baseline: Baseline) -> Tensor:
    """The reference input for each image of ``x``, same shape as ``x`` (see :data:`Baseline`)."""
    if baseline == "zeros":
        return torch.zeros_like(x)
    if baseline == "mean":
        return x.detach().mean(dim=(2, 3), keepdim=True).expand_as(x).contiguous()
    return torch.full_like(x, float(baseline))


_RNG_LOCK = threading.Lock()


@contextmanager
def seeded(seed: int) -> Iterator[None]:
    """Run a block with torch's and numpy's global RNGs seeded, then restore both.

    Captum draws its noise and baselines from the global generators (``torch.normal``,
    ``np.random``), so seeding them is the only way to make those methods reproducible
    while still calling Captum itself. The caller's RNG state is left unchanged, and a lock
    keeps two threads of one process from interleaving their draws.
    """
    with _RNG_LOCK, torch.random.fork_rng(devices=range(torch.cuda.device_count())):
        np_state = np.random.get_state()
        torch.manual_seed(seed)
        np.random.seed(seed)
        try:
            yield
        finally:
            np.random.set_state(np_state)
