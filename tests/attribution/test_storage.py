"""The saliency group on disk (real workspace, Dask worker processes): one tidy array
``saliency(sample, xai_method, y, x)`` that plain xarray opens, grown when methods are added,
one method's slice reset by --overwrite; float16 storage with a per-map scale, one storage per
group; groups of the older layout (one variable per method) still read."""

import json
import shutil
import subprocess
import sys

import numpy as np
import pytest
import xarray as xr
import zarr

from conftest import ingest_synthetic, train_tiny
from xaiflow import schema, store
from xaiflow.attribution.engine import AttributionError, run_attribution
from xaiflow.config import AttributionConfig
from xaiflow.metrics.runner import metrics_group, run_metrics
from xaiflow.plugins import PluginSpec
from xaiflow.saliency import (METHOD, StoredSaliency, decode_maps, encode_maps, open_saliency, saliency_group,
                              stored_methods)

METHODS = {"saliency": {}, "occlusion": {"window": 8, "stride": 8}, "grad_cam": {}}


@pytest.fixture(scope="module")
def ws(tmp_path_factory, client):
    ws = tmp_path_factory.mktemp("storage") / "ws.zarr"
    ingest_synthetic(ws, client)
    model_id = train_tiny(ws, epochs=2)
    run_attribution(ws, config(model_id, "float32"), client=client)
    return ws, model_id


def config(model_id, storage="float32", methods=None, **kw):
    methods = METHODS if methods is None else methods
    return AttributionConfig(dataset="syn", model=model_id, device="cpu", storage=storage, target="label",
                             methods=[PluginSpec(name=v.get("name", m), key=m,
                                                 params={k: x for k, x in v.items() if k != "name"})
                                      for m, v in methods.items()], **kw)


def copy(ws, tmp_path):
    """A copy of the workspace and its checkpoints (tests that change the group work on one)."""
    target = tmp_path / "ws.zarr"
    shutil.copytree(ws, target)
    shutil.copytree(store.models_dir(ws), store.models_dir(target))
    return target


def raw_group(ws, model_id, mode="r"):
    return zarr.open_group(str(ws), path=saliency_group("syn", model_id), mode=mode, zarr_format=3)


def column(root, key):
    return list(root[METHOD][:]).index(key)


def test_plain_xarray_sees_one_tidy_array_with_companions(ws):
    """In a fresh interpreter without xaiflow: dims, method keys, companions, and no warning."""
    ws, model_id = ws
    code = f"""
import json, sys, warnings
warnings.simplefilter("error")
import xarray as xr
ds = xr.open_zarr({str(ws)!r}, group={saliency_group("syn", model_id)!r})
assert "xaiflow" not in sys.modules
print(json.dumps({{v: list(ds[v].dims) for v in ds.data_vars}} | {{
    "methods": [str(m) for m in ds.xai_method.values], "n_done": int(ds.done.sum()), "n": ds.sizes["sample"],
    "attrs": sorted(ds.saliency.attrs["methods"]), "storage": ds.attrs["storage"]}}))
"""
    out = json.loads(subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout)
    assert out["saliency"] == ["sample", METHOD, "y", "x"]
    for companion in ("target", "done", "nonfinite"):
        assert out[companion] == ["sample", METHOD]
    assert out["methods"] == list(METHODS) and out["attrs"] == sorted(METHODS) and out["storage"] == "float32"
    assert out["n"] == 27 and out["n_done"] == 3 * 27  # every sample of every method
    assert "scale" not in out  # float32 maps have no scale


