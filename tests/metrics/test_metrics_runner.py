"""The metrics runner on a real workspace: synthetic data with a planted shortcut, a tiny trained CNN,
maps from the attribution engine, Dask worker processes, resume and the error cases."""

from __future__ import annotations

import shutil

import numpy as np
import pytest
import zarr

from conftest import ingest_synthetic, train_tiny
from xaiflow import schema, store
from xaiflow.attribution import make_method
from xaiflow.attribution.engine import run_attribution
from xaiflow.config import AttributionConfig
from xaiflow.plugins import PluginSpec
from xaiflow.metrics import make_metric, road
from xaiflow.metrics.road import ImputationError
from xaiflow.metrics.runner import MetricsError, metrics_group, run_metrics
from xaiflow.models.checkpoint import load_checkpoint
from xaiflow.preprocess import to_input
from xaiflow.saliency import open_saliency

METRICS = [
    {"name": "deletion", "params": {"n_steps": 4}},
    {"name": "insertion", "params": {"n_steps": 4, "blur_sigma": 2.0}},
    "model_randomization", "pointing_game", "relevance_mass_accuracy", "relevance_rank_accuracy",
    "sparseness", "entropy",
]


@pytest.fixture(scope="module")
def ws(tmp_path_factory, client):
    ws = tmp_path_factory.mktemp("metrics") / "ws.zarr"
    ingest_synthetic(ws, client, images_per_specimen=2, shortcut={"probability": 1.0})
    model_id = train_tiny(ws)
    methods = [PluginSpec(name="saliency"), PluginSpec(name="grad_cam")]
    run_attribution(ws, AttributionConfig(dataset="syn", model=model_id, device="cpu", methods=methods,
                                          splits=["test"]), client=client)
    return ws, model_id


def copy_of(ws, tmp_path):
    """A copy of the workspace (images, masks, maps, model) without metrics."""
    copy = tmp_path / "ws.zarr"
    shutil.copytree(ws, copy)
    shutil.copytree(store.models_dir(ws), store.models_dir(copy))
    store.delete_group(copy, schema.METRICS)
    return copy


def test_layout_values_and_resume(ws, client):
    ws, model_id = ws
    res = run_metrics(ws, "syn", model_id, METRICS, mask_class="structure", device="cpu", client=client)
    ds = store.open_group(ws, metrics_group("syn", model_id))  # complete, readable
    sal = open_saliency(ws, "syn", model_id, ["grad_cam", "saliency"])
    test = sal.split.values == "test"
    assert ds.value.dims == ("sample", "xai_method", "metric") and ds.value.dtype == np.float32
    assert list(store.strings(ds.xai_method.values)) == ["grad_cam", "saliency"]
    assert {"deletion", "deletion_random", "insertion", "insertion_random", "model_randomization", "pointing_game",
            "relevance_mass_accuracy", "relevance_rank_accuracy", "sparseness", "entropy", "pointing_game_chance",
            "relevance_mass_accuracy_chance", "relevance_rank_accuracy_chance"} == set(store.strings(ds.metric.values))
    assert ds.deletion_curve.dims == ("sample", "xai_method", "deletion_fraction") and ds.deletion_fraction.size == 5
    assert ds.model_randomization_spearman.dims == ("sample", "xai_method", "layer")
    assert list(store.strings(ds.layer.values)) == ["head", "block2", "block1"]
    assert ds.value.data.chunksize[0] == 6 and "split" in ds.coords and "label" in ds.coords
    # only samples whose maps are done (the test split) are scored
    done = ds.done.values
    assert done[test].all() and not done[~test].any() and np.isnan(ds.value.values[~test]).all()
    assert np.isfinite(ds.value.sel(xai_method="saliency").values[test]).all()
    assert res.chunks_run == res.chunks_total - res.chunks_skipped and res.computed["sparseness"] == 2 * test.sum()
    attrs = ds.attrs
    assert attrs["metrics"]["deletion"] == make_metric("deletion", n_steps=4).identity()
    assert attrs["metrics"]["pointing_game"]["mask_classes"] == ["structure"]
    assert attrs["outputs"]["deletion"] == {"key": "deletion", "higher_is_better": False, "dim": None,
                                            "description": attrs["outputs"]["deletion"]["description"]}
    assert attrs["methods"]["grad_cam"]["method"] == "grad_cam"
    assert attrs["checkpoint_sha256"] == sal.attrs["checkpoint_sha256"]

    # stored values equal a direct call on the same inputs
    model, _ = load_checkpoint(store.models_dir(ws) / model_id)
    idx = np.flatnonzero(test)[:3]
    maps = sal.saliency.sel(xai_method="saliency").values[idx]
    targets = sal.target.sel(xai_method="saliency").values[idx].astype(np.int64)
    x = to_input(sal.image.values[idx])
    masks = store.open_group(ws, "masks/syn").mask.values[idx] == 1
    method = make_method("saliency", model)
    for spec in METRICS:
        name = spec if isinstance(spec, str) else spec["name"]
        metric = make_metric(name, **({} if isinstance(spec, str) else spec["params"]))
        direct = metric.compute(maps, x, targets, index=idx, model=model, masks=masks, method=method)
        stored = ds.value.sel(xai_method="saliency", metric=name).values[idx]
        np.testing.assert_allclose(stored, direct[name], rtol=1e-5, atol=1e-6, err_msg=name)
    np.testing.assert_allclose(ds.deletion_curve.sel(xai_method="saliency").values[idx],
                               make_metric("deletion", n_steps=4).compute(maps, x, targets, index=idx, model=model)
                               ["deletion_curve"], rtol=1e-5)

    # a re-run has nothing to do; a run killed in chunk 1 recomputes that chunk only, to the same values
    rerun = run_metrics(ws, "syn", model_id, METRICS, mask_class="structure", device="cpu", client=client)
    assert rerun.chunks_run == 0
    before = ds.value.values
    chunk = next(i for i in range(0, len(test), 6) if test[i:i + 6].any())
    root = zarr.open_group(str(ws), path=metrics_group("syn", model_id), mode="r+")
    root["done"][chunk:chunk + 6] = False
    root["value"][chunk:chunk + 6] = np.nan
    again = run_metrics(ws, "syn", model_id, METRICS, mask_class="structure", device="cpu", client=client)
    assert again.chunks_run == 1
    np.testing.assert_array_equal(store.open_group(ws, metrics_group("syn", model_id)).value.values, before)


