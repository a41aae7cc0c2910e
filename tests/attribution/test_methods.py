"""Every registered attribution method: the shared contract on every registered architecture
(:func:`xaiflow.testing.check_method`), and a reference check for each built-in method.

The contract test loops over ``METHODS.names()`` x ``MODELS.names()``: a new method (in
xaiflow, or a plugin module named in ``$XAIFLOW_PLUGINS``) is covered by registering it, with
no test code. ``REFERENCES`` is the table of the built-in methods: for each, a function that
computes the same map by calling the underlying library directly (Captum, or lime for
``lime``), and the parameter sets to check it with (a test fails until a built-in method has
its row).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pytest
import torch
from captum.attr import (
    LRP,
    DeepLift,
    GradientShap,
    GuidedGradCam,
    InputXGradient,
    IntegratedGradients,
    LayerAttribution,
    LayerGradCam,
    NoiseTunnel,
    Occlusion,
    Saliency,
)
from lime import lime_image
from torch import Tensor, nn

from tiny_cnn import TinyCNN
from xaiflow.attribution import METHODS, AttributionMethod, make_method
from xaiflow.attribution.lime import LimeMethod
from xaiflow.models import MODELS
from xaiflow.models.base import UnknownLayerError
from xaiflow.models.layers import Addition
from xaiflow.registry import UnknownEntryError
from xaiflow.testing import check_method

pytestmark = pytest.mark.usefixtures("one_torch_thread")

# ---------------------------------------------------------------- tiny model and data


@pytest.fixture(scope="module")
def model() -> TinyCNN:
    torch.manual_seed(0)
    return TinyCNN().eval()


@pytest.fixture(scope="module")
def batch() -> tuple[Tensor, Tensor]:
    """Three 32x32 grayscale images with bright blobs (so superpixels follow structure)."""
    gen = torch.Generator().manual_seed(1)
    yy, xx = torch.meshgrid(torch.arange(32.0), torch.arange(32.0), indexing="ij")
    images = []
    for cy, cx in [(8, 10), (20, 22), (16, 6)]:
        blob = torch.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / 30.0)
        images.append(blob + 0.1 * torch.randn(32, 32, generator=gen))
    return torch.stack(images)[:, None].contiguous(), torch.tensor([0, 1, 2])


# ---------------------------------------------------------------- the reference table

Reference = Callable[[nn.Module, Tensor, Tensor, Any], Tensor]


@dataclass
class Entry:
    """How to compute a method's maps by calling the library directly, and which params to try."""

    reference: Reference
    cases: list[dict[str, Any]] = field(default_factory=lambda: [{}])


def _channels_sum(attr: Tensor) -> Tensor:
    return attr.detach().sum(dim=1)


def _baseline(x: Tensor, baseline: Any) -> Tensor | float:
    if baseline == "zeros":
        return 0.0
    if baseline == "mean":
        return x.mean(dim=(2, 3), keepdim=True).expand_as(x)
    return float(baseline)


def _per_image(x: Tensor, target: Tensor, fn: Callable[[Tensor, Tensor], Tensor]) -> Tensor:
    return torch.cat([fn(x[i : i + 1], target[i : i + 1]) for i in range(len(x))])


def _range(image: Tensor) -> float:
    return float(image.max() - image.min())


def ref_smoothgrad(model: nn.Module, x: Tensor, target: Tensor, p: Any) -> Tensor:
    def one(xi: Tensor, ti: Tensor) -> Tensor:
        torch.manual_seed(p.seed)
        return NoiseTunnel(Saliency(model)).attribute(
            xi,
            nt_type="smoothgrad",
            nt_samples=p.nt_samples,
            nt_samples_batch_size=p.nt_samples_batch_size,
            stdevs=p.stdevs * _range(xi),
            target=ti,
            abs=p.abs,
        )

    return _channels_sum(_per_image(x, target, one))


