"""``backbone``: an ImageNet-pretrained torchvision network adapted to grayscale micrographs.

Transfer learning from ImageNet is what Ling et al. 2017 and DeCost et al. did for SEM
micrographs (VGG16 activations). This adapter wraps a torchvision ResNet/ResNeXt/
Wide-ResNet or VGG under the same layer names as the built-in architectures, so
Grad-CAM, feature extraction and checkpoints treat it like any other model:

* ResNet family: ``stem``, ``layer1``..``layer4``, ``pool``, ``head``; cam_layer ``layer4``.
* VGG family: ``block1``..``block5`` (each block starts with the max-pool that precedes
  its convolutions, so ``block5`` keeps 1/16 of the input resolution), ``pool`` (the last
  max-pool and the adaptive average pool), ``head`` (the classifier); cam_layer ``block5``.

Adaptations:

* grayscale: the first convolution's RGB kernels are summed into one channel (the network
  then responds to a gray image exactly as to that image copied into R, G and B);
* the ImageNet classifier is replaced by a fresh ``num_classes`` output layer;
* every ReLU becomes a separate, not-in-place module and each residual sum an
  :class:`xaiflow.models.layers.Addition` module (torchvision reuses one in-place ReLU per
  residual block, which breaks Captum's DeepLift and LRP, and writes its sums ``out + identity``,
  which LRP cannot split between the branches).

Weights are never downloaded at run time (workers may have no internet): pass
``weights_path``, a ``state_dict`` saved with ``torch.save`` on a machine with internet.
It is loaded with ``torch.load(weights_only=True)``. The pretrained net expects inputs
normalized roughly like ImageNet (gray mean 0.449, std 0.226); the training code owns
the input normalization.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from xaiflow.errors import XaiflowError
from xaiflow.models.base import MODELS, MicrographModel, check_dropout
from xaiflow.models.checkpoint import load_state_dict_file
from xaiflow.models.layers import Addition

_RESNET_PREFIXES = ("resnet", "resnext", "wide_resnet")
_VGG_PREFIX = "vgg"
SUPPORTED_FAMILIES = "resnet*, resnext*, wide_resnet*, vgg*"


class BackboneError(XaiflowError):
    """The backbone cannot be built: unsupported name, or weights missing or unusable."""


def _weights_help(name: str) -> str:
    return (
        "weights cannot be downloaded at run time. On a machine with internet run:\n"
        f"    import torch, torchvision\n"
        f"    net = torchvision.models.get_model({name!r}, weights='DEFAULT')\n"
        f"    torch.save(net.state_dict(), '{name}.pt')\n"
        "then copy the file here and pass weights_path='<path>/" + name + ".pt' "
        "(or pretrained=False for random initial weights)"
    )


def _import_torchvision(name: str) -> Any:
    try:
        import torchvision
    except ImportError as exc:
        raise ImportError(
            f"backbone {name!r} needs torchvision: pip install 'xaiflow[torchvision]' "
            "(or pip install torchvision matching your torch version); the built-in "
            "architectures 'small_cnn' and 'resnet18' need no extra package"
        ) from exc
    except Exception as exc:  # e.g. "operator torchvision::nms does not exist"
        raise ImportError(
            f"backbone {name!r}: torchvision is installed but cannot be imported ({exc}); "
            f"install the torchvision release built for torch {torch.__version__}"
        ) from exc
    return torchvision


def _gray_conv(conv: nn.Conv2d, in_channels: int) -> nn.Conv2d:
    """A copy of ``conv`` taking ``in_channels`` channels: RGB kernels summed, then spread evenly."""
    new = nn.Conv2d(
        in_channels,
        conv.out_channels,
        conv.kernel_size,  # type: ignore[arg-type]
        stride=conv.stride,  # type: ignore[arg-type]
        padding=conv.padding,  # type: ignore[arg-type]
        dilation=conv.dilation,  # type: ignore[arg-type]
        groups=conv.groups,
        bias=conv.bias is not None,
    )
    with torch.no_grad():
        summed = conv.weight.sum(dim=1, keepdim=True)
        new.weight.copy_(summed.repeat(1, in_channels, 1, 1) / in_channels)
        if conv.bias is not None:
            new.bias.copy_(conv.bias)
    return new


def _fresh_relus(module: nn.Module) -> nn.Module:
    """Replace every ReLU child (recursively) by a new, not-in-place ``nn.ReLU``."""
    for child_name, child in module.named_children():
        if isinstance(child, nn.ReLU):
            setattr(module, child_name, nn.ReLU())
        else:
            _fresh_relus(child)
    return module


class _ResidualBlock(nn.Module):
    """A torchvision BasicBlock or Bottleneck with one ReLU per use and an :class:`Addition` sum.

    Parameter names (``conv1``, ``bn1``, ..., ``downsample``) are those of torchvision.
    """

    def __init__(self, block: nn.Module) -> None:
        super().__init__()
        self.depth = 3 if hasattr(block, "conv3") else 2
        for i in range(1, self.depth + 1):
            self.add_module(f"conv{i}", getattr(block, f"conv{i}"))
            self.add_module(f"bn{i}", getattr(block, f"bn{i}"))
            self.add_module(f"relu{i}", nn.ReLU())
        self.downsample = block.downsample
        self.add = Addition()

    def forward(self, x: Tensor) -> Tensor:
        out = x
        for i in range(1, self.depth):
            out = self.get_submodule(f"relu{i}")(self.get_submodule(f"bn{i}")(self.get_submodule(f"conv{i}")(out)))
        last = self.depth
        out = self.get_submodule(f"bn{last}")(self.get_submodule(f"conv{last}")(out))
        identity = x if self.downsample is None else self.downsample(x)
        return self.get_submodule(f"relu{last}")(self.add(out, identity))


@MODELS.register("backbone")
class Backbone(MicrographModel):
    """A torchvision backbone (see the module docstring).

    Args:
        num_classes: number of output logits.
        in_channels: image channels (1 for grayscale micrographs).
        name: torchvision model name, e.g. ``"resnet18"``, ``"resnet50"``, ``"vgg16"``.
        weights_path: local file holding the torchvision ``state_dict`` (ImageNet weights).
        pretrained: False builds random initial weights and ignores ``weights_path``
            (checkpoint loading uses this: the checkpoint holds the weights).
        dropout: dropout probability before the head.
    """

    arch = "backbone"
    quick_hparams = {"name": "resnet18", "pretrained": False}

    def __init__(
        self,
        num_classes: int,
        in_channels: int = 1,
        name: str = "resnet18",
        weights_path: str | Path | None = None,
        pretrained: bool = True,
        dropout: float = 0.0,
    ) -> None:
        is_resnet = name.startswith(_RESNET_PREFIXES)
        if not (is_resnet or name.startswith(_VGG_PREFIX)):
            raise BackboneError(f"backbone {name!r} is not supported; supported families: {SUPPORTED_FAMILIES}")
        check_dropout(dropout)
        weights_path = None if weights_path is None else str(weights_path)  # JSON-able hparam
        if pretrained:
            if weights_path is None:
                raise BackboneError(f"backbone {name!r}: no weights_path given; {_weights_help(name)}")
            if not Path(weights_path).is_file():
                raise BackboneError(
                    f"backbone {name!r}: weights file {weights_path} does not exist; {_weights_help(name)}"
                )
        torchvision = _import_torchvision(name)
        super().__init__(
            num_classes, in_channels, name=name, weights_path=weights_path, pretrained=pretrained, dropout=dropout
        )
        try:
            net = torchvision.models.get_model(name, weights=None)
        except ValueError as exc:
            raise BackboneError(f"torchvision has no model {name!r} ({exc})") from exc
        if pretrained:
            path = Path(weights_path)  # type: ignore[arg-type]
            try:
                net.load_state_dict(load_state_dict_file(path))
            except RuntimeError as exc:
                raise BackboneError(f"{path}: weights do not fit torchvision {name!r}: {exc}") from exc
        if is_resnet:
            self._adopt_resnet(net)
        else:
            self._adopt_vgg(net)
        self.dropout = nn.Dropout(dropout)

    def _adopt_resnet(self, net: nn.Module) -> None:
        conv1 = net.conv1 if self.in_channels == 3 else _gray_conv(net.conv1, self.in_channels)
        self.stem = nn.Sequential(conv1, net.bn1, nn.ReLU(), net.maxpool)
        for i in range(1, 5):
            layer = getattr(net, f"layer{i}")
            self.add_module(f"layer{i}", nn.Sequential(*(_ResidualBlock(b) for b in layer)))
        self.pool = net.avgpool
        self.head = nn.Linear(net.fc.in_features, self.num_classes)
        self._named = ("stem", "layer1", "layer2", "layer3", "layer4", "pool", "head")
        self.cam_layer = "layer4"

    def _adopt_vgg(self, net: nn.Module) -> None:
        features = list(_fresh_relus(net.features))
        if self.in_channels != 3:
            features[0] = _gray_conv(features[0], self.in_channels)
        blocks: list[list[nn.Module]] = [[]]
        for module in features[:-1]:  # the last max-pool belongs to "pool"
            if isinstance(module, nn.MaxPool2d):
                blocks.append([])
            blocks[-1].append(module)
        names = [f"block{i + 1}" for i in range(len(blocks))]
        for name, modules in zip(names, blocks):
            self.add_module(name, nn.Sequential(*modules))
        self.pool = nn.Sequential(features[-1], net.avgpool)
        classifier = list(_fresh_relus(net.classifier))
        classifier[-1] = nn.Linear(classifier[-1].in_features, self.num_classes)
        self.head = nn.Sequential(*classifier)
        self._named = (*names, "pool", "head")
        self.cam_layer = names[-1]

    @classmethod
    def from_hparams(cls, hparams: dict[str, Any]) -> Backbone:
        """Rebuild without the ImageNet weights file: the checkpoint provides the weights."""
        model = cls(**{**hparams, "pretrained": False})
        model.hparams = dict(hparams)
        return model

    def forward(self, x: Tensor) -> Tensor:
        for name in self._named[:-2]:
            x = self.get_submodule(name)(x)
        x = torch.flatten(self.pool(x), 1)
        return self.head(self.dropout(x))
