"""Attribution methods: which pixels made the model predict a class.

``make_method("integrated_gradients", model, n_steps=64).attribute(x, target)`` returns
one map ``(B, H, W)`` float32 per image. Importing this package registers the built-in
methods in :data:`METHODS` (contract: :mod:`xaiflow.attribution.base`):

* :mod:`.gradients` - ``saliency`` (Simonyan 2014), ``input_x_gradient`` (Shrikumar 2016),
  ``integrated_gradients`` (Sundararajan 2017), ``smoothgrad`` (Smilkov 2017),
  ``gradient_shap`` (Lundberg 2017), ``deeplift`` (Shrikumar 2017);
* :mod:`.cam` - ``grad_cam``, ``guided_grad_cam`` (Selvaraju 2017);
* :mod:`.perturbation` - ``occlusion`` (Zeiler 2014);
* :mod:`.lrp` - ``lrp`` (Bach 2015);
* :mod:`.lime` - ``lime``, superpixel LIME (Ribeiro 2016), reimplemented to equal lime's weights.
"""

from __future__ import annotations

from typing import Any

from xaiflow.attribution import cam, gradients, lime, lrp, perturbation  # noqa: F401  (register the methods)
from xaiflow.attribution.base import METHODS, AttributionMethod
from xaiflow.models.base import MicrographModel

__all__ = ["METHODS", "AttributionMethod", "make_method"]


def make_method(name: str, model: MicrographModel, **params: Any) -> AttributionMethod:
    """The method registered as ``name`` for ``model`` with ``params`` (validated).

    Raises :class:`xaiflow.registry.UnknownEntryError` for an unknown name and
    ``ValueError`` for an unknown or invalid parameter; both messages list the valid names.
    """
    return METHODS.get(name)(model, **params)
