"""Layer-wise relevance propagation, computed by Captum's ``LRP`` (``captum.attr``).

``lrp`` redistributes the class score backwards, layer by layer, in proportion to each
input's contribution to the layer's output, so that relevance is (approximately)
conserved from the logit down to the pixels (Bach et al. 2015, "On pixel-wise
explanations for non-linear classifier decisions by layer-wise relevance propagation").
Captum applies the epsilon rule to every convolution, linear, pooling and batch-norm
layer, and passes relevance unchanged through ReLU, dropout and tanh.

Why Captum rather than Zennit: it is already the dependency of every other gradient
method here, its ``attribute(x, target=...)`` call is the same as theirs, and for the
plain conv/ReLU/pool networks xaiflow trains its default rules are the standard ones.
Zennit offers richer rule presets (z+, alpha-beta, flat; BatchNorm canonization), which
would be the reason to switch.

Limits, checked at construction with a clear error rather than a silently wrong map:

* every leaf module must be of a type Captum has a rule for (``Conv2d``, ``Linear``,
  ``MaxPool1d/2d/3d``, ``AvgPool2d``, ``AdaptiveAvgPool2d``, ``BatchNorm2d``, and the
  pass-through ``ReLU``, ``Dropout``, ``Tanh``), or carry a
  custom ``rule`` attribute, as :class:`xaiflow.models.layers.Addition` does; e.g.
  ``nn.Identity``, ``nn.Flatten``, ``nn.GELU`` are refused (use ``torch.flatten`` in
  ``forward``, leave identity shortcuts out of the module tree);
* Captum sees modules only, so adding, subtracting or multiplying two activations in
  ``forward`` (a residual connection written ``out + x``) would give each branch the whole
  relevance of the result, counting it twice: such operations are found by tracing the model
  with ``torch.fx`` and refused; residual sums must go through
  :class:`xaiflow.models.layers.Addition`. Models ``torch.fx`` cannot trace are accepted
  with a warning that this check was skipped.

BatchNorm is treated as one more affine layer under the epsilon rule (not fused into the
preceding convolution), and residual sums split relevance between branches by the epsilon
rule: maps of such networks conserve relevance only approximately.
"""

from __future__ import annotations

import operator
import warnings
from typing import Any

import torch
from captum.attr import LRP
from torch import Tensor, fx, nn

from xaiflow.attribution.base import METHODS, AttributionMethod
from xaiflow.models.base import MicrographModel

#: leaf module types Captum's LRP has a default rule for (``captum.attr._core.lrp``)
SUPPORTED_LAYERS: tuple[type[nn.Module], ...] = (
    nn.Conv2d,
    nn.Linear,
    nn.MaxPool1d,
    nn.MaxPool2d,
    nn.MaxPool3d,
    nn.AvgPool2d,
    nn.AdaptiveAvgPool2d,
    nn.BatchNorm2d,
    nn.ReLU,
    nn.Dropout,
    nn.Tanh,
)

_ARITHMETIC_FUNCTIONS = {operator.add, operator.iadd, operator.sub, operator.isub, operator.mul, operator.imul}
_ARITHMETIC_FUNCTIONS |= {torch.add, torch.sub, torch.mul}
_ARITHMETIC_METHODS = {"add", "add_", "sub", "sub_", "mul", "mul_"}
_SHAPE_METHODS = {"size", "dim"}


class _Tracer(fx.Tracer):
    """Keeps modules Captum treats as one layer (rule holders such as ``Addition``) opaque."""

    def is_leaf_module(self, m: nn.Module, module_qualified_name: str) -> bool:
        return hasattr(m, "rule") or super().is_leaf_module(m, module_qualified_name)


def _unsupported_layers(model: nn.Module) -> list[str]:
    return [
        f"{name} ({type(module).__name__})"
        for name, module in model.named_modules()
        if name
        and not list(module.children())
        and not hasattr(module, "rule")
        and type(module) not in SUPPORTED_LAYERS
    ]


def _activation_arithmetic(model: nn.Module) -> list[str]:
    """Names of graph nodes combining two input-dependent tensors outside a module."""
    graph = _Tracer().trace(model)
    dependent: set[fx.Node] = set()
    found = []
    for node in graph.nodes:
        shape_query = (node.op == "call_method" and node.target in _SHAPE_METHODS) or (
            node.op == "call_function" and node.target is getattr
        )
        inputs = [arg for arg in node.all_input_nodes if arg in dependent]
        if node.op == "placeholder" or (inputs and not shape_query):
            dependent.add(node)
        arithmetic = (node.op == "call_function" and node.target in _ARITHMETIC_FUNCTIONS) or (
            node.op == "call_method" and node.target in _ARITHMETIC_METHODS
        )
        if arithmetic and len(inputs) >= 2:
            found.append(node.name)
    return found


def check_lrp_support(model: nn.Module) -> None:
    """Raise ``ValueError`` naming what Captum's LRP cannot propagate through (module docstring)."""
    unsupported = _unsupported_layers(model)
    if unsupported:
        valid = ", ".join(t.__name__ for t in SUPPORTED_LAYERS)
        raise ValueError(
            f"lrp: Captum has no LRP rule for layer(s) {', '.join(unsupported)}; "
            f"supported layer types: {valid}, xaiflow.models.layers.Addition "
            "(or set a captum PropagationRule as module.rule)"
        )
    try:
        arithmetic = _activation_arithmetic(model)
    except Exception as exc:  # torch.fx cannot trace data-dependent control flow
        warnings.warn(
            f"lrp: could not trace the model with torch.fx ({exc}); the check for tensor additions outside "
            "modules was skipped, and LRP maps are wrong if forward() adds activations directly",
            stacklevel=3,
        )
        return
    if arithmetic:
        raise ValueError(
            f"lrp: the model combines activations outside modules ({', '.join(arithmetic)}; e.g. a residual "
            "'out + x'); Captum's LRP would give each branch the whole relevance of the result. Use "
            "xaiflow.models.layers.Addition for sums, or another attribution method"
        )


@METHODS.register("lrp")
class LRPMethod(AttributionMethod):
    """LRP with Captum's default (epsilon) rules (Bach et al. 2015); no parameters."""

    name = "lrp"

    def __init__(self, model: MicrographModel, **params: Any) -> None:
        super().__init__(model, **params)
        check_lrp_support(model)

    def _attribute(self, x: Tensor, target: Tensor) -> Tensor:
        return LRP(self.model).attribute(x, target=target)