def ref_gradient_shap(model: nn.Module, x: Tensor, target: Tensor, p: Any) -> Tensor:
    def one(xi: Tensor, ti: Tensor) -> Tensor:
        torch.manual_seed(p.seed)
        np.random.seed(p.seed)  # captum draws the path points from numpy's global RNG
        if p.baselines == "zeros":
            baselines = torch.zeros_like(xi)
        else:
            baselines = xi.min() + (xi.max() - xi.min()) * torch.rand(p.n_baselines, *xi.shape[1:])
        return GradientShap(model).attribute(
            xi, baselines=baselines, n_samples=p.n_samples, stdevs=p.stdevs * _range(xi), target=ti
        )

    return _channels_sum(_per_image(x, target, one))


def ref_grad_cam(model: nn.Module, x: Tensor, target: Tensor, p: Any) -> Tensor:
    cam = LayerGradCam(model, model.get_submodule(p.layer)).attribute(
        x, target=target, relu_attributions=p.relu_attributions
    )
    return _channels_sum(LayerAttribution.interpolate(cam, tuple(x.shape[2:]), interpolate_mode=p.interpolate_mode))


def ref_lime(model: nn.Module, x: Tensor, target: Tensor, p: Any) -> Tensor:
    """lime's own LimeImageExplainer, given our superpixels, mapped back to pixels."""
    maps = []
    for image, label in zip(x, target.tolist()):
        segments = _lime_segments(model, image, p)
        weights = _lime_weights(model, image, label, segments, p)
        maps.append(torch.from_numpy(weights[segments]).float())
    return torch.stack(maps)


def _lime_segments(model: nn.Module, image: Tensor, p: Any) -> np.ndarray:
    # lime draws its segmentation seed first; our segmentation function receives the same draw
    seed = np.random.RandomState(p.seed).randint(0, high=1000)
    return LimeMethod(model, **p.model_dump()).segment(image, seed=seed)


def _lime_weights(model: nn.Module, image: Tensor, label: int, segments: np.ndarray, p: Any) -> np.ndarray:
    def classifier_fn(rgb: np.ndarray) -> np.ndarray:
        with torch.no_grad():
            return torch.softmax(model(torch.from_numpy(rgb[..., 0])[:, None]), dim=1).numpy()

    explainer = lime_image.LimeImageExplainer(kernel_width=p.kernel_width, random_state=p.seed)
    explanation = explainer.explain_instance(
        image[0].numpy(),
        classifier_fn,
        labels=(label,),
        hide_color=None if p.hide_color == "mean" else p.hide_color,
        top_labels=None,
        num_samples=p.num_samples,
        batch_size=p.batch_size,
        segmentation_fn=lambda _: segments,
    )
    weights = np.zeros(int(segments.max()) + 1)
    for feature, weight in explanation.local_exp[label]:
        weights[feature] = weight
    return weights


#: lime's quickshift defaults (kernel_size=4, max_dist=200) suit ~224 px images; 32 px needs finer ones
QUICKSHIFT_32PX = {"kernel_size": 2.0, "max_dist": 6.0}

REFERENCES: dict[str, Entry] = {
    "saliency": Entry(
        lambda m, x, t, p: _channels_sum(Saliency(m).attribute(x, target=t, abs=p.abs)),
        [{}, {"abs": False}],
    ),
    "input_x_gradient": Entry(lambda m, x, t, p: _channels_sum(InputXGradient(m).attribute(x, target=t))),
    "integrated_gradients": Entry(
        lambda m, x, t, p: _channels_sum(
            IntegratedGradients(m).attribute(
                x,
                baselines=_baseline(x, p.baseline),
                target=t,
                n_steps=p.n_steps,
                method=p.method,
                internal_batch_size=p.internal_batch_size,
            )
        ),
        [
            {},
            {"baseline": "mean", "n_steps": 8, "method": "riemann_trapezoid", "internal_batch_size": 5},
            {"baseline": 0.5},
        ],
    ),
    "smoothgrad": Entry(
        ref_smoothgrad,
        [{}, {"nt_samples": 5, "stdevs": 0.3, "nt_samples_batch_size": 2, "abs": False, "seed": 3}],
    ),
    "gradient_shap": Entry(
        ref_gradient_shap,
        [{}, {"baselines": "uniform", "n_baselines": 4, "n_samples": 6, "stdevs": 0.0, "seed": 1}],
    ),
    "deeplift": Entry(
        lambda m, x, t, p: _channels_sum(DeepLift(m).attribute(x, baselines=_baseline(x, p.baseline), target=t)),
        [{}, {"baseline": "mean"}],
    ),
    "grad_cam": Entry(
        ref_grad_cam,
        [{}, {"layer": "conv1", "relu_attributions": False, "interpolate_mode": "nearest"}],
    ),
    "guided_grad_cam": Entry(
        lambda m, x, t, p: _channels_sum(
            GuidedGradCam(m, m.get_submodule(p.layer)).attribute(x, target=t, interpolate_mode=p.interpolate_mode)
        ),
        [{}, {"layer": "conv1"}],
    ),
    "occlusion": Entry(
        lambda m, x, t, p: _channels_sum(
            Occlusion(m).attribute(
                x,
                sliding_window_shapes=(1, p.window, p.window),
                strides=(1, p.stride, p.stride),
                baselines=_baseline(x, p.baseline),
                target=t,
                perturbations_per_eval=p.perturbations_per_eval,
            )
        ),
        [{}, {"window": 5, "stride": 3, "baseline": "mean", "perturbations_per_eval": 7}],
    ),
    "lrp": Entry(lambda m, x, t, p: _channels_sum(LRP(m).attribute(x, target=t))),
    "lime": Entry(
        ref_lime,
        [
            {},
            {"segmentation": "quickshift", **QUICKSHIFT_32PX, "num_samples": 120, "batch_size": 25, "hide_color": 0.0},
        ],
    ),
}

