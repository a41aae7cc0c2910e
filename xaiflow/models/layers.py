"""Layers that torch lacks and xaiflow's architectures need: :class:`Addition`, the residual sum."""

from __future__ import annotations

from typing import Any

from torch import Tensor, nn


class Addition(nn.Module):
    """``x1 + x2`` as a module: write residual sums ``self.add(out, identity)``, not ``out + identity``.

    Why a module: layer-wise relevance propagation (Captum's ``LRP``, see
    :mod:`xaiflow.attribution.lrp`) hooks modules only. A sum written in ``forward`` is
    invisible to it, so the relevance arriving at the sum would reach each summand whole and
    be counted twice. As a module, the sum gets a rule of its own: the epsilon rule splits
    the relevance ``R`` of ``z = x1 + x2`` in proportion to the summands, ``R * x1 / z`` and
    ``R * x2 / z`` (``z`` kept away from 0 by epsilon = 1e-9). This is what Captum's own
    ``Addition_Module`` does; that class lives in a private module of Captum
    (``captum.attr._utils.custom_modules``), hence this one.

    Captum's LRP gives default rules by exact module type, so it has none for this class; it
    uses the module's ``rule`` attribute instead, and deletes that attribute after every
    ``attribute`` call. :attr:`rule` is therefore a property that hands out a new
    ``EpsilonRule`` (the rule Captum gives its ``Addition_Module``) whenever none is set:
    every LRP call on a model finds one, and the maps equal those with ``Addition_Module``.
    A rule assigned to :attr:`rule` is used until Captum deletes it.
    """

    def __init__(self) -> None:
        super().__init__()
        self._rule: Any = None

    def forward(self, x1: Tensor, x2: Tensor) -> Tensor:
        return x1 + x2

    @property
    def rule(self) -> Any:
        """The Captum ``PropagationRule`` LRP applies to this sum (a new ``EpsilonRule`` if none is set)."""
        if self._rule is None:
            # Imported here: importing captum takes over a second, which building a model (CLI
            # start, workers that never run LRP) should not pay. Captum exports no propagation
            # rule publicly (``captum.attr`` has ``LRP`` only); its own LRP imports them from here.
            from captum.attr._utils.lrp_rules import EpsilonRule

            self._rule = EpsilonRule()
        return self._rule

    @rule.setter
    def rule(self, rule: Any) -> None:
        self._rule = rule

    @rule.deleter
    def rule(self) -> None:
        self._rule = None
