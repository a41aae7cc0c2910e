"""A per-process cache of loaded checkpoints, so a Dask worker loads a model once and reuses
it for every chunk it processes (keyed by checkpoint path, weights sha256 and device).

The cache is bounded: it keeps the ``XAIFLOW_MODEL_CACHE_SIZE`` (a positive integer, default
4) most recently used models and drops the least recently used beyond that, so a long-lived
worker serving runs of many checkpoints does not hold every model it ever loaded (a
ResNet-50 is ~100 MB, and GPU memory is scarce). The variable is read at every call. The
threads of a worker share the cache; a model is loaded under its lock, so threads asking
for it at once load it once.
"""

from __future__ import annotations

import os
import threading
from collections import OrderedDict
from pathlib import Path

import torch

from xaiflow.models.base import MicrographModel
from xaiflow.models.checkpoint import Manifest, load_checkpoint, verify_checkpoint

#: environment variable holding the number of models the cache keeps
SIZE_VARIABLE = "XAIFLOW_MODEL_CACHE_SIZE"
DEFAULT_SIZE = 4

#: (checkpoint directory, weights sha256, device) -> (model, manifest), least recently used first
_CACHE: OrderedDict[tuple[str, str, str], tuple[MicrographModel, Manifest]] = OrderedDict()
_LOCK = threading.Lock()


def cache_size() -> int:
    """The number of models the cache keeps: ``$XAIFLOW_MODEL_CACHE_SIZE``, default 4."""
    value = os.environ.get(SIZE_VARIABLE, "").strip()
    if not value:
        return DEFAULT_SIZE
    try:
        size = int(value)
    except ValueError:
        size = 0
    if size < 1:
        raise ValueError(f"{SIZE_VARIABLE} must be a positive integer, got {value!r}")
    return size


def cached_model(directory: str | Path, device: torch.device | str = "cpu") -> tuple[MicrographModel, Manifest]:
    """The checkpoint's model in eval mode on ``device``; verified at every call, loaded once
    per process while it stays among the :func:`cache_size` most recently used."""
    size = cache_size()
    directory = Path(directory).resolve()
    manifest = verify_checkpoint(directory)
    key = (str(directory), manifest.weights_sha256, str(device))
    with _LOCK:
        if key in _CACHE:
            _CACHE.move_to_end(key)
        else:
            _CACHE[key] = load_checkpoint(directory, map_location=device)
        entry = _CACHE[key]
        while len(_CACHE) > size:
            _CACHE.popitem(last=False)
    return entry