#: the methods that come with xaiflow (plugins of other packages bring their own references)
BUILT_IN = [name for name in METHODS.names() if METHODS.get(name).__module__.startswith("xaiflow.")]

CASES = [
    pytest.param(name, case, id=f"{name}-{i}")
    for name in BUILT_IN
    for i, case in enumerate(REFERENCES[name].cases if name in REFERENCES else [])
]


def _seeded_methods() -> list[str]:
    return [name for name in METHODS.names() if "seed" in METHODS.get(name).Params.model_fields]


def _assert_close(ours: Tensor, ref: Tensor, rtol: float = 1e-5) -> None:
    scale = float(ref.abs().max())
    diff = float((ours - ref).abs().max())
    assert diff <= rtol * scale, f"max |ours - reference| = {diff:.3g}, max |reference| = {scale:.3g}"


# ---------------------------------------------------------------- the contract, per method


def test_every_built_in_method_has_a_reference() -> None:
    missing = sorted(set(BUILT_IN) - set(REFERENCES))
    assert not missing, f"add a REFERENCES entry for {missing}"
    assert sorted(REFERENCES) == BUILT_IN, "REFERENCES names a method that is not registered"


@pytest.mark.parametrize("arch", MODELS.names())
@pytest.mark.parametrize("name", METHODS.names())
def test_method_contract_on_every_architecture(name: str, arch: str, batch, contract_model) -> None:
    x, target = batch
    check_method(name, contract_model(arch), x, target)


@pytest.mark.parametrize(("name", "params"), CASES)
def test_matches_direct_library_call(name: str, params: dict[str, Any], model: TinyCNN, batch) -> None:
    x, target = batch
    method = make_method(name, model, **params)
    ours = method.attribute(x, target)
    ref = REFERENCES[name].reference(model, x.clone(), target, method.params)
    assert ref.shape == ours.shape
    assert float(ref.abs().max()) > 0
    _assert_close(ours, ref.float())


@pytest.mark.parametrize("name", _seeded_methods())
def test_seed_changes_the_map(name: str, model: TinyCNN, batch) -> None:
    x, target = batch
    a = make_method(name, model, seed=0).attribute(x, target)
    b = make_method(name, model, seed=1).attribute(x, target)
    assert not torch.equal(a, b)


@pytest.mark.parametrize(("name", "params"), CASES)
def test_provenance_records_params(name: str, params: dict[str, Any], model: TinyCNN) -> None:
    method = make_method(name, model, **params)
    record = method.provenance()
    assert record["method"] == name
    assert set(record["params"]) == set(method.Params.model_fields)
    for key, value in params.items():
        assert record["params"][key] == value
    for dist in method.libraries:
        assert record[f"{dist.replace('-', '_')}_version"]
    assert isinstance(method, AttributionMethod) and method.name == name


# ---------------------------------------------------------------- shared validation


