"""Training, checkpoints and predictions on a small synthetic workspace (real torch, real Dask)."""

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import ingest_synthetic
from xaiflow import store
from xaiflow.config import TrainConfig, parse_config
from xaiflow.models.catalog import ModelNotFoundError
from xaiflow.models.checkpoint import CheckpointError, load_checkpoint
from xaiflow.predict import predict_dataset
from xaiflow.registry import UnknownEntryError
from xaiflow.training import TrainingError, classification_report, expand_runs, train_many, train_model


@pytest.fixture(scope="module")
def workspace(tmp_path_factory, client):
    ws = tmp_path_factory.mktemp("train") / "ws.zarr"
    return ingest_synthetic(ws, client, specimens_per_class=5, size=48, chunk_size=8,
                            split={"fractions": {"train": 0.6, "val": 0.2, "test": 0.2}})


def small(**kw) -> TrainConfig:
    base = dict(dataset="syn", epochs=6, batch_size=8, lr=3e-3, model_params={"widths": [8, 16, 16]},
                device="cpu", threads=1, augment={"crop": 40})
    return TrainConfig(**{**base, **kw})


@pytest.fixture(scope="module")
def trained(workspace):
    return train_model(workspace, small())


def test_training_learns_and_reports(trained):
    assert not trained["reused"]
    metrics = json.loads((Path(trained["checkpoint"]) / "metrics.json").read_text())
    test = metrics["test"]
    assert set(test["per_class"]) == {"particles", "lamellae", "network"}
    assert np.array(test["confusion"]).sum() == test["n"]
    assert test["majority_baseline"]["balanced_accuracy"] == pytest.approx(1 / 3)
    assert test["balanced_accuracy"] > 0.6  # the three structures are easy to tell apart


def test_rerun_reuses_checkpoint_and_force_retrains(workspace, trained):
    weights = Path(trained["checkpoint"]) / "weights.pt"
    mtime = weights.stat().st_mtime_ns
    before = load_checkpoint(trained["checkpoint"])[0].state_dict()
    again = train_model(workspace, small())
    assert again["reused"] and again["model_id"] == trained["model_id"] and weights.stat().st_mtime_ns == mtime
    assert train_model(workspace, small(), force=True)["model_id"] == trained["model_id"]
    assert weights.stat().st_mtime_ns != mtime
    after = load_checkpoint(trained["checkpoint"])[0].state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)  # same seed, same weights
    assert train_model(workspace, small(lr=1e-3))["model_id"] != trained["model_id"]


def test_tampered_checkpoint_is_refused(workspace, trained, tmp_path):
    import shutil

    copy = tmp_path / "copy"
    shutil.copytree(trained["checkpoint"], copy)
    data = bytearray((copy / "weights.pt").read_bytes())
    data[-20] ^= 0xFF
    (copy / "weights.pt").write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match="modified after saving"):
        load_checkpoint(copy)


def test_predictions_written_chunk_aligned(workspace, trained, client):
    group = predict_dataset(workspace, trained["model_id"], "syn", client=client)
    ds = store.open_group(workspace, group)
    assert ds.logits.shape == (45, 3) and ds.logits.data.chunksize[0] == 8
    np.testing.assert_allclose(ds.probabilities.values.sum(1), 1, rtol=1e-5)
    assert (ds.predicted.values == ds.logits.values.argmax(1)).all()
    model, _ = load_checkpoint(trained["checkpoint"])
    from xaiflow.preprocess import to_input

    images = store.open_group(workspace, "images/syn").image.values[:4]
    with torch.no_grad():
        np.testing.assert_allclose(model(to_input(images)).numpy(), ds.logits.values[:4], atol=1e-5)
    with pytest.raises(ModelNotFoundError, match="no trained model 'nope'"):
        predict_dataset(workspace, "nope", "syn", client=client)


def test_parallel_fold_runs_on_dask(workspace, client):
    runs = expand_runs(small(epochs=2), folds=2)
    rows = train_many(workspace, runs, client=client)
    assert [r["fold"] for r in rows] == [0, 1] and len({r["model_id"] for r in rows}) == 2
    assert all(0 <= r["val_balanced_accuracy"] <= 1 for r in rows)


@pytest.mark.parametrize("cfg, error, message", [
    (dict(arch="vgg99"), UnknownEntryError, "unknown model architecture 'vgg99'; valid: backbone, resnet18, small_cnn"),
    (dict(model_params={"depth": 3}), TrainingError, "unknown parameter.*'depth'.*valid: widths, dropout"),
    (dict(dataset="nope"), TrainingError, "group 'images/nope' does not exist"),
    (dict(folds=3, fold=5), TrainingError, "fold must be in 0..2"),
])
def test_bad_training_configs(workspace, cfg, error, message):
    with pytest.raises(error, match=message):
        train_model(workspace, small(**cfg))


def test_class_without_training_sample(workspace, tmp_path):
    import shutil

    ws = tmp_path / "ws.zarr"
    shutil.copytree(workspace, ws)
    ds = store.open_group(ws, "images/syn")
    split = np.where((ds.label.values == "network") & (ds.split.values == "train"), "test", ds.split.values)
    # rewrite the split coordinate in place: 'network' has no training image any more
    import zarr

    zarr.open_array(str(ws), path="images/syn/split", mode="r+")[:] = split
    with pytest.raises(TrainingError, match=r"class\(es\) \['network'\] have no training sample"):
        train_model(ws, small())


def test_wrong_type_in_train_config():
    with pytest.raises(Exception, match="epochs"):
        parse_config({"datasets": [{"name": "x", "source": {"kind": "synthetic"}}],
                      "train": {"dataset": "x", "epochs": "many"}})


def test_classification_report_by_hand():
    rep = classification_report(np.array([0, 0, 1, 1, 2]), np.array([0, 1, 1, 1, 0]), ["a", "b", "c"])
    assert rep["confusion"] == [[1, 1, 0], [0, 2, 0], [1, 0, 0]]
    assert rep["balanced_accuracy"] == pytest.approx((0.5 + 1 + 0) / 3)
    assert rep["per_class"]["b"]["precision"] == pytest.approx(2 / 3)
