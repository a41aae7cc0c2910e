"""Gradient-based attributions, computed by Captum (``captum.attr``).

* ``saliency`` - the gradient of the class score with respect to the pixels
  (Simonyan et al. 2014, "Deep inside convolutional networks"); ``abs=True`` takes its
  magnitude, as in the paper.
* ``input_x_gradient`` - gradient times input, the first-order Taylor contribution of
  each pixel (Shrikumar et al. 2016); exact for linear models.
* ``integrated_gradients`` - the path integral of the gradient from a baseline to the
  image times (image - baseline) (Sundararajan et al. 2017, "Axiomatic attribution for deep
  networks"); the maps sum to score(image) - score(baseline) up to quadrature error.
* ``smoothgrad`` - saliency averaged over noisy copies of the image (Smilkov et al. 2017,
  "SmoothGrad: removing noise by adding noise"), via Captum's ``NoiseTunnel``.
* ``gradient_shap`` - expected gradients between noisy inputs and random points on the
  segment to sampled baselines, times (input - baseline), an approximation of SHAP values
  (Lundberg & Lee 2017, "A unified approach to interpreting model predictions").
* ``deeplift`` - DeepLIFT with the rescale rule: contributions of the difference to a
  baseline propagated through modified ReLU gradients (Shrikumar et al. 2017, "Learning
  important features through propagating activation differences"). Needs each ReLU to be
  its own ``nn.ReLU`` module, used once (Captum raises otherwise).

Noise levels (``stdevs``) are relative to each image's value range (max - min), as in
Smilkov et al., so one setting suits raw, rescaled and standardized micrographs alike;
the absolute standard deviation handed to Captum is ``stdevs * (max - min)``.

The stochastic methods (``smoothgrad``, ``gradient_shap``) explain one image at a time
with the global RNGs seeded with ``seed`` (see :func:`xaiflow.attribution.base.seeded`):
an image's map is then reproducible and does not depend on which other images share its
batch, so re-running a chunk with another batch size gives the same maps.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Literal

import torch
from captum.attr import (
    DeepLift,
    GradientShap,
    InputXGradient,
    IntegratedGradients,
    NoiseTunnel,
    Saliency,
)
from pydantic import Field
from torch import Tensor

from xaiflow.attribution.base import (
    MAX_PER_PASS,
    MAX_SAMPLES,
    METHODS,
    AttributionMethod,
    Baseline,
    Cost,
    MethodParams,
    image_values,
    make_baseline,
    seeded,
)

_BASELINE_DOC = "reference input: 'zeros', 'mean' (each image's per-channel mean) or a constant value"
_SEED_DOC = "seed of the global torch/numpy RNGs while Captum draws noise (reproducible maps)"
_STDEVS_DOC = "noise standard deviation as a fraction of each image's value range (max - min)"


def _per_image(x: Tensor, target: Tensor, explain: Callable[[Tensor, Tensor], Tensor]) -> Tensor:
    """``explain`` applied to each image alone (a leaf tensor of batch size 1), concatenated."""
    return torch.cat([explain(x[i : i + 1].detach().requires_grad_(True), target[i : i + 1]) for i in range(len(x))])


def _value_range(image: Tensor) -> float:
    low, high = image.detach().aminmax()
    return float(high - low)


class SaliencyParams(MethodParams):
    abs: bool = Field(True, description="take the absolute value of the gradient (Simonyan et al. 2014)")


@METHODS.register("saliency")
class SaliencyMethod(AttributionMethod):
    """Vanilla gradient saliency (Simonyan et al. 2014)."""

    name = "saliency"
    Params = SaliencyParams
    params: SaliencyParams

    def _attribute(self, x: Tensor, target: Tensor) -> Tensor:
        return Saliency(self.model).attribute(x, target=target, abs=self.params.abs)


@METHODS.register("input_x_gradient")
class InputXGradientMethod(AttributionMethod):
    """Gradient times input (Shrikumar et al. 2016); no parameters."""

    name = "input_x_gradient"

    def _attribute(self, x: Tensor, target: Tensor) -> Tensor:
        return InputXGradient(self.model).attribute(x, target=target)


class IntegratedGradientsParams(MethodParams):
    baseline: Baseline = Field("zeros", description=_BASELINE_DOC)
    n_steps: int = Field(32, ge=1, le=MAX_SAMPLES, description="number of quadrature points along the path")
    method: Literal["gausslegendre", "riemann_trapezoid", "riemann_left", "riemann_right", "riemann_middle"] = Field(
        "gausslegendre", description="quadrature rule for the path integral"
    )
    internal_batch_size: int | None = Field(
        None,
        ge=1,
        le=MAX_PER_PASS,
        description="evaluate at most this many path points per forward/backward pass to bound memory "
        "(None: all B * n_steps at once)",
    )


@METHODS.register("integrated_gradients")
class IntegratedGradientsMethod(AttributionMethod):
    """Integrated gradients (Sundararajan et al. 2017)."""

    name = "integrated_gradients"
    batch_param = "internal_batch_size"
    quick_params = {"n_steps": 8}
    Params = IntegratedGradientsParams
    params: IntegratedGradientsParams

    memory_param = "n_steps"

    def cost(self, image_shape: tuple[int, ...]) -> Cost:
        return Cost(self.params.n_steps)

    def extra_bytes(self, images_per_call: int, image_shape: tuple[int, ...]) -> int:
        # Captum holds the scaled inputs and the gradients of every path point of every image
        return 3 * self.params.n_steps * images_per_call * image_values(image_shape) * 4

    @classmethod
    def batching(cls, images_per_call: int, evals_per_pass: int) -> dict[str, int]:
        # Captum evaluates path points of every image of the call together: at least one per image
        return {cls.batch_param: max(images_per_call, evals_per_pass)}

    def evals_per_pass(self, images_per_call: int) -> int:
        return self.params.internal_batch_size or images_per_call * self.params.n_steps

    def _attribute(self, x: Tensor, target: Tensor) -> Tensor:
        p = self.params
        return IntegratedGradients(self.model).attribute(
            x,
            baselines=make_baseline(x, p.baseline),
            target=target,
            n_steps=p.n_steps,
            method=p.method,
            internal_batch_size=p.internal_batch_size,
        )


class SmoothGradParams(MethodParams):
    nt_samples: int = Field(16, ge=1, le=MAX_SAMPLES,
                            description="number of noisy copies averaged per image")
    stdevs: float = Field(0.15, ge=0, description=_STDEVS_DOC + " (Smilkov et al. suggest 0.1-0.2)")
    nt_samples_batch_size: int | None = Field(
        None, ge=1, le=MAX_PER_PASS,
        description="noisy copies per forward/backward pass to bound memory (None: all at once)"
    )
    abs: bool = Field(True, description="average absolute gradients (as saliency)")
    seed: int = Field(0, description=_SEED_DOC)


@METHODS.register("smoothgrad")
class SmoothGradMethod(AttributionMethod):
    """SmoothGrad over saliency (Smilkov et al. 2017), Captum's ``NoiseTunnel``."""

    name = "smoothgrad"
    batch_param = "nt_samples_batch_size"
    quick_params = {"nt_samples": 4}
    Params = SmoothGradParams
    params: SmoothGradParams

    memory_param = "nt_samples"

    def cost(self, image_shape: tuple[int, ...]) -> Cost:
        return Cost(self.params.nt_samples)

    def extra_bytes(self, images_per_call: int, image_shape: tuple[int, ...]) -> int:
        # the noisy copies of one image and their gradients (images are explained one at a time)
        return 3 * self.params.nt_samples * image_values(image_shape) * 4

    def evals_per_pass(self, images_per_call: int) -> int:
        # noisy copies of one image per pass: images are explained one at a time (seeded per image)
        return self.params.nt_samples_batch_size or self.params.nt_samples

    def _attribute(self, x: Tensor, target: Tensor) -> Tensor:
        p = self.params
        tunnel = NoiseTunnel(Saliency(self.model))

        def explain(image: Tensor, label: Tensor) -> Tensor:
            with seeded(p.seed):
                return tunnel.attribute(
                    image,
                    nt_type="smoothgrad",
                    nt_samples=p.nt_samples,
                    nt_samples_batch_size=p.nt_samples_batch_size,
                    stdevs=p.stdevs * _value_range(image),
                    target=label,
                    abs=p.abs,
                )

        return _per_image(x, target, explain)


