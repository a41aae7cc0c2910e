"""A per-process cache of loaded checkpoints, so a Dask worker loads a model once and reuses
it for every chunk it processes (keyed by checkpoint path, weights sha256 and device)."""

from __future__ import annotations

from pathlib import Path

import torch

from xaiflow.models.base import MicrographModel
from xaiflow.models.checkpoint import Manifest, load_checkpoint, verify_checkpoint

_CACHE: dict[tuple[str, str, str], tuple[MicrographModel, Manifest]] = {}


def cached_model(directory: str | Path, device: torch.device | str = "cpu") -> tuple[MicrographModel, Manifest]:
    """The checkpoint's model in eval mode on ``device``; loaded (and verified) once per process."""
    directory = Path(directory).resolve()
    manifest = verify_checkpoint(directory)
    key = (str(directory), manifest.weights_sha256, str(device))
    if key not in _CACHE:
        _CACHE[key] = load_checkpoint(directory, map_location=device)
    return _CACHE[key]

