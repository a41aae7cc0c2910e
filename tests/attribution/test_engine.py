"""The attribution engine on a real workspace: Dask worker processes, Zarr regions, resume."""

import numpy as np
import pytest
import torch
import zarr

from conftest import ingest_synthetic, train_tiny
from xaiflow import store
from xaiflow.attribution import METHODS, make_method
from xaiflow.attribution.engine import AttributionError, run_attribution
from xaiflow.config import AttributionConfig
from xaiflow.models.catalog import ModelNotFoundError
from xaiflow.plugins import PluginSpec
from xaiflow.models.checkpoint import load_checkpoint, save_checkpoint
from xaiflow.preprocess import to_input
from xaiflow.runtime import TaskError
from xaiflow.saliency import METHOD, open_saliency

#: cheap parameters per method so every registered method runs in the engine tests
FAST = {
    "integrated_gradients": {"n_steps": 4}, "smoothgrad": {"nt_samples": 3}, "gradient_shap": {"n_samples": 3},
    "occlusion": {"window": 8, "stride": 8}, "lime": {"num_samples": 40, "n_segments": 12},
}
DETERMINISTIC = ["saliency", "input_x_gradient", "integrated_gradients", "deeplift", "grad_cam", "occlusion"]


@pytest.fixture(scope="module")
def ws(tmp_path_factory, client):
    ws = tmp_path_factory.mktemp("attr") / "ws.zarr"
    ingest_synthetic(ws, client, specimens_per_class=4)
    return ws, train_tiny(ws, epochs=3)


def config(model_id, methods, **kw):
    return AttributionConfig(dataset="syn", model=model_id, device="cpu",
                             methods=[PluginSpec(name=m, params=FAST.get(m, {})) for m in methods], **kw)


def test_every_registered_method_through_the_engine(ws, client):
    ws, model_id = ws
    res = run_attribution(ws, config(model_id, METHODS.names(), splits=["test"]), client=client)
    ds = open_saliency(ws, "syn", model_id)
    test = ds.split.values == "test"
    assert set(res.maps_computed) == set(METHODS.names())
    assert all(n == test.sum() for n in res.maps_computed.values())
    assert ds.saliency.dims == ("sample", METHOD, "y", "x") and ds.saliency.dtype == np.float32
    sal = ds.saliency.values
    assert np.isfinite(sal[test]).all() and np.isnan(sal[~test]).all()  # only the requested split
    assert ds.done.values[test].all() and not ds.done.values[~test].any()
    # targets are the predicted classes, and stored maps equal a direct call of the method
    model, _ = load_checkpoint(store.models_dir(ws) / model_id)
    idx = np.flatnonzero(test)[:3]
    x = to_input(ds.image.values[idx])
    with torch.no_grad():
        predicted = model(x).argmax(1).numpy()
    for name in DETERMINISTIC:
        target = ds.target.sel({METHOD: name}).values[idx]
        np.testing.assert_array_equal(target, predicted)
        direct = make_method(name, model, **FAST.get(name, {})).attribute(x, torch.from_numpy(predicted)).numpy()
        stored = ds.saliency.sel({METHOD: name}).values[idx]
        np.testing.assert_allclose(stored, direct, atol=1e-5 * np.abs(direct).max())
    prov = ds.attrs["provenance"]
    assert prov["checkpoint_sha256"] == ds.attrs["checkpoint_sha256"] and "captum_version" in prov
    ig = ds.attrs["methods"]["integrated_gradients"]["params"]
    assert ig["n_steps"] == 4 and ig["baseline"] == "zeros" and "internal_batch_size" not in ig  # defaults recorded