class GradientShapParams(MethodParams):
    n_samples: int = Field(16, ge=1, le=MAX_SAMPLES,
                           description="number of (noisy input, baseline, path point) draws per image")
    stdevs: float = Field(0.15, ge=0, description=_STDEVS_DOC + " (noise added to the input)")
    baselines: Literal["zeros", "uniform"] = Field(
        "zeros",
        description="baseline distribution: 'zeros' (one all-zero image; the randomness is the input noise) or "
        "'uniform' (n_baselines images of pixels drawn uniformly in the image's [min, max])",
    )
    n_baselines: int = Field(8, ge=1, le=MAX_SAMPLES, description="number of random baselines when baselines='uniform'")
    seed: int = Field(0, description=_SEED_DOC)


@METHODS.register("gradient_shap")
class GradientShapMethod(AttributionMethod):
    """GradientSHAP (Lundberg & Lee 2017), Captum's ``GradientShap``."""

    name = "gradient_shap"
    quick_params = {"n_samples": 4}
    Params = GradientShapParams
    params: GradientShapParams

    memory_param = "n_samples"

    def cost(self, image_shape: tuple[int, ...]) -> Cost:
        return Cost(self.params.n_samples)

    def extra_bytes(self, images_per_call: int, image_shape: tuple[int, ...]) -> int:
        # noisy inputs, baselines, path points and gradients of one image's draws
        return 4 * (self.params.n_samples + self.params.n_baselines) * image_values(image_shape) * 4

    def evals_per_pass(self, images_per_call: int) -> int:
        return self.params.n_samples  # all draws of one image in one pass, one image at a time

    def _attribute(self, x: Tensor, target: Tensor) -> Tensor:
        p = self.params
        shap = GradientShap(self.model)

        def explain(image: Tensor, label: Tensor) -> Tensor:
            with seeded(p.seed):
                if p.baselines == "zeros":
                    baselines = torch.zeros_like(image)
                else:
                    low, high = image.detach().min(), image.detach().max()
                    noise = torch.rand((p.n_baselines, *image.shape[1:]), device=image.device, dtype=image.dtype)
                    baselines = low + (high - low) * noise
                return shap.attribute(
                    image,
                    baselines=baselines,
                    n_samples=p.n_samples,
                    stdevs=p.stdevs * _value_range(image),
                    target=label,
                )

        return _per_image(x, target, explain)


class DeepLiftParams(MethodParams):
    baseline: Baseline = Field("zeros", description=_BASELINE_DOC)


@METHODS.register("deeplift")
class DeepLiftMethod(AttributionMethod):
    """DeepLIFT, rescale rule (Shrikumar et al. 2017), Captum's ``DeepLift``."""

    name = "deeplift"
    Params = DeepLiftParams
    params: DeepLiftParams

    def _attribute(self, x: Tensor, target: Tensor) -> Tensor:
        baselines = make_baseline(x, self.params.baseline)
        return DeepLift(self.model).attribute(x, baselines=baselines, target=target)