def test_a_method_added_later_grows_the_axis_and_keeps_stored_maps(ws, client, tmp_path):
    ws, model_id = ws
    ws = copy(ws, tmp_path)
    root = raw_group(ws, model_id)
    before = root["saliency"][:]
    chunks = root["saliency"].chunks
    res = run_attribution(ws, config(model_id, methods={"ig": {"name": "integrated_gradients", "n_steps": 4}}),
                          client=client)
    assert res.maps_computed == {"ig": 27}
    root = raw_group(ws, model_id)
    assert list(root[METHOD][:]) == [*METHODS, "ig"] and root["saliency"].shape[1] == 4
    assert root["saliency"].chunks == chunks and root["done"].chunks[1] == 1  # (S, 1, y, x): a chunk per method
    np.testing.assert_array_equal(root["saliency"][:, :3], before)  # bit-identical
    assert root["done"][:].all()
    ds = open_saliency(ws, "syn", model_id)
    assert list(ds[METHOD].values) == [*METHODS, "ig"] and ds.attrs["methods"]["ig"]["params"]["n_steps"] == 4


def test_overwrite_of_one_method_resets_only_its_slice(ws, client, tmp_path):
    ws, model_id = ws
    ws = copy(ws, tmp_path)
    before = raw_group(ws, model_id)["saliency"][:]
    other = {"occlusion": {"window": 4, "stride": 4}}
    with pytest.raises(AttributionError, match="'occlusion' is stored with.*'window': 8.*--overwrite"):
        run_attribution(ws, config(model_id, methods=other), client=client)
    res = run_attribution(ws, config(model_id, methods=other, splits=["test"]), client=client, overwrite=True)
    root = raw_group(ws, model_id)
    i = column(root, "occlusion")
    test = store.strings(store.open_group(ws, "images/syn")[schema.SPLIT].values) == "test"
    assert res.maps_computed == {"occlusion": test.sum()}
    assert root["done"][:, i].tolist() == test.tolist()  # the other samples' old maps are gone, not kept as done
    assert np.isnan(root["saliency"][:, i][~test]).all() and not np.array_equal(root["saliency"][:, i][test],
                                                                                  before[:, i][test])
    for key in ("saliency", "grad_cam"):  # the other methods: untouched
        np.testing.assert_array_equal(root["saliency"][:, column(root, key)], before[:, column(root, key)])
        assert root["done"][:, column(root, key)].all()
    assert stored_methods(ws, saliency_group("syn", model_id))["occlusion"]["params"]["window"] == 4


def test_encode_keeps_float16_precision_relative_to_each_map_and_no_subnormals():
    rng = np.random.default_rng(0)
    maps = (rng.standard_normal((3, 16, 16)) * np.array([1e-6, 1.0, 1e4])[:, None, None]).astype(np.float32)
    maps[0, 0, 0] = np.nan  # a flagged map keeps its NaN; the scale comes from its finite values
    scaled, scale = encode_maps(maps)
    assert scaled.dtype == np.float16 and scale.dtype == np.float32
    finite = np.isfinite(maps)
    assert np.nanmax(np.abs(scaled.astype(np.float32)), axis=(1, 2)).tolist() == [1.0, 1.0, 1.0]
    back = decode_maps(scaled, scale)
    assert np.isnan(back[0, 0, 0]) and np.isfinite(back[finite]).all()
    peak = np.nanmax(np.abs(maps), axis=(1, 2), keepdims=True)
    relative = np.where(finite, np.abs(back - maps) / peak, 0.0)
    assert relative.max() <= 2.0**-11
    # a raw cast turns the 1e-6 map into float16 subnormals (spacing 6e-8): ~1 % of its peak lost
    raw = maps[0].astype(np.float16).astype(np.float32)
    raw_relative = np.nanmax(np.abs(raw - maps[0])) / peak[0, 0, 0]
    assert raw_relative > 0.005 and raw_relative > 20 * relative[0].max()
    zero, zero_scale = encode_maps(np.zeros((1, 4, 4), np.float32))
    assert zero_scale.tolist() == [1.0] and not zero.any()


