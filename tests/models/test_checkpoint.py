"""Checkpoints: exact round trip, tamper and unsafe-pickle refusal, atomic saves (real crashes)."""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import shlex
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch

import xaiflow
from xaiflow.models import MODELS, build_model
from xaiflow.models.checkpoint import (
    FORMAT_VERSION,
    CheckpointError,
    Manifest,
    checkpoint_sha256,
    load_checkpoint,
    read_history,
    read_metrics,
    save_checkpoint,
    verify_checkpoint,
)

HAS_TORCHVISION = importlib.util.find_spec("torchvision") is not None
SMALL: dict[str, dict] = {"resnet18": {"width": 0.25}, "backbone": {"name": "resnet18", "pretrained": False}}
CONFIG = {"dataset": "uhcs", "epochs": 2, "lr": 1e-3}


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def trained_like(arch: str = "small_cnn", seed: int = 0):
    """A model whose weights and BatchNorm running stats differ from a fresh build."""
    torch.manual_seed(seed)
    model = build_model(arch, 3, **SMALL.get(arch, {}))
    model.train()
    model(torch.rand(4, 1, 32, 32))  # moves the BatchNorm running statistics
    with torch.no_grad():
        model.head.weight.add_(1.0)
    return model.eval()


@pytest.fixture
def saved(tmp_path: Path) -> Path:
    directory = tmp_path / "models" / "m1"
    save_checkpoint(directory, trained_like(), CONFIG, history=[{"epoch": 0, "loss": 1.5}], metrics={"acc": 0.5})
    return directory


def rewrite_manifest(directory: Path, **changes) -> None:
    path = directory / "manifest.json"
    path.write_text(json.dumps({**json.loads(path.read_text()), **changes}))


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.mark.parametrize("arch", MODELS.names())
def test_round_trip_gives_identical_outputs(tmp_path, arch):
    if arch == "backbone" and not HAS_TORCHVISION:
        pytest.skip("torchvision is not installed (the backbone's error is tested in test_models.py)")
    model = trained_like(arch)
    manifest = save_checkpoint(tmp_path / arch, model, CONFIG)
    loaded, read = load_checkpoint(tmp_path / arch)
    x = torch.rand(2, 1, 32, 32)
    assert type(loaded) is type(model) and not loaded.training
    assert torch.equal(loaded(x), model(x))
    assert read == manifest and read.arch == arch and read.hparams == model.hparams


def test_layout_manifest_and_side_files(saved):
    assert sorted(p.name for p in saved.iterdir()) == ["history.json", "manifest.json", "metrics.json", "weights.pt"]
    assert not [p for p in saved.parent.iterdir() if p.name.startswith(".")]  # no temporary leftovers
    manifest = verify_checkpoint(saved)
    assert manifest.format_version == FORMAT_VERSION and manifest.config == CONFIG
    assert manifest.xaiflow_version == xaiflow.__version__ and manifest.torch_version == torch.__version__
    assert manifest.weights_sha256 == sha256(saved / "weights.pt") == checkpoint_sha256(saved)
    assert Manifest.from_json(manifest.to_json()) == manifest
    assert read_history(saved) == [{"epoch": 0, "loss": 1.5}] and read_metrics(saved) == {"acc": 0.5}


def test_numpy_and_path_values_are_stored_as_json(tmp_path):
    save_checkpoint(
        tmp_path / "m", trained_like(), {"root": tmp_path}, metrics={"acc": np.float32(0.25), "cm": np.eye(2)}
    )
    assert read_metrics(tmp_path / "m") == {"acc": 0.25, "cm": [[1.0, 0.0], [0.0, 1.0]]}
    assert verify_checkpoint(tmp_path / "m").config == {"root": str(tmp_path)}


def test_replacing_a_checkpoint(saved):
    model = trained_like(seed=1)
    save_checkpoint(saved, model, {"run": 2})
    loaded, manifest = load_checkpoint(saved)
    assert manifest.config == {"run": 2} and read_history(saved) == []
    assert torch.equal(loaded.head.weight, model.head.weight)
    assert not [p for p in saved.parent.iterdir() if p.name.startswith(".")]


def test_refuses_to_replace_a_directory_that_is_not_a_checkpoint(tmp_path):
    (tmp_path / "notes.txt").write_text("keep me")
    with pytest.raises(CheckpointError, match="not a checkpoint directory"):
        save_checkpoint(tmp_path, trained_like(), CONFIG)
    assert (tmp_path / "notes.txt").read_text() == "keep me"


