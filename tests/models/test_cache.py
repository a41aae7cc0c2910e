"""The per-process model cache: one load per checkpoint, bounded, least recently used evicted."""

from __future__ import annotations

import pytest
import torch

from xaiflow.models import build_model, cache
from xaiflow.models.cache import cached_model
from xaiflow.models.checkpoint import save_checkpoint

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture
def checkpoints(tmp_path):
    """Four small_cnn checkpoints with different weights (nothing trained)."""
    dirs = []
    for i in range(4):
        torch.manual_seed(i)
        dirs.append(tmp_path / f"model{i}")
        save_checkpoint(dirs[-1], build_model("small_cnn", num_classes=2), {"run": i})
    return dirs


def test_repeated_calls_return_the_same_model(checkpoints, monkeypatch):
    monkeypatch.delenv(cache.SIZE_VARIABLE, raising=False)
    model, manifest = cached_model(checkpoints[0])
    again, same_manifest = cached_model(str(checkpoints[0]), "cpu")
    assert again is model and same_manifest is manifest
    assert not model.training and manifest.arch == "small_cnn"
    assert cached_model(checkpoints[1])[0] is not model
    assert cache.cache_size() == cache.DEFAULT_SIZE


def test_the_cache_keeps_its_bound_evicting_the_least_recently_used(checkpoints, monkeypatch):
    monkeypatch.setenv(cache.SIZE_VARIABLE, "2")
    a, b, c, d = checkpoints
    first_a = cached_model(a)[0]
    first_b = cached_model(b)[0]
    assert cached_model(a)[0] is first_a  # a is now more recently used than b
    cached_model(c)  # b goes
    assert len(cache._CACHE) == 2 and [key[0] for key in cache._CACHE] == [str(a.resolve()), str(c.resolve())]
    assert cached_model(a)[0] is first_a
    reloaded_b = cached_model(b)[0]  # c goes
    assert reloaded_b is not first_b
    torch.testing.assert_close(reloaded_b.state_dict(), first_b.state_dict())
    cached_model(d)  # a goes
    assert len(cache._CACHE) == 2 and [key[0] for key in cache._CACHE] == [str(b.resolve()), str(d.resolve())]


@pytest.mark.parametrize("value", ["0", "-1", "four"])
def test_an_invalid_size_is_named(checkpoints, monkeypatch, value):
    monkeypatch.setenv(cache.SIZE_VARIABLE, value)
    with pytest.raises(ValueError, match=f"XAIFLOW_MODEL_CACHE_SIZE must be a positive integer, got '{value}'"):
        cached_model(checkpoints[0])