def test_rerun_computes_only_missing_chunks(ws, client):
    ws, model_id = ws
    cfg = config(model_id, ["saliency", "integrated_gradients"], splits=["test"])
    run_attribution(ws, cfg, client=client)
    group = f"saliency/syn/{model_id}"
    keys = ["saliency", "integrated_gradients"]
    before = open_saliency(ws, "syn", model_id, keys).saliency.values
    again = run_attribution(ws, cfg, client=client)
    assert again.chunks_run == 0 and again.chunks_skipped > 0
    # a run killed after some chunks: flags of two chunks cleared, their maps lost
    root = zarr.open_group(str(ws), path=group, mode="r+")
    for key in ("saliency", "integrated_gradients"):
        column = list(root[METHOD][:]).index(key)
        root["done"][0:12, column] = False
        root["saliency"][0:12, column] = np.nan
    resumed = run_attribution(ws, cfg, client=client)
    test_chunks = {i // 6 for i in np.flatnonzero(open_saliency(ws, "syn", model_id).split.values == "test")}
    assert resumed.chunks_run == len(test_chunks & {0, 1})
    after = open_saliency(ws, "syn", model_id, keys).saliency.values
    for j, key in enumerate(keys):
        np.testing.assert_array_equal(after[:, j], before[:, j], err_msg=key)


def test_changed_parameters_are_refused_or_stored_under_a_new_key(ws, client):
    ws, model_id = ws
    run_attribution(ws, config(model_id, ["integrated_gradients"], splits=["test"]), client=client)
    other = AttributionConfig(dataset="syn", model=model_id, device="cpu", splits=["test"],
                              methods=[PluginSpec(name="integrated_gradients", params={"n_steps": 8})])
    with pytest.raises(AttributionError, match="integrated_gradients.*stored with.*'n_steps': 4.*Use another key"):
        run_attribution(ws, other, client=client)
    keyed = other.model_copy(update={"methods": [PluginSpec(name="integrated_gradients", key="ig8",
                                                            params={"n_steps": 8})]})
    run_attribution(ws, keyed, client=client)
    ds = open_saliency(ws, "syn", model_id, ["integrated_gradients", "ig8"])
    test = ds.split.values == "test"
    a, b = ds.saliency.values[test, 0], ds.saliency.values[test, 1]
    assert np.isfinite(b).all() and not np.allclose(a, b)


def test_target_all_and_label(ws, client, tmp_path):
    ws, model_id = ws
    import shutil

    copy = tmp_path / "ws.zarr"
    shutil.copytree(ws, copy)
    shutil.copytree(store.models_dir(ws), store.models_dir(copy))
    run_attribution(copy, config(model_id, ["grad_cam"], splits=["test"], target="all"), client=client,
                    overwrite=True)  # the copy holds maps of the predicted class
    raw = store.open_group(copy, f"saliency/syn/{model_id}", check_complete=False)
    assert raw.saliency.dims == ("sample", METHOD, "class", "y", "x") and raw.saliency.shape[2] == 3
    with pytest.raises(AttributionError, match="target='all'.*target='label'"):
        run_attribution(copy, config(model_id, ["grad_cam"], target="label"), client=client)
    run_attribution(copy, config(model_id, ["grad_cam"], splits=["test"], target="label"), client=client,
                    overwrite=True)
    ds = open_saliency(copy, "syn", model_id)
    test = ds.split.values == "test"
    np.testing.assert_array_equal(ds.target.values[test, 0], ds.label_index.values[test])


def test_unknown_method_lists_valid_ones(ws, client):
    ws, model_id = ws
    with pytest.raises(AttributionError, match="unknown attribution method 'shapley'; valid: deeplift, grad_cam"):
        run_attribution(ws, config(model_id, ["shapley"]), client=client)


def test_bad_parameter_and_layer(ws, client):
    ws, model_id = ws
    bad_param = AttributionConfig(dataset="syn", model=model_id, methods=[PluginSpec(name="occlusion", params={"windw": 3})])
    with pytest.raises(AttributionError, match="unknown parameter.*'windw'.*valid parameters: window"):
        run_attribution(ws, bad_param, client=client)
    bad_layer = AttributionConfig(dataset="syn", model=model_id, methods=[PluginSpec(name="grad_cam", params={"layer": "conv9"})])
    with pytest.raises(AttributionError, match="no layer 'conv9'; valid layers: block1, block2"):
        run_attribution(ws, bad_layer, client=client)


def test_class_count_mismatch_and_unknown_model(ws, client, tmp_path):
    ws, model_id = ws
    ingest_synthetic(ws, client, name="four", specimens_per_class=1, images_per_specimen=2, classes=None)
    with pytest.raises(AttributionError, match="3 outputs but dataset 'four' has 4 classes"):
        run_attribution(ws, AttributionConfig(dataset="four", model=model_id), client=client)
    with pytest.raises(ModelNotFoundError, match="no trained model 'nope'.*models: small_cnn-syn-"):
        run_attribution(ws, AttributionConfig(dataset="syn", model="nope"), client=client)


def test_nonfinite_maps_are_flagged_and_reported(ws, client):
    ws, model_id = ws
    model, manifest = load_checkpoint(store.models_dir(ws) / model_id)
    with torch.no_grad():
        model.head.weight[0, 0] = float("nan")  # a weight that every gradient passes through
    save_checkpoint(store.models_dir(ws) / "broken", model, manifest.config)
    res = run_attribution(ws, config("broken", ["saliency"], splits=["test"]), client=client)
    ds = open_saliency(ws, "syn", "broken")
    flagged = ds.nonfinite.sel({METHOD: "saliency"}).values
    test = ds.split.values == "test"
    assert res.nonfinite["saliency"] == test.sum() and flagged[test].all()


def test_failing_chunk_fails_only_its_task(ws, client, tmp_path):
    import shutil

    ws, model_id = ws
    copy = tmp_path / "ws.zarr"
    shutil.copytree(ws, copy)
    shutil.copytree(store.models_dir(ws), store.models_dir(copy))
    chunk = copy / "images/syn/image/c/1/0/0"
    good = chunk.read_bytes()
    chunk.write_bytes(b"corrupt")
    cfg = AttributionConfig(dataset="syn", model=model_id, device="cpu", methods=[PluginSpec(name="saliency", key="fresh")])
    with pytest.raises(TaskError, match="1 of .* attribute tasks failed"):
        run_attribution(copy, cfg, client=client)
    done = open_saliency(copy, "syn", model_id, ["fresh"]).done.values[:, 0]
    assert done[:6].all() and not done[6:12].any() and done[12:].all()
    chunk.write_bytes(good)
    res = run_attribution(copy, cfg, client=client)
    assert res.chunks_run == 1 and open_saliency(copy, "syn", model_id, ["fresh"]).done.values.all()


def test_gpu_resource_tasks_only_run_on_workers_that_declare_it(ws, tmp_path):
    """A real scheduler, one plain worker and one worker started with --resources GPU=1."""
    import subprocess
    import sys

    from distributed import Client, LocalCluster

    ws, model_id = ws
    with LocalCluster(n_workers=1, threads_per_worker=1, dashboard_address=None) as cluster, Client(cluster) as c:
        proc = subprocess.Popen([sys.executable, "-m", "distributed.cli.dask_worker", cluster.scheduler_address,
                                 "--nthreads", "1", "--resources", "GPU=1", "--no-dashboard"],
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            c.wait_for_workers(2, timeout=60)
            gpu_worker = next(a for a, w in c.scheduler_info()["workers"].items() if w["resources"].get("GPU"))
            import shutil

            copy = tmp_path / "ws.zarr"
            shutil.copytree(ws, copy)
            shutil.copytree(store.models_dir(ws), store.models_dir(copy))
            from xaiflow.attribution import engine

            from distributed import get_task_stream

            from xaiflow.jobs import run_job

            job = engine.prepare(copy, config(model_id, ["saliency"], gpu=True))
            with get_task_stream(client=c) as stream:  # the job's chunk tasks, run as the CLI runs them
                result = run_job(job, client=c)
            assert result.chunks_run == len(job.chunks) > 0
            assert {t["worker"] for t in stream.data} == {gpu_worker}
        finally:
            proc.terminate()
            proc.wait(timeout=30)


def test_predicted_targets_come_from_this_checkpoints_stored_predictions(ws, client, tmp_path):
    """With stored predictions (`xaiflow train` and `predict` write them) the engine reads the
    predicted class instead of a forward pass, but only while they were made by this checkpoint
    from these images."""
    import shutil

    from xaiflow.attribution.engine import prepare
    from xaiflow.predict import predict_dataset

    ws, model_id = ws
    copy = tmp_path / "ws.zarr"
    shutil.copytree(ws, copy)
    shutil.copytree(store.models_dir(ws), store.models_dir(copy))
    if store.group_exists(copy, f"saliency/syn/{model_id}"):  # maps of earlier tests would be kept
        store.delete_group(copy, f"saliency/syn/{model_id}")
    cfg = config(model_id, ["grad_cam"], splits=["test"])
    assert prepare(copy, cfg).predictions is None  # nothing stored yet
    pred_group = predict_dataset(copy, model_id, "syn", client=client)
    assert prepare(copy, cfg, overwrite=True).predictions == pred_group
    # plant a recognisable class in the stored predictions: the maps must explain it
    stored = zarr.open_group(str(copy), path=pred_group, mode="r+")["predicted"]
    planted = (np.asarray(stored[:]) + 1) % 3
    stored[:] = planted
    run_attribution(copy, cfg, client=client)
    ds = open_saliency(copy, "syn", model_id)
    test = ds.split.values == "test"
    np.testing.assert_array_equal(ds.target.values[test, 0], planted[test])
    # predictions of another checkpoint are not used: the engine falls back to a forward pass
    store.set_attrs(copy, pred_group, provenance={**store.group_attrs(copy, pred_group)["provenance"],
                                                  "checkpoint_sha256": "0" * 64})
    assert prepare(copy, cfg).predictions is None