@pytest.fixture(scope="module")
def half(ws, client, tmp_path_factory):
    """The module's workspace recomputed with float16 storage (storage is one per group)."""
    ws, model_id = ws
    half = copy(ws, tmp_path_factory.mktemp("half"))
    with pytest.raises(AttributionError, match="storage='float32'; this run has storage='float16'.*--overwrite"):
        run_attribution(half, config(model_id, "float16"), client=client)
    run_attribution(half, config(model_id, "float16"), client=client, overwrite=True)
    return half, model_id


def test_float16_maps_half_the_bytes_and_read_back_as_float32(ws, half, client):
    (ws, model_id), (half, _) = ws, half
    full_raw, half_raw = raw_group(ws, model_id), raw_group(half, model_id)
    assert full_raw["saliency"].dtype == np.float32 and half_raw["saliency"].dtype == np.float16
    assert half_raw["saliency"].nbytes * 2 == full_raw["saliency"].nbytes
    assert half_raw["scale"].shape == half_raw["done"].shape and "scale" not in full_raw  # float32 maps have no scale
    full, halved = open_saliency(ws, "syn", model_id), open_saliency(half, "syn", model_id)
    assert halved.saliency.dtype == np.float32
    plain = xr.open_zarr(str(half), group=saliency_group("syn", model_id))  # as a plain xarray user reads it
    np.testing.assert_array_equal((plain.saliency.astype(np.float32) * plain.scale).values, halved.saliency.values)
    for m in METHODS:
        a, b = full.saliency.sel(xai_method=m).values, halved.saliency.sel(xai_method=m).values
        peak = np.abs(a).max(axis=(1, 2), keepdims=True)
        assert (np.abs(b - a) <= 2.0**-11 * peak + 1e-12).all(), m
        assert not np.array_equal(a, b) or m == "occlusion"  # really went through float16
    # metrics read the decoded maps: float16 scores track the float32 ones
    scores = []
    for w in (ws, half):
        run_metrics(w, "syn", model_id, ["sparseness"], methods=["grad_cam"], device="cpu", client=client)
        scores.append(store.open_group(w, metrics_group("syn", model_id)).value.sel(metric="sparseness").values)
    np.testing.assert_allclose(scores[1], scores[0], atol=2e-3)


def test_resume_keeps_stored_float16_maps_bit_for_bit(half, client):
    half, model_id = half
    group = raw_group(half, model_id, mode="r+")
    i = column(group, "saliency")
    before = group["saliency"][:], group["scale"][:]
    group["done"][1:3, i] = False  # two samples of the first chunk lost: the chunk is recomputed around the others
    res = run_attribution(half, config(model_id, "float16"), client=client)
    assert res.maps_computed == {"saliency": 2} and res.chunks_run == 1
    after = group["saliency"][:], group["scale"][:]
    np.testing.assert_array_equal(after[0], before[0])  # kept maps survive decode + re-encode bit for bit
    np.testing.assert_array_equal(after[1], before[1])


# ------------------------------------------------------------------ groups of the older layout

def write_old_layout(ws, model_id, source, half_keys=()):
    """The saliency group as xaiflow wrote it before the tidy array, with plain xarray: per method key
    ``<key>`` (sample, y, x), ``<key>__target``, ``__done``, ``__nonfinite`` (``__scale`` for
    ``half_keys``: float16 maps divided by it), the identity in each map's attrs, a string
    ``sample`` coordinate; maps taken from ``source`` (an :func:`open_saliency` dataset)."""
    images = store.open_group(ws, "images/syn")
    ds = xr.Dataset(coords={schema.SAMPLE: np.array(store.strings(images[schema.SAMPLE].values), dtype=object),
                            "label": np.array(store.strings(images.label.values), dtype=object),
                            "split": np.array(store.strings(images.split.values), dtype=object),
                            "class": np.array(images.attrs["classes"], dtype=object)},
                    attrs={"model_id": model_id, "checkpoint_sha256": source.attrs["checkpoint_sha256"],
                           "target": "label", "classes": images.attrs["classes"], "schema_version": 1,
                           "status": "complete"})
    encoding = {}
    for key in source[METHOD].values.tolist():
        sel = source.sel({METHOD: key})
        identity = {k: v for k, v in source.attrs["methods"][key].items() if k != "storage"}
        maps = sel.saliency.values
        if key in half_keys:
            maps, scale = encode_maps(maps)
            ds[key + "__scale"] = ((schema.SAMPLE,), scale)
            identity["storage"] = "float16"
        ds[key] = ((schema.SAMPLE, "y", "x"), maps, identity)
        ds[key + "__target"] = ((schema.SAMPLE,), sel.target.values.astype(np.int16))
        ds[key + "__done"] = ((schema.SAMPLE,), sel.done.values)
        ds[key + "__nonfinite"] = ((schema.SAMPLE,), sel.nonfinite.values)
        encoding |= {v: {"chunks": (6, *ds[v].shape[1:])} for v in ds.data_vars if v.startswith(key)}
    group = saliency_group("syn", model_id)
    store.delete_group(ws, group)
    ds.to_zarr(str(ws), group=group, mode="w", consolidated=False, zarr_format=3, encoding=encoding)


