"""``small_cnn``: a plain VGG-like network small enough to train on a 2-core CPU.

Each block is conv3x3 - BatchNorm - ReLU; every block but the last ends with a 2x2
max-pool, so the last block (the Grad-CAM layer) keeps 1/8 of the input resolution
(8x8 maps at 64 px) instead of being pooled away. Global average pooling, dropout (kept
for MC dropout, see ``xaiflow.uncertainty``) and a linear head follow.

Every module is used once and no activation is functional or in place, so Captum's
DeepLift, LRP, guided backprop and deconvolution apply as they are.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

from xaiflow.models.base import MODELS, MicrographModel, check_dropout


def _conv_block(in_ch: int, out_ch: int, pool: bool) -> nn.Sequential:
    layers: list[nn.Module] = [
        nn.Conv2d(in_ch, out_ch, kernel_size=3, padding=1, bias=False),
        nn.BatchNorm2d(out_ch),
        nn.ReLU(),
    ]
    if pool:
        layers.append(nn.MaxPool2d(2))
    return nn.Sequential(*layers)


@MODELS.register("small_cnn")
class SmallCNN(MicrographModel):
    """Layers ``block1``..``blockN`` (N = ``len(widths)``), ``pool``, ``head``.

    Args:
        num_classes: number of output logits.
        in_channels: image channels (1 for grayscale micrographs).
        widths: output channels of each conv block, input to output.
        dropout: dropout probability before the head (also used by MC dropout).
    """

    arch = "small_cnn"

    def __init__(
        self,
        num_classes: int,
        in_channels: int = 1,
        widths: Sequence[int] = (16, 32, 64, 96),
        dropout: float = 0.2,
    ) -> None:
        widths = [int(w) for w in widths]
        if not widths or min(widths) < 1:
            raise ValueError(f"widths must be a non-empty list of positive integers, got {widths!r}")
        check_dropout(dropout)
        super().__init__(num_classes, in_channels, widths=widths, dropout=dropout)
        chans = [in_channels, *widths]
        blocks = [f"block{i + 1}" for i in range(len(widths))]
        for i, name in enumerate(blocks):
            self.add_module(name, _conv_block(chans[i], chans[i + 1], pool=i < len(widths) - 1))
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.dropout = nn.Dropout(dropout)
        self.head = nn.Linear(widths[-1], num_classes)
        self._named = (*blocks, "pool", "head")
        self.cam_layer = blocks[-1]

    def forward(self, x: Tensor) -> Tensor:
        for name in self._named[:-2]:
            x = self.get_submodule(name)(x)
        x = torch.flatten(self.pool(x), 1)
        return self.head(self.dropout(x))
