"""Perturbation attributions, computed by Captum (``captum.attr``).

* ``occlusion`` - slide a square window over the image, replace the pixels under it with
  a baseline, and attribute the drop of the class score to those pixels, averaged over the
  windows covering each pixel (Zeiler & Fergus 2014, "Visualizing and understanding
  convolutional networks"). Model-agnostic and gradient-free; costs one forward pass per
  window position, ``((H - window) // stride + 1) * ((W - window) // stride + 1)`` per image.

The window covers all input channels at once, so the map has one value per pixel.
"""

from __future__ import annotations

from captum.attr import Occlusion
from pydantic import Field
from torch import Tensor

from xaiflow.attribution.base import (MAX_PER_PASS, MAX_SIDE, METHODS, AttributionMethod, Baseline, Cost,
                                      MethodParams, make_baseline)


class OcclusionParams(MethodParams):
    window: int = Field(8, ge=1, le=MAX_SIDE, description="side of the square occluding window, in pixels")
    stride: int = Field(4, ge=1, le=MAX_SIDE, description="step between window positions, in pixels")
    baseline: Baseline = Field(
        "zeros", description="value put under the window: 'zeros', 'mean' (the image's per-channel mean) or a constant"
    )
    perturbations_per_eval: int = Field(
        16, ge=1, le=MAX_PER_PASS, description="occluded copies per forward pass (batch size; bounds memory)"
    )


@METHODS.register("occlusion")
class OcclusionMethod(AttributionMethod):
    """Occlusion (Zeiler & Fergus 2014), Captum's ``Occlusion``."""

    name = "occlusion"
    batch_param = "perturbations_per_eval"
    Params = OcclusionParams
    params: OcclusionParams

    def cost(self, image_shape: tuple[int, ...]) -> Cost:
        p = self.params
        positions = [max(0, (side - p.window) // p.stride) + 1 for side in image_shape[-2:]]
        return Cost(positions[0] * positions[1], "fwd")

    @classmethod
    def batching(cls, images_per_call: int, evals_per_pass: int) -> dict[str, int]:
        # Captum counts perturbations per image of the call: a pass sees images_per_call times as many
        return {cls.batch_param: max(1, evals_per_pass // images_per_call)}

    def evals_per_pass(self, images_per_call: int) -> int:
        return images_per_call * self.params.perturbations_per_eval

    def _attribute(self, x: Tensor, target: Tensor) -> Tensor:
        p = self.params
        if p.window > min(x.shape[2:]):
            raise ValueError(f"occlusion: window {p.window} is larger than the image {tuple(x.shape[2:])}")
        channels = x.shape[1]
        return Occlusion(self.model).attribute(
            x,
            sliding_window_shapes=(channels, p.window, p.window),
            strides=(channels, p.stride, p.stride),
            baselines=make_baseline(x, p.baseline),
            target=target,
            perturbations_per_eval=p.perturbations_per_eval,
        )