def test_tampered_weights_refused(saved):
    weights = saved / "weights.pt"
    data = bytearray(weights.read_bytes())
    data[len(data) // 2] ^= 0xFF
    weights.write_bytes(bytes(data))
    for check in (verify_checkpoint, load_checkpoint, checkpoint_sha256):
        with pytest.raises(CheckpointError) as err:
            check(saved)
        msg = str(err.value)
        assert "weights.pt was modified after saving: sha256" in msg and sha256(weights) in msg


class Payload:
    """Unpickling this runs a shell command: the classic pickle code-execution attack."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {shlex.quote(str(self.marker))}",))


@pytest.mark.parametrize("where", ["top_level", "inside_state_dict"])
def test_malicious_pickle_refused_and_not_executed(saved, tmp_path, where):
    marker = tmp_path / "pwned"
    payload = Payload(marker)
    weights = saved / "weights.pt"
    if where == "top_level":
        torch.save(payload, weights)
    else:
        state = torch.load(weights, weights_only=True)
        torch.save({**state, "head.extra": payload}, weights)
    rewrite_manifest(saved, weights_sha256=sha256(weights))  # the attacker fixes the hash too
    verify_checkpoint(saved)  # the hash alone cannot tell
    with pytest.raises(CheckpointError, match="refusing to unpickle arbitrary objects") as err:
        load_checkpoint(saved)
    assert "weights.pt" in str(err.value)
    assert not marker.exists()
    torch.load(weights, weights_only=False)  # control: an unsafe load does run the payload
    assert marker.exists()


def test_missing_manifest_is_incomplete(saved):
    (saved / "manifest.json").unlink()
    with pytest.raises(CheckpointError, match="incomplete checkpoint: .*manifest.json is missing"):
        load_checkpoint(saved)


def test_missing_directory_and_weights(saved, tmp_path):
    with pytest.raises(CheckpointError, match="no such checkpoint directory"):
        load_checkpoint(tmp_path / "nope")
    (saved / "weights.pt").unlink()
    with pytest.raises(CheckpointError, match="incomplete checkpoint: .*weights.pt is missing"):
        verify_checkpoint(saved)


def test_invalid_or_newer_manifest_refused(saved):
    rewrite_manifest(saved, format_version=FORMAT_VERSION + 1)
    with pytest.raises(CheckpointError, match="newer than this xaiflow"):
        verify_checkpoint(saved)
    (saved / "manifest.json").write_text("{not json")
    with pytest.raises(CheckpointError, match="manifest.json is not a valid checkpoint manifest"):
        verify_checkpoint(saved)


def test_weights_that_do_not_fit_the_architecture(saved):
    rewrite_manifest(saved, hparams={**verify_checkpoint(saved).hparams, "widths": [8, 16, 32, 48]})
    with pytest.raises(CheckpointError, match="do not match architecture 'small_cnn': shape mismatch: block1"):
        load_checkpoint(saved)
    weights = saved / "weights.pt"
    torch.save(build_model("resnet18", 3, width=0.25).state_dict(), weights)
    rewrite_manifest(saved, weights_sha256=sha256(weights))
    with pytest.raises(CheckpointError, match="missing keys: block1.*unexpected keys"):
        load_checkpoint(saved)


def test_weights_that_are_not_a_state_dict(saved):
    weights = saved / "weights.pt"
    torch.save([torch.zeros(2)], weights)
    rewrite_manifest(saved, weights_sha256=sha256(weights))
    with pytest.raises(CheckpointError, match="holds a list, not a state_dict"):
        load_checkpoint(saved)


def test_unknown_arch_in_manifest(saved):
    rewrite_manifest(saved, arch="vgg99")
    with pytest.raises(CheckpointError, match="unknown model architecture 'vgg99'; valid: "):
        load_checkpoint(saved)


def test_failure_mid_save_keeps_the_previous_checkpoint(saved):
    """metrics.json fails after weights.pt and history.json were written: nothing changes."""
    before = checkpoint_sha256(saved)
    with pytest.raises(CheckpointError, match="cannot save metrics.json"):
        save_checkpoint(saved, trained_like(seed=1), CONFIG, metrics={"bad": object()})
    assert checkpoint_sha256(saved) == before and verify_checkpoint(saved).config == CONFIG
    assert not [p for p in saved.parent.iterdir() if p.name.startswith(".")]
    with pytest.raises(CheckpointError):
        save_checkpoint(saved.parent / "new", trained_like(), CONFIG, metrics={"bad": object()})
    assert not (saved.parent / "new").exists()


CRASH = textwrap.dedent(
    """
    import os, sys, torch
    from xaiflow.models import build_model
    from xaiflow.models.checkpoint import save_checkpoint

    class DiesWhenSerialized:
        def tolist(self):  # called while metrics.json is written, after weights.pt
            os._exit(3)

    save_checkpoint(sys.argv[1], build_model("small_cnn", 3), {}, metrics={"x": DiesWhenSerialized()})
    """
)


def test_process_killed_mid_save_leaves_the_previous_checkpoint(saved):
    """A real process dies (os._exit: no cleanup, no finally) halfway through replacing a checkpoint."""
    before = checkpoint_sha256(saved)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(
        [sys.executable, "-c", CRASH, str(saved)], capture_output=True, text=True, timeout=120, env=env
    )
    assert proc.returncode == 3, proc.stderr
    assert checkpoint_sha256(saved) == before and verify_checkpoint(saved).config == CONFIG
    (leftover,) = [p for p in saved.parent.iterdir() if p.name.startswith(f".{saved.name}.tmp-")]
    assert (leftover / "weights.pt").exists()
    with pytest.raises(CheckpointError, match="incomplete checkpoint"):
        load_checkpoint(leftover)


def test_load_map_location(saved):
    model, _ = load_checkpoint(saved, map_location=torch.device("cpu"))
    assert all(p.device.type == "cpu" for p in model.parameters())
