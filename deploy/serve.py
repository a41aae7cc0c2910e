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

The pipeline takes its Dask cluster per run (parameter ``cluster``: a profile name or a
scheduler address such as ``tcp://127.0.0.1:8786``). The stand-alone attribute and evaluate
deployments map their chunks on the cluster given here with ``--cluster``.
``--figures-port`` serves ``workspace/`` on loopback so the UI shows the figure artifacts.
"""

from __future__ import annotations

import argparse
import os
import sys
from contextlib import nullcontext
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DEPLOYMENTS = ("pipeline", "ingest", "train", "predict", "features", "generalization", "reduction", "attribute",
               "evaluate", "report")


def flows(cluster: str) -> dict:
    """Deployment name -> flow object (attribute/evaluate bound to ``cluster``'s Dask task runner)."""
    from flows.attribute import attribute_flow_on
    from flows.evaluate import evaluate_flow_on
    from flows.features import features_flow
    from flows.ingest import ingest_flow
    from flows.pipeline import pipeline_flow
    from flows.report import report_flow
    from flows.studies import generalization_flow, reduction_flow
    from flows.train import predict_flow, train_flow

    return {"pipeline": pipeline_flow, "ingest": ingest_flow, "train": train_flow, "predict": predict_flow,
            "features": features_flow, "generalization": generalization_flow, "reduction": reduction_flow,
            "attribute": attribute_flow_on(cluster), "evaluate": evaluate_flow_on(cluster), "report": report_flow}


def main() -> int:
    parser = argparse.ArgumentParser(description="serve every xaiflow flow as a Prefect deployment")
    parser.add_argument("--cluster", default="local",
                        help="Dask profile or scheduler address for the attribute/evaluate deployments")
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

    with figure_server(REPO / "workspace", args.figures_port) if args.figures_port else nullcontext() as url:
        if url:
            print(f"figures served at {url}", flush=True)
        deployments = [f.to_deployment(name=name, tags=["xaiflow"]) for name, f in flows(args.cluster).items()]
        serve(*deployments, limit=args.limit)
    return 0


if __name__ == "__main__":
    sys.exit(main())
