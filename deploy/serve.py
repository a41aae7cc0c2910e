"""Serve every xaiflow flow as a deployment on the configured Prefect server (``PREFECT_API_URL``).

    prefect server start --host 127.0.0.1                      # terminal 1: server + UI on loopback
    PREFECT_API_URL=http://127.0.0.1:4200/api python deploy/serve.py [--cluster local] [--figures-root DIR]

Registers ``xaiflow-pipeline/pipeline`` (the whole pipeline, typed form) and one deployment per
stage (``xaiflow-ingest/ingest``, ``xaiflow-train/train``, ``xaiflow-predict/predict``,
``xaiflow-features/features``, ``xaiflow-generalization/generalization``,
``xaiflow-reduction/reduction``, ``xaiflow-attribute/attribute``, ``xaiflow-evaluate/evaluate``,
``xaiflow-report/report``, the inspections, ``xaiflow-human/human``), then runs the flows this
process is asked to run (from the UI's Run button or the API) until Ctrl-C or SIGTERM. Runs execute
in the repository root, so the default relative paths (``configs/quickstart.yaml``, ``workspace/...``)
resolve.

Every flow takes its Dask cluster per run (the pipeline: a profile from its choice list, or a
``scheduler_address`` such as ``tcp://127.0.0.1:8786``; the stage flows: ``cluster``, either);
``--cluster`` sets its default in every deployment served here (e.g. the site's scheduler). The
figures and reports under ``workspace/`` (``--figures-root``) are served read-only on the fixed
loopback port 127.0.0.1:4210 (``--figures-port``, ``$XAIFLOW_FIGURES_PORT``), so the UI shows the
image artifacts, those of earlier runs too.
"""

from __future__ import annotations

import argparse
import asyncio
import inspect
import os
import signal
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
    """The deployment's parameter defaults: ``cluster`` where the flow takes one (the pipeline in its form:
    a profile name as ``cluster``, a scheduler address as ``scheduler_address``)."""
    names = inspect.signature(flow.fn).parameters
    if "params" in names:
        return {"params": {"scheduler_address" if "://" in cluster else "cluster": cluster}}
    return {"cluster": cluster} if "cluster" in names else {}


def main() -> int:
    parser = argparse.ArgumentParser(description="serve every xaiflow flow as a Prefect deployment")
    parser.add_argument("--cluster", default="local",
                        help="default Dask profile or scheduler address of every deployment (a run may set another)")
    parser.add_argument("--figures-port", type=int, default=None,
                        help="serve the figures and reports on 127.0.0.1:PORT so the UI shows them (default: "
                             "$XAIFLOW_FIGURES_PORT, else 4210; keep it fixed: image artifacts store the URL); "
                             "0: no figure server")
    parser.add_argument("--figures-root", action="append", type=Path, default=None,
                        help="folder whose figures and reports are served (repeatable; default: workspace/ of the "
                             "repository, which holds the default workspaces and their report and figure folders)")
    parser.add_argument("--limit", type=int, default=None, help="most flow runs at once (default: no limit)")
    args = parser.parse_args()
    if not os.environ.get("PREFECT_API_URL"):
        from prefect.settings import PREFECT_API_URL

        if not PREFECT_API_URL.value():
            print("PREFECT_API_URL is not set: start `prefect server start --host 127.0.0.1` and export "
                  "PREFECT_API_URL=http://127.0.0.1:4200/api (or `prefect config set PREFECT_API_URL=...`)",
                  file=sys.stderr)
            return 2
    roots = [r.resolve() for r in args.figures_root or [REPO / "workspace"]]
    os.chdir(REPO)
    sys.path.insert(0, str(REPO / "deploy"))
    from local import figure_server, stop_on_sigterm

    stop_on_sigterm()
    try:
        figures = nullcontext() if args.figures_port == 0 else figure_server(roots, args.figures_port)
        with figures as url:
            if url:
                print(f"figures and reports served at {url} from {os.pathsep.join(map(str, roots))}", flush=True)
            return _serve(args.cluster, args.limit)
    except (OSError, ValueError) as e:  # the figure port is taken or not a port; --cluster not in the form
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:  # Ctrl-C or SIGTERM: the runner and the figure server are stopped
        return 0


def _serve(cluster: str, limit: int | None) -> int:
    """Register the deployments and run what the server asks for, until Ctrl-C or SIGTERM."""
    from prefect.exceptions import PrefectHTTPStatusError
    from prefect.runner import Runner

    from xaiflow_flows.pipeline import PipelineParams

    flow_objects = flows()
    PipelineParams.model_validate(default_parameters(flow_objects["pipeline"], cluster)["params"])
    runner = Runner(limit=limit)
    try:  # registering is the first call to the server: a 401 comes from here
        for name, f in flow_objects.items():
            runner.add_deployment(f.to_deployment(name=name, tags=["xaiflow"],
                                                  parameters=default_parameters(f, cluster)))
        print(f"serving {len(flow_objects)} deployments of "
              f"{os.environ.get('PREFECT_API_URL', 'the configured server')} until Ctrl-C or SIGTERM", flush=True)
        asyncio.run(_run_until_stopped(runner))
    except PrefectHTTPStatusError as e:
        if e.response.status_code != 401:
            raise
        print(f"error: the Prefect server at {os.environ.get('PREFECT_API_URL')} refused this client (401): set "
              "PREFECT_API_AUTH_STRING to the server's PREFECT_SERVER_API_AUTH_STRING", file=sys.stderr)
        return 2
    return 0


async def _run_until_stopped(runner: Any) -> None:
    """``runner.start()`` until SIGTERM or Ctrl-C, which stop it with its own ``astop`` (cancels the runs
    in progress, ends the polling loops). Prefect 3.8's runner answers SIGTERM with a ``stop()`` that
    never awaits ``astop`` and a ``sys.exit`` inside its event loop, and Ctrl-C cancels a task its task
    group outlives: either could leave this process running (issue #19)."""
    loop = asyncio.get_running_loop()
    stopping: list[asyncio.Task] = []

    def stop() -> None:
        if not runner.started:  # still starting: nothing of the runner to stop yet
            raise KeyboardInterrupt
        if not stopping:
            stopping.append(loop.create_task(runner.astop()))

    runner.handle_sigterm = lambda *_: loop.call_soon_threadsafe(stop)  # installed by runner.start()
    loop.add_signal_handler(signal.SIGINT, stop)
    await runner.start()


if __name__ == "__main__":
    sys.exit(main())