def test_extending_with_methods_and_keys_keeps_stored_values(ws, client, tmp_path):
    ws, model_id = copy_of(ws[0], tmp_path), ws[1]
    run_metrics(ws, "syn", model_id, ["sparseness"], methods=["saliency"], client=client)
    first = store.open_group(ws, metrics_group("syn", model_id)).value.sel(xai_method="saliency").values
    run_metrics(ws, "syn", model_id, ["entropy", {"name": "deletion", "key": "deletion_blur",
                                                  "params": {"n_steps": 4, "baseline": "blur", "blur_sigma": 2.0}}],
                client=client)
    ds = store.open_group(ws, metrics_group("syn", model_id))
    assert list(store.strings(ds.xai_method.values)) == ["saliency", "grad_cam"]
    assert set(store.strings(ds.metric.values)) == {"sparseness", "entropy", "deletion_blur", "deletion_blur_random"}
    assert ds.deletion_blur_curve.dims[-1] == "deletion_blur_fraction"
    np.testing.assert_array_equal(ds.value.sel(xai_method="saliency", metric="sparseness").values, first[:, 0])
    assert not ds.done.sel(xai_method="grad_cam", metric="sparseness").values.any()  # never asked for
    assert ds.attrs["metrics"]["deletion_blur"]["params"]["baseline"] == "blur"


def test_changed_parameters_are_refused_unless_overwrite(ws, client, tmp_path):
    ws, model_id = copy_of(ws[0], tmp_path), ws[1]
    run_metrics(ws, "syn", model_id, [{"name": "deletion", "params": {"n_steps": 4}}], methods=["saliency"],
                client=client)
    with pytest.raises(MetricsError, match="'deletion' is stored with .*'n_steps': 4.*'n_steps': 8.*another key"):
        run_metrics(ws, "syn", model_id, [{"name": "deletion", "params": {"n_steps": 8}}], client=client)
    run_metrics(ws, "syn", model_id, [{"name": "deletion", "params": {"n_steps": 8}}], methods=["saliency"],
                overwrite=True, client=client)
    ds = store.open_group(ws, metrics_group("syn", model_id))
    assert ds.deletion_fraction.size == 9 and ds.attrs["metrics"]["deletion"]["params"]["n_steps"] == 8
    assert ds.done.sel(xai_method="saliency", metric="deletion").values.sum() > 0
    # another mask class is another identity
    run_metrics(ws, "syn", model_id, ["pointing_game"], methods=["saliency"], client=client)
    with pytest.raises(MetricsError, match=r"'pointing_game' is stored with .*'mask_classes': \['structure', 'shortcut'\]"):
        run_metrics(ws, "syn", model_id, ["pointing_game"], mask_class="shortcut", client=client)
    # values of an older version of a metric (deletion 1: tied pixels in raster order) are not mixed with new ones
    group = metrics_group("syn", model_id)
    stored = dict(store.group_attrs(ws, group)["metrics"])
    assert stored["deletion"]["version"] == 2
    stored["deletion"] = {k: v for k, v in stored["deletion"].items() if k != "version"}  # as version 1 stored it
    store.set_attrs(ws, group, metrics=stored)
    with pytest.raises(MetricsError, match="'deletion' was computed by version 1 of metric 'deletion'; version 2"):
        run_metrics(ws, "syn", model_id, [{"name": "deletion", "params": {"n_steps": 8}}], client=client)


