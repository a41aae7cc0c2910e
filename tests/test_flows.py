"""Flows under Prefect's test harness (one harness per session: it takes ~13 s to start)."""

import pytest
import yaml

import xaiflow
from conftest import folder_config, write_folder_dataset, write_tiny_run_config

pytestmark = pytest.mark.prefect


@pytest.fixture(scope="session")
def prefect_harness():
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=120):
        yield


def test_ingest_flow_runs_library_ingest(prefect_harness, tmp_path):
    from flows.ingest import ingest_flow

    root = write_folder_dataset(tmp_path / "data")
    config = tmp_path / "run.yaml"
    config.write_text(yaml.safe_dump({"datasets": [folder_config(root)]}))
    ws = tmp_path / "ws.zarr"
    results = ingest_flow(config_path=str(config), workspace=str(ws), cluster="threads")
    assert [(r["dataset"], r["status"], r["n_samples"]) for r in results] == [("tiny", "written", 12)]
    assert xaiflow.open_workspace(ws)["images/tiny"].ds.sizes["sample"] == 12
    again = ingest_flow(config_path=str(config), workspace=str(ws), cluster="threads")
    assert again[0]["status"] == "up-to-date"


def test_train_flow_trains_and_predicts(prefect_harness, tmp_path):
    from flows.train import train_flow
    from xaiflow import store

    config = write_tiny_run_config(tmp_path)
    ws = tmp_path / "ws.zarr"
    from flows.ingest import ingest_flow

    ingest_flow(config_path=str(config), workspace=str(ws), cluster="threads")
    rows = train_flow(config_path=str(config), workspace=str(ws), cluster="threads")
    (row,) = rows
    preds = store.open_group(ws, f"predictions/syn/{row['model_id']}")
    assert preds.sizes["sample"] == 24 and 0 <= row["test_balanced_accuracy"] <= 1


def test_attribute_flow_one_task_per_chunk_on_dask(prefect_harness, tmp_path):
    from flows.attribute import attribute_flow_on
    from flows.ingest import ingest_flow
    from flows.train import train_flow
    from xaiflow.saliency import open_saliency

    config = write_tiny_run_config(tmp_path, attribution={"dataset": "syn", "methods": ["saliency", "grad_cam"],
                                                          "device": "cpu"})
    ws = tmp_path / "ws.zarr"
    ingest_flow(config_path=str(config), workspace=str(ws), cluster="threads")
    (row,) = train_flow(config_path=str(config), workspace=str(ws), cluster="threads")
    res = attribute_flow_on("threads")(config_path=str(config), workspace=str(ws))
    assert res["chunks_run"] == 3 and res["maps_computed"] == {"saliency": 24, "grad_cam": 24}
    ds = open_saliency(ws, "syn", row["model_id"])
    assert bool(ds.done.all()) and ds.attrs["status"] == "complete"
    again = attribute_flow_on("threads")(config_path=str(config), workspace=str(ws))
    assert again["chunks_run"] == 0 and again["chunks_skipped"] == 3
