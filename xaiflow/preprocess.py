"""Stored pixels -> network input. One function, used by training, prediction and attribution,
so a map is always computed on exactly what the model was trained on."""

from __future__ import annotations

import numpy as np
import torch


def to_input(images: np.ndarray) -> torch.Tensor:
    """(N, H, W) uint8/uint16/float32 -> (N, 1, H, W) float32, standardised per image.

    Per-image standardisation removes brightness/contrast differences between acquisitions
    (detector, session), which a micrograph classifier should not rely on.
    """
    x = torch.from_numpy(np.ascontiguousarray(images, dtype=np.float32)).unsqueeze(1)
    mean = x.mean(dim=(2, 3), keepdim=True)
    std = x.std(dim=(2, 3), keepdim=True)
    return (x - mean) / (std + 1e-6)
