"""Class activation maps, computed by Captum (``captum.attr``).

* ``grad_cam`` - Grad-CAM (Selvaraju et al. 2017, "Grad-CAM: visual explanations from deep
  networks via gradient-based localization"): the activations of a convolutional layer
  weighted by their spatially averaged gradients, summed over channels, ReLU'd, then
  upsampled to the image with bilinear interpolation (as in the paper). Coarse (layer
  resolution) but class-discriminative.
* ``guided_grad_cam`` - Guided Grad-CAM (same paper): the upsampled Grad-CAM map times
  guided backpropagation (Springenberg et al. 2015), fine-grained and class-discriminative.
  Guided backprop hooks every ``nn.ReLU`` module of the model.

``layer`` names one of ``model.layer_names()``; by default the model's ``cam_layer`` (its
last convolutional stage). The layer actually used is recorded in the parameters, so the
provenance says which layer a map came from even when the default was taken.
"""

from __future__ import annotations

from typing import Any, Literal

from captum.attr import GuidedGradCam, LayerAttribution, LayerGradCam
from pydantic import Field
from torch import Tensor

from xaiflow.attribution.base import METHODS, AttributionMethod, Cost, MethodParams
from xaiflow.models.base import MicrographModel

_LAYER_DOC = "layer to explain, one of model.layer_names(); None: the model's cam_layer"
Interpolation = Literal["bilinear", "bicubic", "nearest"]


class _CamMethod(AttributionMethod):
    """Resolves and checks ``params.layer`` at construction (clear error listing valid layers)."""

    def __init__(self, model: MicrographModel, **params: Any) -> None:
        super().__init__(model, **params)
        layer = self.params.layer or model.cam_layer
        self.layer = model.get_layer(layer)
        self.params = self.params.model_copy(update={"layer": layer})


class GradCamParams(MethodParams):
    layer: str | None = Field(None, description=_LAYER_DOC)
    relu_attributions: bool = Field(True, description="keep only positive evidence (ReLU of the map), as in the paper")
    interpolate_mode: Interpolation = Field("bilinear", description="upsampling from layer to image resolution")


@METHODS.register("grad_cam")
class GradCamMethod(_CamMethod):
    """Grad-CAM (Selvaraju et al. 2017), Captum's ``LayerGradCam`` + ``LayerAttribution.interpolate``."""

    name = "grad_cam"
    Params = GradCamParams
    params: GradCamParams

    def cost(self, image_shape: tuple[int, ...]) -> Cost:
        return Cost(1, "fwd+bwd to the layer")

    def _attribute(self, x: Tensor, target: Tensor) -> Tensor:
        cam = LayerGradCam(self.model, self.layer).attribute(
            x, target=target, relu_attributions=self.params.relu_attributions
        )
        return LayerAttribution.interpolate(cam, tuple(x.shape[2:]), interpolate_mode=self.params.interpolate_mode)


class GuidedGradCamParams(MethodParams):
    layer: str | None = Field(None, description=_LAYER_DOC)
    interpolate_mode: Interpolation = Field("bilinear", description="upsampling of the Grad-CAM factor to the image")


@METHODS.register("guided_grad_cam")
class GuidedGradCamMethod(_CamMethod):
    """Guided Grad-CAM (Selvaraju et al. 2017), Captum's ``GuidedGradCam``."""

    name = "guided_grad_cam"
    Params = GuidedGradCamParams
    params: GuidedGradCamParams

    def _attribute(self, x: Tensor, target: Tensor) -> Tensor:
        return GuidedGradCam(self.model, self.layer).attribute(
            x, target=target, interpolate_mode=self.params.interpolate_mode
        )
