"""Chunk-parallel extraction into a real workspace, on a real 2-process Dask cluster, with a
small CNN trained on the same synthetic data."""

from __future__ import annotations

import json

import numpy as np
import pytest
import zarr

from conftest import ingest_synthetic, train_tiny
from xaiflow import schema, store
from xaiflow.features import FEATURES, FeatureError, build_extractor
from xaiflow.features.extract import extract_features, make_extractor


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def workspace(tmp_path_factory, client):
    return ingest_synthetic(tmp_path_factory.mktemp("features") / "ws.zarr", client, specimens_per_class=4,
                            chunk_size=8)


@pytest.fixture(scope="module")
def model_id(workspace):
    return train_tiny(workspace, epochs=3, batch_size=8, lr=3e-3)


def params_for(name: str, model_id: str) -> dict:
    return {"cnn": {"model": model_id, "layers": ["block1", "block2"], "pooling": ["mean", "gram"],
                    "gram_channels": 4}}.get(name, {})


@pytest.mark.parametrize("name", FEATURES.names())
def test_extraction_writes_chunk_aligned_labelled_group(name, workspace, model_id, client):
    params = params_for(name, model_id)
    result = extract_features(workspace, "syn", name, params, client=client, fit_samples=16)
    assert result.status == "written" and result.n_samples == 36
    ds = store.open_group(workspace, f"features/syn/{name}")
    images = store.open_group(workspace, "images/syn")
    assert ds.features.dims == ("sample", "feature") and ds.features.dtype == np.float32
    assert ds.features.data.chunksize == (8, result.n_features)  # one chunk per image chunk = per task
    assert ds["done"].values.all()
    for coord in ("label", "group", "split", "um_per_px", "condition"):
        assert np.array_equal(store.strings(ds[coord].values), store.strings(images[coord].values))
    assert ds.attrs["extractor"] == name and ds.attrs["status"] == "complete"
    assert ds.attrs["params"] == json.loads(json.dumps(make_extractor(workspace, name, params).get_params()))
    # the same numbers as one eager call in this process
    ext = make_extractor(workspace, name, params)
    idx = np.unique(np.linspace(0, 35, 16).round().astype(int))
    ext.fit(images.image.values[idx])
    np.testing.assert_allclose(ds.features.values, ext.transform(images.image.values), rtol=1e-5, atol=1e-5)
    assert list(store.strings(ds.feature.values)) == ext.feature_labels()
    assert list(store.strings(ds.family.values)) == ext.feature_families()


def test_cnn_provenance_names_the_checkpoint(workspace, model_id, client):
    extract_features(workspace, "syn", "cnn", {"model": model_id}, key="cnn_default", client=client)
    ident = store.group_attrs(workspace, "features/syn/cnn_default")["identity"]
    assert ident["model_id"] == model_id and len(ident["checkpoint_sha256"]) == 64
    assert ident["params"]["layers"] is None  # verbatim: the default layer is the model's cam layer
    assert store.open_group(workspace, "features/syn/cnn_default").sizes["feature"] == 2 * 16  # mean, max of block2


def test_rerun_is_a_noop_other_params_refused_overwrite_replaces(workspace, client):
    group = "features/syn/glcm_rerun"
    extract_features(workspace, "syn", "glcm", {"levels": 16}, key="glcm_rerun", client=client)
    chunk_file = next((workspace / group / "features" / "c").rglob("*"))
    stamp = chunk_file.stat().st_mtime_ns
    again = extract_features(workspace, "syn", "glcm", {"levels": 16}, key="glcm_rerun", client=client)
    assert again.status == "up-to-date" and chunk_file.stat().st_mtime_ns == stamp
    # groups written before extractors had Params stored the given parameters only: still the same run
    identity = store.group_attrs(workspace, group)["identity"]
    store.set_attrs(workspace, group, identity={**identity, "params": {"levels": 16}})
    assert extract_features(workspace, "syn", "glcm", {"levels": 16}, key="glcm_rerun", client=client).status \
        == "up-to-date"
    with pytest.raises(FeatureError, match=r"params\.levels: stored 16, requested 8.*--overwrite"):
        extract_features(workspace, "syn", "glcm", {"levels": 8}, key="glcm_rerun", client=client)
    replaced = extract_features(workspace, "syn", "glcm", {"levels": 8}, key="glcm_rerun", overwrite=True,
                                client=client)
    assert replaced.status == "written"
    assert store.group_attrs(workspace, group)["params"]["levels"] == 8


def test_interrupted_extraction_resumes_missing_chunks(workspace, client):
    group = "features/syn/lbp_resume"
    extract_features(workspace, "syn", "lbp", key="lbp_resume", client=client)
    good = store.open_group(workspace, group).features.values
    # as if the task of chunk 2 had died: region unwritten, flag down, group incomplete
    zarr.open_array(str(workspace), path=f"{group}/features", mode="r+")[16:24] = 0
    zarr.open_array(str(workspace), path=f"{group}/done", mode="r+")[16:24] = False
    store.set_attrs(workspace, group, status=schema.STATUS_INCOMPLETE)
    with pytest.raises(store.WorkspaceError, match="incomplete"):
        store.open_group(workspace, group)
    result = extract_features(workspace, "syn", "lbp", key="lbp_resume", client=client)
    assert result.status == "resumed"
    np.testing.assert_array_equal(store.open_group(workspace, group).features.values, good)


def test_unknown_layer_fails_before_any_task(workspace, model_id, client):
    with pytest.raises(KeyError, match="valid layers: block1, block2, pool, head"):
        extract_features(workspace, "syn", "cnn", {"model": model_id, "layers": ["block9"]}, client=client)
    assert not store.group_exists(workspace, "features/syn/cnn_bad")


def test_builtin_parameters_are_validated():
    with pytest.raises(FeatureError, match=r"'glcm'.*levels: .*less than or equal to 256 \(got 1000\)"):
        build_extractor("glcm", {"levels": 1000})
    with pytest.raises(FeatureError, match=r"props\.0: .*'contrast'.*\(got 'entropy'\)"):
        build_extractor("glcm", {"props": ["entropy"]})
    with pytest.raises(FeatureError, match=r"phase: .*'otsu' or 'intensity' \(got 'binary'\)"):
        build_extractor("twopoint", {"phase": "binary"})
