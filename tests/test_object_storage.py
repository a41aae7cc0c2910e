"""A workspace addressed by an fsspec URL end to end: every stage writes through the URL, in real Dask
worker processes, checkpoints go beside the store and are mirrored per host, locks too.

``file://`` URLs go through the same fsspec code path as ``s3://`` or ``gs://`` (an object store
this machine cannot reach), and unlike ``memory://`` every worker process sees the same files."""

from __future__ import annotations

import numpy as np
import pytest
import xarray as xr
from conftest import ingest_synthetic, train_tiny

from xaiflow import store
from xaiflow.aggregate import group_maps
from xaiflow.attribution.engine import run_attribution
from xaiflow.config import AttributionConfig
from xaiflow.locks import WorkspaceBusyError, group_lock
from xaiflow.models.catalog import ModelCatalog
from xaiflow.models.remote import mirror_dir
from xaiflow.predict import predict_dataset
from xaiflow.saliency import open_saliency
from xaiflow.uncertainty import estimate_uncertainty


@pytest.fixture(scope="module")
def remote(tmp_path_factory, client):
    """Ingest and train through a ``file://`` URL; returns (folder, URL, model id)."""
    folder = tmp_path_factory.mktemp("bucket")
    url = (folder / "ws.zarr").as_uri()
    ingest_synthetic(url, client, chunk_size=8, images_per_specimen=2)
    return folder, url, train_tiny(url)


def test_every_stage_writes_through_the_url(remote, client):
    folder, url, model = remote
    assert (folder / "ws.models" / model / "manifest.json").is_file()  # beside the store, at its URL
    assert (mirror_dir(store.models_url(url)) / model / "weights.pt").is_file()  # and in this host's mirror
    predict_dataset(url, model, "syn", client=client)
    res = run_attribution(url, AttributionConfig(dataset="syn", model=model, device="cpu",
                                                 methods=["grad_cam", "saliency"]), client=client)
    assert res.chunks_run == 3
    unc = estimate_uncertainty(url, [model], "syn", passes=3, client=client)
    for group in ("images/syn", f"predictions/syn/{model}", f"saliency/syn/{model}", unc):
        plain = xr.open_zarr(folder / "ws.zarr", group=group, consolidated=False)  # the same store, as files
        assert plain.attrs["status"] == "complete", group
    maps = group_maps(open_saliency(url, "syn", model), by="label").compute()
    assert np.isfinite(maps.values).all() and maps.sizes["label"] == 3
    again = run_attribution(url, AttributionConfig(dataset="syn", model=model, device="cpu",
                                                   methods=["grad_cam", "saliency"]), client=client)
    assert again.chunks_run == 0  # resumes from the flags written through the URL


def test_a_fresh_host_pulls_the_checkpoints(remote, tmp_path, monkeypatch):
    """Another machine (here: another cache folder) sees the models at the URL and mirrors them on use."""
    _, url, model = remote
    monkeypatch.setenv("XAIFLOW_CACHE_DIR", str(tmp_path / "other-host"))
    entry = ModelCatalog(url).get(model[:12])
    assert entry.directory.is_relative_to(tmp_path / "other-host") and entry.load() is not None


def test_locks_live_beside_the_store_at_its_url(remote):
    folder, url, _ = remote
    with group_lock(url, "saliency/syn/x", "a test run"):
        assert (folder / "ws.locks" / "saliency__syn__x.lock").is_file()
        with pytest.raises(WorkspaceBusyError, match="being written by another run: a test run"):
            with group_lock(url, "saliency/syn/x", "a second run"):
                pass
    assert not (folder / "ws.locks" / "saliency__syn__x.lock").exists()
