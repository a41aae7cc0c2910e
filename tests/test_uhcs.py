"""The real UHCS micrographs: a specimen-stratified subset, and (slow) the full 598 via the CLI."""

import numpy as np
import pytest

import xaiflow
from xaiflow import schema
from xaiflow.config import load_config
from xaiflow.ingest import ingest_dataset
from cli_run import run
from conftest import REPO

pytestmark = pytest.mark.uhcs


def test_uhcs_subset(uhcs_dir, tmp_path, client):
    cfg = load_config(REPO / "configs/uhcs.yaml", data_dir=uhcs_dir).datasets[0]
    cfg.source.max_per_group_label = 1
    cfg = cfg.model_copy(update={"geometry": cfg.geometry.model_copy(update={"size": (64, 64)})})
    res = ingest_dataset(cfg, tmp_path / "ws.zarr", client=client)
    ds = xaiflow.open_workspace(tmp_path / "ws.zarr")["images/uhcs"].ds
    schema.validate_images(ds, "images/uhcs")
    assert res.n_samples == ds.sizes["sample"]
    # one image per (specimen, class) pair: 37 specimens, all 6 classes
    pairs = set(zip(ds.group.values.tolist(), ds.label.values.tolist()))
    assert len(pairs) == ds.sizes["sample"] and len({g for g, _ in pairs}) == 37
    assert set(ds.label.values.tolist()) == set(ds.attrs["classes"]) and len(ds.attrs["classes"]) == 6
    assert set(ds.detector.values.tolist()) >= {"SE", "BSE"}
    assert np.isfinite(ds.um_per_px.values).all() and (ds.um_per_px.values > ds.source_um_per_px.values).all()
    assert ds.image.values.std() > 10  # real micrograph content, not an empty array


@pytest.mark.slow
@pytest.mark.timeout(600)  # the commands run in this process: no subprocess timeout
def test_cli_ingests_all_598_images(uhcs_dir, tmp_path):
    ws = tmp_path / "uhcs.zarr"
    cmd = ["ingest", REPO / "configs/uhcs.yaml", "-w", ws, "--data-dir", uhcs_dir]  # the default local cluster
    res = run(*cmd)
    assert res.returncode == 0, res.stderr
    assert "598 samples, 6 classes, 37 specimens" in res.stdout
    ds = xaiflow.open_workspace(ws)["images/uhcs"].ds
    assert ds.sizes["sample"] == 598 and ds.image.shape[1:] == (192, 192)
    schema.check_specimen_split(ds)
    assert set(ds.split.values.tolist()) == {"train", "val", "test"}
    info = run("info", "-w", ws)
    assert info.returncode == 0 and "spheroidite" in info.stdout and "pearlite+widmanstatten" in info.stdout
    again = run(*cmd)
    assert again.returncode == 0 and "up-to-date" in again.stdout


@pytest.mark.slow
def test_small_cnn_beats_majority_on_held_out_specimens(uhcs_dir, tmp_path, client):
    """The issue's check: small CNN on 2 CPU cores, test balanced accuracy clearly above majority.

    The config's model and augmentation at half its resolution (96 px, crops of 80), 12 epochs: about
    25 s of training here instead of 2-3 minutes at 192 px, and still 0.52 vs a majority's 0.17."""
    from xaiflow.training import train_model

    cfg = load_config(REPO / "configs/uhcs.yaml", data_dir=uhcs_dir)
    data = cfg.datasets[0]
    data = data.model_copy(update={"geometry": data.geometry.model_copy(update={"size": (96, 96)})})
    ingest_dataset(data, tmp_path / "ws.zarr", client=client)
    train = cfg.train.model_copy(update={"epochs": 12, "device": "cpu",
                                         "augment": cfg.train.augment.model_copy(update={"crop": 80})})
    row = train_model(tmp_path / "ws.zarr", train)
    assert row["test_balanced_accuracy"] > row["test_majority_balanced_accuracy"] + 0.2, row
    assert train_model(tmp_path / "ws.zarr", train)["reused"]
