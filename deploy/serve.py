"""Serve every xaiflow flow as a deployment on the configured Prefect server (``PREFECT_API_URL``).

    prefect server start --host 127.0.0.1                      # terminal 1: server + UI on loopback
    PREFECT_API_URL=http://127.0.0.1:4200/api python deploy/serve.py [--cluster local] [--figures-port 8765]

Registers ``xaiflow-pipeline/pipeline`` (the whole pipeline, typed form) and one deployment per
stage (``xaiflow-ingest/ingest``, ``xaiflow-train/train``, ``xaiflow-predict/predict``,
``xaiflow-features/features``, ``xaiflow-generalization/generalization``,
``xaiflow-reduction/reduction``, ``xaiflow-attribute/attribute``, ``xaiflow-evaluate/evaluate``,
``xaiflow-report/report``), then runs the flows this process is asked to run (from the UI's
Run button or the API) until Ctrl-C. Runs execute in the repository root, so the default
relative paths (``configs/quickstart.yaml``, ``workspace/...``) resolve.

Every flow takes its Dask cluster per run (parameter ``cluster``: a profile name or a scheduler
address such as ``tcp://127.0.0.1:8786``); ``--cluster`` sets its default in every deployment
served here (e.g. the site's scheduler). ``--figures-port`` serves ``workspace/`` on loopback so
the UI shows the figure artifacts.
"""

from __future__ import annotations

import argparse
import inspect
import os
import sys
from contextlib import nullcontext
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
DEPLOYMENTS = ("pipeline", "ingest", "train", "predict", "features", "generalization", "reduction", "attribute",
               "evaluate", "report", "uncertainty", "concepts", "importance", "probes",
               "adversarial", "human")


def flows() -> dict:
    """Deployment name -> flow object."""
    from xaiflow_flows.attribute import attribute_flow
    from xaiflow_flows.evaluate import evaluate_flow
    from xaiflow_flows.features import features_flow
    from xaiflow_flows.human import human_flow
    from xaiflow_flows.ingest import ingest_flow
    from xaiflow_flows.inspection import adversarial_flow, concepts_flow, importance_flow, probes_flow, uncertainty_flow
    from xaiflow_flows.pipeline import pipeline_flow
    from xaiflow_flows.report import report_flow
    from xaiflow_flows.studies import generalization_flow, reduction_flow
    from xaiflow_flows.train import predict_flow, train_flow

    return {"pipeline": pipeline_flow, "ingest": ingest_flow, "train": train_flow, "predict": predict_flow,
            "features": features_flow, "generalization": generalization_flow, "reduction": reduction_flow,
            "attribute": attribute_flow, "evaluate": evaluate_flow, "report": report_flow,
            "uncertainty": uncertainty_flow, "concepts": concepts_flow, "importance": importance_flow,
            "probes": probes_flow,
            "adversarial": adversarial_flow, "human": human_flow}


def default_parameters(flow: Any, cluster: str) -> dict[str, Any]:
    """The deployment's parameter defaults: ``cluster`` where the flow takes one (the pipeline in its form)."""
    names = inspect.signature(flow.fn).parameters
    if "params" in names:
        return {"params": {"cluster": cluster}}
    return {"cluster": cluster} if "cluster" in names else {}


def main() -> int:
    parser = argparse.ArgumentParser(description="serve every xaiflow flow as a Prefect deployment")
    parser.add_argument("--cluster", default="local",
                        help="default Dask profile or scheduler address of every deployment (a run may set another)")
    parser.add_argument("--figures-port", type=int, default=None,
                        help="serve workspace/ on 127.0.0.1:PORT so image artifacts display in the UI")
    parser.add_argument("--limit", type=int, default=None, help="most flow runs at once (default: no limit)")
    args = parser.parse_args()
    if not os.environ.get("PREFECT_API_URL"):
        from prefect.settings import PREFECT_API_URL

        if not PREFECT_API_URL.value():
            print("PREFECT_API_URL is not set: start `prefect server start --host 127.0.0.1` and export "
                  "PREFECT_API_URL=http://127.0.0.1:4200/api (or `prefect config set PREFECT_API_URL=...`)",
                  file=sys.stderr)
            return 2
    os.chdir(REPO)
    sys.path.insert(0, str(REPO / "deploy"))
    from local import figure_server

    from prefect import serve
    from prefect.exceptions import PrefectHTTPStatusError

    with figure_server(REPO / "workspace", args.figures_port) if args.figures_port else nullcontext() as url:
        if url:
            print(f"figures served at {url}", flush=True)
        deployments = [f.to_deployment(name=name, tags=["xaiflow"], parameters=default_parameters(f, args.cluster))
                       for name, f in flows().items()]
        try:
            serve(*deployments, limit=args.limit)
        except PrefectHTTPStatusError as e:
            if e.response.status_code != 401:
                raise
            print(f"error: the Prefect server at {os.environ.get('PREFECT_API_URL')} refused this client (401): set "
                  "PREFECT_API_AUTH_STRING to the server's PREFECT_SERVER_API_AUTH_STRING", file=sys.stderr)
            return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
