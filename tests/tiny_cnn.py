"""The tiny CNN of the method and metric unit tests (milliseconds per call on a CPU).

Two conv layers with separate ReLU modules (guided backprop and LRP need modules, not
functional calls), max-pool, global average pool, linear head: every layer kind the
attribution methods and the randomization checks touch, with parameters in three layers.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from xaiflow.models.base import MicrographModel


class TinyCNN(MicrographModel):
    """conv1 - relu - max-pool - conv2 - relu - global pool - linear."""

    arch = "tiny_test_cnn"
    cam_layer = "conv2"
    _named = ("conv1", "conv2", "pool", "head")

    def __init__(self, num_classes: int = 3, in_channels: int = 1) -> None:
        super().__init__(num_classes, in_channels)
        self.conv1 = nn.Conv2d(in_channels, 4, 3, padding=1)
        self.relu1 = nn.ReLU()
        self.down = nn.MaxPool2d(2)
        self.conv2 = nn.Conv2d(4, 8, 3, padding=1)
        self.relu2 = nn.ReLU()
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.head = nn.Linear(8, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        x = self.relu2(self.conv2(self.down(self.relu1(self.conv1(x)))))
        return self.head(torch.flatten(self.pool(x), 1))