def test_a_group_of_the_older_layout_still_reads_and_is_rewritten_only_with_overwrite(ws, client, tmp_path):
    ws, model_id = ws
    old = copy(ws, tmp_path)
    tidy = open_saliency(ws, "syn", model_id)
    write_old_layout(old, model_id, tidy, half_keys=("grad_cam",))
    group = saliency_group("syn", model_id)
    assert not StoredSaliency.open(old, group).tidy
    assert set(stored_methods(old, group)) == set(METHODS)
    back = open_saliency(old, "syn", model_id, list(METHODS)).load()  # compared after the group is rewritten
    assert back.saliency.dims == ("sample", METHOD, "y", "x") and back.saliency.dtype == np.float32
    for v in ("target", "done", "nonfinite"):
        np.testing.assert_array_equal(back[v].values, tidy[v].values)
    np.testing.assert_array_equal(back.saliency.sel(xai_method="saliency").values,
                                  tidy.saliency.sel(xai_method="saliency").values)
    peak = np.abs(tidy.saliency.sel(xai_method="grad_cam").values).max()
    np.testing.assert_allclose(back.saliency.sel(xai_method="grad_cam").values,
                               tidy.saliency.sel(xai_method="grad_cam").values, atol=2.0**-11 * peak)
    # metrics read the older layout through the same adapter
    run_metrics(old, "syn", model_id, ["sparseness"], methods=["saliency"], device="cpu", client=client)
    scores = store.open_group(old, metrics_group("syn", model_id)).value.sel(xai_method="saliency", metric="sparseness")
    assert scores.sizes["sample"] == 27 and np.isfinite(scores.values).all()
    # nothing to compute: the run is accepted and leaves the layout as it is
    assert run_attribution(old, config(model_id, methods={"saliency": {}}), client=client).chunks_run == 0
    assert not StoredSaliency.open(old, group).tidy
    # a new method is refused with a message naming --overwrite, which rewrites the group in the tidy layout
    new = {"saliency": {}, "ig": {"name": "integrated_gradients", "n_steps": 4}}
    with pytest.raises(AttributionError, match="layout of an older xaiflow.*maps of ig cannot be added.*--overwrite"):
        run_attribution(old, config(model_id, methods=new), client=client)
    np.testing.assert_array_equal(open_saliency(old, "syn", model_id, ["saliency"]).saliency.values,
                                  back.saliency.sel(xai_method=["saliency"]).values)  # nothing lost on refusal
    run_attribution(old, config(model_id, methods=new), client=client, overwrite=True)
    rewritten = StoredSaliency.open(old, group)
    assert rewritten.tidy and list(rewritten.methods) == ["saliency", "ig"]
    np.testing.assert_array_equal(open_saliency(old, "syn", model_id, ["saliency"]).saliency.values,
                                  back.saliency.sel(xai_method=["saliency"]).values)  # recomputed: same maps
