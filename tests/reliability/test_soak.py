"""Soak: 2,048 images through the real Prefect server and a Dask cluster (a scheduler and two worker
processes): ingest, train and Grad-CAM maps as flows, chunks in groups of Prefect tasks; then a second pass of
the same size (saliency maps). Both complete, no chunk is lost or run twice, and the services' memory
does not keep growing: the first pass loads libraries and caches, the second must add little (figures
printed)."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import psutil
import pytest

from conftest import synthetic_dataset
from reliability.conftest import write_config
from services import api_json
from xaiflow import store
from xaiflow.saliency import open_saliency

pytestmark = [pytest.mark.slow, pytest.mark.e2e]

N_IMAGES, CHUNK = 2048, 64

SCRIPT = """
import json, sys
from xaiflow_flows.attribute import attribute_flow
from xaiflow_flows.ingest import ingest_flow
from xaiflow_flows.train import train_flow
config, ws, cluster, method, first = sys.argv[1:]
if first == "1":
    ingest_flow(config_path=config, workspace=ws, cluster=cluster)
    train_flow(config_path=config, workspace=ws, cluster=cluster, predict=False)
state = attribute_flow(config_path=config, workspace=ws, cluster=cluster, methods=[method], return_state=True)
print(json.dumps({"flow_run": str(state.state_details.flow_run_id), **state.result()}))
"""


def _rss_mb(pid: int) -> float:
    """Resident memory of a process and its children."""
    proc = psutil.Process(pid)
    return sum(p.memory_info().rss for p in (proc, *proc.children(recursive=True))) / 2**20


def _chunk_runs(api: str, flow_run: str, method: str) -> list[dict]:
    """The chunk-group task runs of the attribution stage under ``flow_run``."""
    stage = api_json("POST", f"{api}/flow_runs/filter",
                     json={"flow_runs": {"parent_flow_run_id": {"any_": [flow_run]}}, "limit": 10})
    (attribute,) = [r for r in stage if r["name"] == "attribute"]
    task_runs = api_json("POST", f"{api}/task_runs/filter",
                         json={"task_runs": {"flow_run_id": {"any_": [attribute["id"]]}}, "limit": 200})
    return [t for t in task_runs if t["name"].startswith("attribute-chunks")]


def test_two_thousand_images_through_prefect_and_dask(tmp_path, processes, prefect_server, dask_cluster):
    services = {p.name: p.popen.pid for p in processes.started
                if p.name in ("prefect-server", "dask-scheduler", "dask-worker-0", "dask-worker-1")}
    config = write_config(tmp_path / "soak.yaml",
                          datasets=[synthetic_dataset(size=32, chunk_size=CHUNK, specimens_per_class=64,
                                                      images_per_specimen=8, classes=("particles", "lamellae",
                                                                                      "network", "needles"))],
                          train={"dataset": "syn", "epochs": 1, "model_params": {"widths": [4, 8]}, "device": "cpu"},
                          attribution={"dataset": "syn", "device": "cpu", "methods": ["grad_cam"]})
    ws = tmp_path / "ws.zarr"
    rss = [{name: _rss_mb(pid) for name, pid in services.items()}]
    for first, method in (("1", "grad_cam"), ("0", "saliency")):
        res = subprocess.run([sys.executable, "-c", SCRIPT, str(config), str(ws), dask_cluster.address, method, first],
                             capture_output=True, text=True, timeout=900, env=prefect_server.client_env())
        assert res.returncode == 0, res.stderr[-4000:]
        outcome = json.loads(res.stdout.strip().splitlines()[-1])
        rss.append({name: _rss_mb(pid) for name, pid in services.items()})
        # nothing lost: every map stored, the group complete; nothing run twice: every chunk once, in a
        # few task runs (chunk groups sized to the measured work)
        assert outcome["maps_computed"] == {method: N_IMAGES}, outcome
        assert outcome["chunks_run"] == N_IMAGES // CHUNK, outcome
        ds = open_saliency(ws, "syn", outcome["group"].rsplit("/", 1)[1], [method])
        assert ds.attrs["status"] == "complete" and bool(ds.done.all()) and np.isfinite(ds.saliency.values).all()
        runs = _chunk_runs(prefect_server.api, outcome["flow_run"], method)
        assert 1 <= len(runs) <= N_IMAGES // CHUNK // 4 and all(t["state_type"] == "COMPLETED" for t in runs), runs
    assert store.open_group(ws, "images/syn").sizes["sample"] == N_IMAGES

    first = {name: round(rss[1][name] - rss[0][name]) for name in services}
    second = {name: round(rss[2][name] - rss[1][name]) for name in services}
    print(f"\nsoak, {N_IMAGES} images x 2 passes: RSS MB at start {rss[0]}, growth in pass 1 (libraries, caches) "
          f"{first}, in pass 2 {second}")
    assert all(v < 150 for v in second.values()), second