def test_error_cases(ws, client, tmp_path):
    ws, model_id = ws
    with pytest.raises(MetricsError, match=r"\['lime'\] not computed for syn/.*computed: \['grad_cam', 'saliency'\]"):
        run_metrics(ws, "syn", model_id, ["sparseness"], methods=["lime"], client=client)
    with pytest.raises(MetricsError, match="unknown metric 'gini'; valid: deletion"):
        run_metrics(ws, "syn", model_id, ["gini"], client=client)
    with pytest.raises(MetricsError, match=r"mask class\(es\) \['carbide'\].*valid: \['matrix', 'structure', 'shortcut'"):
        run_metrics(ws, "syn", model_id, ["pointing_game"], mask_class="carbide", client=client)
    with pytest.raises(MetricsError, match="no saliency maps for dataset 'syn' and model 'nope'"):
        run_metrics(ws, "syn", "nope", ["sparseness"], client=client)

    copy = copy_of(ws, tmp_path)
    masks = store.open_group(copy, "masks/syn").load()
    small = masks.isel(y=slice(0, 16), x=slice(0, 16))
    store.delete_group(copy, "masks/syn")
    small.to_zarr(copy, group="masks/syn", mode="w", consolidated=False, zarr_format=3)
    with pytest.raises(MetricsError, match=r"\['relevance_mass_accuracy'\]: masks/syn variable 'mask': shape 16x16"):
        run_metrics(copy, "syn", model_id, ["sparseness", "relevance_mass_accuracy"], client=client)
    shuffled = masks.assign_coords(sample=masks.sample.values[::-1].copy())
    shuffled.to_zarr(copy, group="masks/syn", mode="w", consolidated=False, zarr_format=3)
    with pytest.raises(MetricsError, match="sample ids differ from the images'"):
        run_metrics(copy, "syn", model_id, ["pointing_game"], client=client)
    store.delete_group(copy, "masks/syn")
    with pytest.raises(MetricsError, match=r"\['pointing_game'\] need masks, but dataset 'syn' has none"):
        run_metrics(copy, "syn", model_id, ["pointing_game"], client=client)
    store.set_attrs(copy, f"saliency/syn/{model_id}", target="all")
    with pytest.raises(MetricsError, match="target='all'"):
        run_metrics(copy, "syn", model_id, ["sparseness"], client=client)


def test_an_image_size_road_cannot_impute_is_refused_before_any_task(ws, client, monkeypatch):
    ws, model_id = ws
    assert make_metric("region_perturbation").check_image_size(4096, 4096) is None  # fill: blur has no limit
    with pytest.raises(ImputationError, match="images of 1024x1024 px are above the 262144 pixels"):
        make_metric("region_perturbation", fill="road").check_image_size(1024, 1024)
    monkeypatch.setattr(road, "MAX_PIXELS", 16 * 16)  # read in this process, where the run is planned
    before = store.group_attrs(ws, metrics_group("syn", model_id)) if store.group_exists(
        ws, metrics_group("syn", model_id)) else {}
    with pytest.raises(MetricsError, match=r"metrics\[road\]: metric 'road': images of 32x32 px are above the 256"):
        run_metrics(ws, "syn", model_id, ["sparseness", "road"], client=client)
    after = store.group_attrs(ws, metrics_group("syn", model_id)) if before else {}
    assert after == before and "road" not in after.get("metrics", {})  # nothing planned, nothing written


def test_a_method_rerun_that_cannot_fit_its_worker_is_refused(ws, tmp_path):
    """Model randomization runs the attribution method again, on ``batch_size`` maps per call: its
    chunk task estimates that call's peak as an attribution task does, against the worker's limit
    (a real worker whose limit is 1 MB; Dask's own memory management off, so only the estimate acts)."""
    import dask
    from distributed import Client, LocalCluster

    from xaiflow.runtime import TaskError

    ws, model_id = ws
    copy = copy_of(ws, tmp_path)
    off = {f"distributed.worker.memory.{k}": False for k in ("target", "spill", "pause", "terminate")}
    with dask.config.set(off), LocalCluster(processes=False, n_workers=1, threads_per_worker=1, memory_limit="1MB",
                                            dashboard_address="127.0.0.1:0") as cluster, Client(cluster) as small:
        with pytest.raises(TaskError, match=r"methods\[saliency\].*more than this worker's memory limit"):
            run_metrics(copy, "syn", model_id, metrics=["model_randomization"], methods=["saliency"], device="cpu",
                        client=small)
    assert store.group_attrs(copy, f"metrics/syn/{model_id}")["status"] == "incomplete"