def test_unknown_method_lists_valid_names(model: TinyCNN) -> None:
    with pytest.raises(UnknownEntryError, match="integrated_gradients"):
        make_method("no_such_method", model)


def test_invalid_parameter_value_is_a_clear_error(model: TinyCNN) -> None:
    with pytest.raises(ValueError, match=r"'integrated_gradients'.*n_steps: .*greater than or equal to 1 \(got 0\)"):
        make_method("integrated_gradients", model, n_steps=0)


def test_rejects_training_mode_and_bad_inputs(batch) -> None:
    x, target = batch
    torch.manual_seed(0)
    trained = TinyCNN().train()
    with pytest.raises(ValueError, match="eval"):
        make_method("saliency", trained).attribute(x, target)
    method = make_method("saliency", trained.eval())
    with pytest.raises(ValueError, match="B, C, H, W"):
        method.attribute(x[:, 0], target)
    with pytest.raises(ValueError, match="target"):
        method.attribute(x, target.float())
    with pytest.raises(ValueError, match="target"):
        method.attribute(x, target[:2])


# ---------------------------------------------------------------- method-specific behaviour


@pytest.mark.parametrize("name", ["grad_cam", "guided_grad_cam"])
def test_cam_layer_default_and_bad_layer(name: str, model: TinyCNN) -> None:
    assert make_method(name, model).provenance()["params"]["layer"] == model.cam_layer
    with pytest.raises(UnknownLayerError, match="valid layers: conv1, conv2, pool, head"):
        make_method(name, model, layer="conv9")


def test_occlusion_window_larger_than_image(model: TinyCNN, batch) -> None:
    x, target = batch
    with pytest.raises(ValueError, match="window 40"):
        make_method("occlusion", model, window=40).attribute(x, target)


@pytest.mark.parametrize(
    "params",
    [
        {},
        {"segmentation": "quickshift", **QUICKSHIFT_32PX, "num_samples": 200, "seed": 7},
        {"n_segments": 20, "hide_color": 0.25, "kernel_width": 0.5, "batch_size": 10},
    ],
)
def test_lime_superpixel_weights_equal_lime(params: dict[str, Any], model: TinyCNN, batch) -> None:
    x, target = batch
    method = make_method("lime", model, **params)
    for image, label in zip(x, target.tolist()):
        segments, ours = method.explain_image(image, label)
        assert segments.min() == 0 and len(np.unique(segments)) == segments.max() + 1 > 1
        theirs = _lime_weights(model, image, label, segments, method.params)
        np.testing.assert_allclose(ours, theirs, rtol=0, atol=1e-6)
        np.testing.assert_array_equal(segments, _lime_segments(model, image, method.params))


class _ResidualAdd(TinyCNN):
    def forward(self, x: Tensor) -> Tensor:
        h = self.relu1(self.conv1(x))
        h = h + self.conv1(x)  # a residual sum written in forward(): invisible to Captum's LRP
        return self.head(torch.flatten(self.pool(self.relu2(self.conv2(self.down(h)))), 1))


class _AdditionModule(TinyCNN):
    def __init__(self) -> None:
        super().__init__()
        self.conv_skip = nn.Conv2d(1, 4, 1)
        self.add = Addition()

    def forward(self, x: Tensor) -> Tensor:
        h = self.add(self.relu1(self.conv1(x)), self.conv_skip(x))
        return self.head(torch.flatten(self.pool(self.relu2(self.conv2(self.down(h)))), 1))


class _Flatten(TinyCNN):
    def __init__(self) -> None:
        super().__init__()
        self.flatten = nn.Flatten()

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.flatten(self.pool(self.relu2(self.conv2(self.down(self.relu1(self.conv1(x))))))))


def test_lrp_refuses_what_captum_cannot_propagate(batch) -> None:
    with pytest.raises(ValueError, match=r"flatten \(Flatten\).*supported layer types"):
        make_method("lrp", _Flatten().eval())
    with pytest.raises(ValueError, match="combines activations outside modules"):
        make_method("lrp", _ResidualAdd().eval())
    x, target = batch
    maps = make_method("lrp", _AdditionModule().eval()).attribute(x, target)
    assert torch.isfinite(maps).all()
