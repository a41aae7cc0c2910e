"""float16 map storage with a per-map scale: half the bytes, float32 maps when read, resumable,
refused when mixed with float32 under one key (real workspace, Dask worker processes)."""

import numpy as np
import pytest
import zarr

from conftest import ingest_synthetic, train_tiny
from xaiflow import store
from xaiflow.attribution.engine import AttributionError, run_attribution
from xaiflow.config import AttributionConfig
from xaiflow.plugins import PluginSpec
from xaiflow.metrics.runner import metrics_group, run_metrics
from xaiflow.saliency import DONE_SUFFIX, SCALE_SUFFIX, decode_maps, encode_maps, open_saliency, saliency_group

METHODS = {"saliency": {}, "occlusion": {"window": 8, "stride": 8}, "grad_cam": {}}


@pytest.fixture(scope="module")
def ws(tmp_path_factory, client):
    ws = tmp_path_factory.mktemp("storage") / "ws.zarr"
    ingest_synthetic(ws, client)
    return ws, train_tiny(ws, epochs=2)


def config(model_id, storage, suffix=""):
    return AttributionConfig(dataset="syn", model=model_id, device="cpu", storage=storage, target="label",
                             methods=[PluginSpec(name=m, key=m + suffix, params=p) for m, p in METHODS.items()])


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


def test_float16_maps_half_the_bytes_and_read_back_as_float32(ws, client):
    ws, model_id = ws
    run_attribution(ws, config(model_id, "float32"), client=client)
    run_attribution(ws, config(model_id, "float16", "_f16"), client=client)
    ds = open_saliency(ws, "syn", model_id)
    assert ds.saliency.dtype == np.float32
    raw = zarr.open_group(str(ws), path=saliency_group("syn", model_id), mode="r", zarr_format=3)
    for m in METHODS:
        assert raw[m].dtype == np.float32 and raw[m + "_f16"].dtype == np.float16
        assert raw[m + "_f16"].nbytes * 2 == raw[m].nbytes and raw[m + "_f16" + SCALE_SUFFIX].shape == (raw[m].shape[0],)
        assert m + SCALE_SUFFIX not in raw  # float32 maps have no scale
        full = ds.saliency.sel(xai_method=m).values
        half = ds.saliency.sel(xai_method=m + "_f16").values
        peak = np.abs(full).max(axis=(1, 2), keepdims=True)
        assert (np.abs(half - full) <= 2.0**-11 * peak + 1e-12).all(), m
        assert not np.array_equal(half, full) or m == "occlusion"  # really went through float16
    # metrics read the decoded maps: float16 scores track the float32 ones
    run_metrics(ws, "syn", model_id, ["sparseness"], methods=["grad_cam", "grad_cam_f16"], device="cpu",
                client=client)
    scores = store.open_group(ws, metrics_group("syn", model_id)).value.sel(metric="sparseness")
    np.testing.assert_allclose(scores.sel(xai_method="grad_cam_f16").values, scores.sel(xai_method="grad_cam").values,
                               atol=2e-3)


def test_storage_is_part_of_a_keys_identity_and_resume_keeps_stored_maps(ws, client):
    ws, model_id = ws
    run_attribution(ws, config(model_id, "float16", "_f16"), client=client)  # already stored when run after the test above
    with pytest.raises(AttributionError, match="'storage': 'float16'.*'storage': 'float32'"):
        run_attribution(ws, config(model_id, "float32", "_f16"), client=client)
    group = zarr.open_group(str(ws), path=saliency_group("syn", model_id), mode="r+", zarr_format=3)
    before = group["saliency_f16"][:], group["saliency_f16" + SCALE_SUFFIX][:]
    done = group["saliency_f16" + DONE_SUFFIX]
    done[1:3] = False  # two samples of the first chunk lost: the chunk is recomputed around the others
    res = run_attribution(ws, config(model_id, "float16", "_f16"), client=client)
    assert res.maps_computed == {"saliency_f16": 2} and res.chunks_run == 1
    after = group["saliency_f16"][:], group["saliency_f16" + SCALE_SUFFIX][:]
    np.testing.assert_array_equal(after[0], before[0])  # kept maps survive decode + re-encode bit for bit
    np.testing.assert_array_equal(after[1], before[1])
