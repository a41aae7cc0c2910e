"""The served pipeline deployment, triggered through the REST call of the UI's "Run" button, runs
every stage against a separately started Dask scheduler and two workers, fills the workspace and
publishes artifacts."""

from __future__ import annotations

import json

import pytest
from distributed import Client

from flows.pipeline import STAGES
from xaiflow import store

from services import api_json, wait_for_flow_run

pytestmark = [pytest.mark.e2e, pytest.mark.slow]


def _artifacts(api: str, flow_run_ids: list[str]) -> list[dict]:
    body = {"artifacts": {"flow_run_id": {"any_": flow_run_ids}}, "limit": 200, "offset": 0, "sort": "CREATED_DESC"}
    return api_json("POST", f"{api}/artifacts/filter", json=body)


def _subflow_runs(api: str, parent_id: str) -> list[dict]:
    body = {"flow_runs": {"parent_flow_run_id": {"operator": "and_", "any_": [parent_id]}}, "limit": 100}
    return api_json("POST", f"{api}/flow_runs/filter", json=body)


def test_ui_run_call_runs_the_pipeline_on_the_dask_cluster(prefect_server, dask_cluster, served_deployment):
    api, dep = prefect_server.api, served_deployment
    # the UI's "Run > Custom run" posts the form's parameters here ("Quick run" posts none: the defaults)
    run = api_json("POST", f"{api}/deployments/{dep.id}/create_flow_run",
                   json={"parameters": dep.parameters, "state": {"type": "SCHEDULED"}})
    run = wait_for_flow_run(prefect_server, dep, run["id"])
    assert run["deployment_id"] == dep.id and run["parameters"] == dep.parameters

    (model,) = [g.rsplit("/", 1)[1] for g in store.list_groups(dep.workspace) if g.startswith("predictions/")]
    assert store.list_groups(dep.workspace) == [
        f"adversarial/syn/{model}", f"concepts/syn/{model}/activations", f"concepts/syn/{model}/tcav",
        "features/syn/glcm", "images/syn", f"importance/syn/{model}", "masks/syn", f"metrics/syn/{model}",
        f"predictions/syn/{model}", f"probes/syn/{model}", f"saliency/syn/{model}", "studies/syn/classification",
        "studies/syn/reduction", f"uncertainty/syn/{model}"]

    # the stages' Dask work ran on the separately started scheduler's workers
    with Client(dask_cluster.address, timeout=10) as client:
        ran = client.run_on_scheduler(lambda dask_scheduler: {
            name for name, p in dask_scheduler.task_prefixes.items() if p.state_counts.get("memory", 0) > 0})
    # chunk tasks of every chunked job (Prefect tasks sent by the DaskTaskRunner), and the library's own
    # Dask tasks of training and the studies, all on the same cluster
    expected = {"scan_chunk", "write_chunk", "train_task", "predict_chunk", "features_chunk", "cv_task",
                "reduction_task", "attribute_chunk", "metrics_chunk", "uncertainty_chunk", "concept_chunk",
                "concept_set", "cav_fit", "importance_chunk", "probe_chunk", "adversarial_chunk"}
    assert expected <= ran, expected - ran

    subflows = _subflow_runs(api, run["id"])
    assert len(subflows) == 13  # ingest ... evaluate, the five inspections, report
    artifacts = {a["key"]: a for a in _artifacts(api, [run["id"]] + [r["id"] for r in subflows])}
    stages = json.loads(artifacts["pipeline-stages"]["data"])
    assert [(r["stage"], r["status"]) for r in stages] == [(s, "done") for s in STAGES]
    assert artifacts["pipeline-summary"]["type"] == "markdown"
    assert str(dep.workspace) in artifacts["pipeline-summary"]["data"]
    assert f"{model} test balanced accuracy" in artifacts["pipeline-summary"]["data"]
    assert artifacts["trained-models"]["type"] == "table" and artifacts["attribute-progress"]["type"] == "progress"
    assert float(artifacts["attribute-progress"]["data"]) == 100.0
    assert any(a["type"] == "image" for a in artifacts.values())
