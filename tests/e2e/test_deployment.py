"""The served deployment, triggered through the REST call of the UI's "Run" button, runs against a
separately started Dask scheduler and two workers, fills the workspace and publishes artifacts."""

from __future__ import annotations

import pytest
from distributed import Client

from xaiflow import store

from .conftest import api_json, wait_for_flow_run

pytestmark = [pytest.mark.e2e, pytest.mark.slow]


def test_ui_run_call_completes_on_the_dask_cluster(prefect_server, dask_cluster, served_deployment):
    api, dep = prefect_server.api, served_deployment
    # what the UI posts for "Run > Custom run" (parameters given) and "Quick run" (the defaults)
    run = api_json("POST", f"{api}/deployments/{dep.id}/create_flow_run",
                   json={"parameters": dep.parameters, "state": {"type": "SCHEDULED"}})
    run = wait_for_flow_run(prefect_server, dep, run["id"])
    assert run["deployment_id"] == dep.id and run["parameters"] == dep.parameters

    assert store.list_groups(dep.workspace) == ["images/syn", "masks/syn"]
    # the ingest chunk tasks ran on the separately started workers (the scheduler keeps per-prefix counts)
    with Client(dask_cluster.address, timeout=10) as client:
        done = client.run_on_scheduler(lambda dask_scheduler: {
            name: p.state_counts.get("memory", 0) + p.state_counts.get("released", 0) + p.state_counts.get("forgotten", 0)
            for name, p in dask_scheduler.task_prefixes.items()})
    assert sum(done.values()) > 0, done

    body = {"artifacts": {"flow_run_id": {"any_": [run["id"]]}}, "limit": 50, "offset": 0, "sort": "CREATED_DESC"}
    artifacts = api_json("POST", f"{api}/artifacts/filter", json=body)
    by_key = {a["key"]: a for a in artifacts}
    assert by_key["workspace-summary"]["type"] == "markdown"
    assert "images/syn" in by_key["workspace-summary"]["data"]
