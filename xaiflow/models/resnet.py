"""``resnet18``: a ResNet-18 (BasicBlock, [2, 2, 2, 2]) for grayscale micrographs.

Written here rather than taken from torchvision so that it needs no extra package and
is friendly to attribution methods: every ReLU is its own module (torchvision's
BasicBlock reuses one ReLU twice, which breaks Captum's DeepLift and LRP hooks), and the
residual sum is an :class:`xaiflow.models.layers.Addition` module, which LRP has a rule for
(an identity shortcut is no module at all: LRP has no rule for ``nn.Identity``). LRP thus
runs through the residual sums, but how relevance divides between a block's branch and
its shortcut is a modelling choice with no single right answer, so read LRP maps of this
network with more caution than those of ``small_cnn``.

``width`` scales every stage (0.25 gives 16-32-64-128 channels, practical on a CPU).
``stem="compact"`` replaces the ImageNet stem (7x7 stride-2 conv and max-pool, /4) by a
3x3 stride-1 conv, so ``layer4`` keeps 1/8 of the input resolution instead of 1/32: use it
for small inputs (64-128 px), where the ImageNet stem leaves Grad-CAM a 2x2 to 4x4 map.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import torch
from torch import Tensor, nn

from xaiflow.models.base import MODELS, MicrographModel, check_dropout
from xaiflow.models.layers import Addition


class BasicBlock(nn.Module):
    """conv3x3-BN-ReLU-conv3x3-BN, plus the shortcut, then ReLU (two separate ReLU modules)."""

    def __init__(self, in_ch: int, out_ch: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_ch, out_ch, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(out_ch)
        self.relu1 = nn.ReLU()
        self.conv2 = nn.Conv2d(out_ch, out_ch, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_ch)
        # None rather than nn.Identity: Captum's LRP has no rule for Identity modules
        self.shortcut: nn.Module | None = None
        if stride != 1 or in_ch != out_ch:
            self.shortcut = nn.Sequential(
                nn.Conv2d(in_ch, out_ch, 1, stride=stride, bias=False), nn.BatchNorm2d(out_ch)
            )
        self.add = Addition()
        self.relu2 = nn.ReLU()

    def forward(self, x: Tensor) -> Tensor:
        out = self.bn2(self.conv2(self.relu1(self.bn1(self.conv1(x)))))
        identity = x if self.shortcut is None else self.shortcut(x)
        return self.relu2(self.add(out, identity))


@MODELS.register("resnet18")
class ResNet18(MicrographModel):
    """Layers ``stem``, ``layer1``..``layer4``, ``pool``, ``head``.

    Args:
        num_classes: number of output logits.
        in_channels: image channels (1 for grayscale micrographs).
        widths: channels of the four stages before scaling.
        width: multiplier applied to ``widths`` (rounded, at least 1 channel).
        dropout: dropout probability before the head (0 disables; MC dropout needs > 0).
        stem: ``"imagenet"`` (downsamples by 4) or ``"compact"`` (no downsampling).
    """

    arch = "resnet18"
    cam_layer = "layer4"
    quick_hparams = {"width": 0.25}
    _named = ("stem", "layer1", "layer2", "layer3", "layer4", "pool", "head")

    def __init__(
        self,
        num_classes: int,
        in_channels: int = 1,
        widths: Sequence[int] = (64, 128, 256, 512),
        width: float = 1.0,
        dropout: float = 0.0,
        stem: Literal["imagenet", "compact"] = "imagenet",
    ) -> None:
        widths = [int(w) for w in widths]
        if len(widths) != 4 or min(widths) < 1:
            raise ValueError(f"widths must be 4 positive integers, got {widths!r}")
        if not width > 0:
            raise ValueError(f"width must be > 0, got {width!r}")
        check_dropout(dropout)
        if stem not in ("imagenet", "compact"):
            raise ValueError(f"stem must be 'imagenet' or 'compact', got {stem!r}")
        super().__init__(num_classes, in_channels, widths=widths, width=width, dropout=dropout, stem=stem)
        chans = [max(1, round(w * width)) for w in widths]
        if stem == "imagenet":
            self.stem = nn.Sequential(
                nn.Conv2d(in_channels, chans[0], 7, stride=2, padding=3, bias=False),
                nn.BatchNorm2d(chans[0]),
                nn.ReLU(),
                nn.MaxPool2d(3, stride=2, padding=1),
            )
        else:
            self.stem = nn.Sequential(
                nn.Conv2d(in_channels, chans[0], 3, padding=1, bias=False), nn.BatchNorm2d(chans[0]), nn.ReLU()
            )
        prev = chans[0]
        for i, ch in enumerate(chans):
            stride = 1 if i == 0 else 2
            self.add_module(f"layer{i + 1}", nn.Sequential(BasicBlock(prev, ch, stride), BasicBlock(ch, ch, 1)))
            prev = ch
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.dropout = nn.Dropout(dropout)
        self.head = nn.Linear(prev, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        x = self.stem(x)
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        x = torch.flatten(self.pool(x), 1)
        return self.head(self.dropout(x))
