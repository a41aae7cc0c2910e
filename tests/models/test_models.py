"""The contract (:func:`xaiflow.testing.check_model`) for every registered architecture, plus
build_model, backbone errors and devices.

The contract tests loop over ``MODELS.names()``: a new architecture is covered by adding it
to the registry (its ``quick_hparams`` keep the checks fast).
"""

from __future__ import annotations

import importlib.util

import pytest
import torch
from captum.attr import DeepLift, GuidedBackprop, LayerGradCam, LRP
from torch import nn

from xaiflow.device import available_cpus, resolve_device, set_torch_threads
from xaiflow.models import MODELS, build_model, model_params
from xaiflow.models.backbone import BackboneError
from xaiflow.registry import UnknownEntryError
from xaiflow.testing import check_model

HAS_TORCHVISION = importlib.util.find_spec("torchvision") is not None
NUM_CLASSES = 3


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _needs_torchvision(arch: str) -> None:
    if arch == "backbone" and not HAS_TORCHVISION:
        pytest.skip("torchvision is not installed: the backbone's error is tested in test_backbone_without_torchvision")


def make(arch: str, **overrides) -> nn.Module:
    _needs_torchvision(arch)
    return build_model(arch, NUM_CLASSES, **{**MODELS.get(arch).quick_hparams, **overrides})


@pytest.mark.parametrize("arch", MODELS.names())
def test_model_contract(arch):
    _needs_torchvision(arch)
    check_model(arch, NUM_CLASSES)


@pytest.mark.filterwarnings("ignore::UserWarning:captum.*")
@pytest.mark.parametrize("arch", MODELS.names())
def test_captum_module_hook_methods_run(arch):
    """Separate ReLU modules and Addition sums let DeepLift, LRP, guided backprop run."""
    torch.manual_seed(0)
    model = make(arch).eval()
    x, target = torch.rand(2, 1, 32, 32), torch.tensor([0, 1])
    deeplift = DeepLift(model).attribute(x, target=target)
    # completeness: attributions sum to f(x) - f(0) for the zero baseline
    gap = (model(x) - model(torch.zeros_like(x))).gather(1, target[:, None]).squeeze(1)
    assert torch.allclose(deeplift.sum(dim=(1, 2, 3)), gap, atol=1e-4)
    for method in (LRP(model), GuidedBackprop(model)):
        attr = method.attribute(x, target=target)
        assert attr.shape == x.shape and torch.isfinite(attr).all()
    cam = LayerGradCam(model, model.get_layer(model.cam_layer)).attribute(x, target=target)
    assert cam.shape[:2] == (2, 1)


def test_small_cnn_defaults():
    model = build_model("small_cnn", 4)
    assert model.layer_names() == ["block1", "block2", "block3", "block4", "pool", "head"]
    assert model.cam_layer == "block4"
    assert model.hparams == {"num_classes": 4, "in_channels": 1, "widths": [16, 32, 64, 96], "dropout": 0.2}
    relus = [m for m in model.modules() if isinstance(m, nn.ReLU)]
    assert len(relus) == 4 and len({id(m) for m in relus}) == 4 and not any(m.inplace for m in relus)


def test_resnet18_width_and_compact_stem():
    full = build_model("resnet18", 2)
    assert full.get_layer("layer4")[1].conv2.out_channels == 512 and full.cam_layer == "layer4"
    quarter = build_model("resnet18", 2, width=0.25, stem="compact")
    assert quarter.get_layer("layer4")[1].conv2.out_channels == 128
    acts = {}
    quarter.get_layer("layer4").register_forward_hook(lambda _m, _i, out: acts.setdefault("layer4", out))
    quarter.eval()(torch.rand(1, 1, 64, 64))
    assert acts["layer4"].shape[-2:] == (8, 8)


def test_build_model_unknown_arch_lists_valid():
    with pytest.raises(UnknownEntryError) as err:
        build_model("vgg99", 2)
    assert all(name in str(err.value) for name in MODELS.names())


def test_build_model_unknown_param_names_valid_ones():
    with pytest.raises(TypeError) as err:
        build_model("small_cnn", 2, widht=(8, 16))
    assert "'widht'" in str(err.value) and "widths" in str(err.value) and "dropout" in str(err.value)
    assert model_params("small_cnn") == ["widths", "dropout"]


@pytest.mark.parametrize(
    ("arch", "params"),
    [
        ("small_cnn", {"widths": []}),
        ("small_cnn", {"dropout": 1.0}),
        ("resnet18", {"width": 0}),
        ("resnet18", {"widths": (8, 16)}),
        ("resnet18", {"stem": "cifar"}),
    ],
)
def test_invalid_hyperparameters(arch, params):
    with pytest.raises(ValueError):
        build_model(arch, 2, **params)


@pytest.mark.parametrize("num_classes", [0, -1, 2.0])
def test_invalid_num_classes(num_classes):
    with pytest.raises(ValueError, match="num_classes"):
        build_model("small_cnn", num_classes)


# backbone: the error paths run everywhere; the weights path needs torchvision


def test_backbone_unsupported_family():
    with pytest.raises(BackboneError, match="supported families"):
        build_model("backbone", 2, name="densenet121", weights_path="x.pt")


def test_backbone_without_weights_explains_offline_download(tmp_path):
    for path in (None, str(tmp_path / "missing.pt")):
        with pytest.raises(BackboneError) as err:
            build_model("backbone", 2, name="resnet18", weights_path=path)
        msg = str(err.value)
        assert "cannot be downloaded at run time" in msg and "torch.save" in msg and "weights_path" in msg


@pytest.mark.skipif(HAS_TORCHVISION, reason="torchvision is installed: the adapter itself is tested")
def test_backbone_without_torchvision(tmp_path):
    weights = tmp_path / "resnet18.pt"
    torch.save({}, weights)
    for params in ({"weights_path": str(weights)}, {"pretrained": False}):
        with pytest.raises(ImportError) as err:
            build_model("backbone", 2, name="resnet18", **params)
        assert "needs torchvision" in str(err.value) and "pip install 'xaiflow[torchvision]'" in str(err.value)


@pytest.mark.skipif(not HAS_TORCHVISION, reason="torchvision is not installed (its error is tested above)")
@pytest.mark.parametrize("name", ["resnet18", "vgg11"])
def test_backbone_grayscale_matches_rgb_copy(tmp_path, name):
    """With the ImageNet weights, a gray image gives what torchvision gives for it copied to RGB."""
    import torchvision

    torch.manual_seed(0)
    net = torchvision.models.get_model(name, weights=None).eval()
    path = tmp_path / f"{name}.pt"
    torch.save(net.state_dict(), path)
    model = build_model("backbone", 1000, name=name, weights_path=str(path)).eval()
    original_head = net.fc if name.startswith("resnet") else net.classifier
    model.head.load_state_dict(original_head.state_dict())
    gray = torch.rand(1, 1, 64, 64)
    assert torch.allclose(model(gray), net(gray.repeat(1, 3, 1, 1)), atol=1e-4)


# devices and threads


def test_resolve_device_cpu_and_auto():
    assert resolve_device("cpu") == torch.device("cpu")
    expected = "cuda" if torch.cuda.is_available() else "cpu"
    assert resolve_device("auto").type == expected


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA")
@pytest.mark.parametrize("spec", ["cuda", "cuda:1"])
def test_resolve_device_cuda_unavailable(spec):
    with pytest.raises(ValueError, match=r"torch.cuda.is_available\(\) is False"):
        resolve_device(spec)


@pytest.mark.parametrize("spec", ["tpu", "cuda:x", "gpu"])
def test_resolve_device_unknown(spec):
    with pytest.raises(ValueError, match="valid: auto, cpu, cuda, cuda:N, mps"):
        resolve_device(spec)


def test_set_torch_threads():
    before = torch.get_num_threads()
    try:
        assert set_torch_threads(1) == 1 and torch.get_num_threads() == 1
        assert set_torch_threads(None) == available_cpus() == torch.get_num_threads()
        with pytest.raises(ValueError):
            set_torch_threads(0)
    finally:
        torch.set_num_threads(before)
