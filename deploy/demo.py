"""``make demo``: the whole pipeline on the quick-start data, visible in a Prefect UI started for it.

Starts, all on loopback: a Prefect server (``prefect server start``, its database under
``workspace/prefect-home``), a local Dask cluster sized to the machine, and the figure server
(``deploy/local.py``: the workspace's report and figure folders on the fixed port 127.0.0.1:4210,
``$XAIFLOW_FIGURES_PORT``, so the image artifacts of earlier runs load again in a later demo); prints the
UI, run and dashboard addresses; runs the pipeline flow (:mod:`xaiflow_flows.pipeline`); prints the
stage table and headline numbers; stops everything. With ``compare:`` models in the config (the quick
start trains one with the planted shortcut and one without it) it prints each model's
``shortcut verdict: ...`` with its accuracy on val and test. ``KEEP_SERVER=1`` (or ``--keep``) keeps
the Prefect server, the Dask cluster (its dashboard) and the figure server up until Ctrl-C, to browse
the run. Ctrl-C or SIGTERM at any time stops everything it started. The flows' INFO log lines go to the
UI only; ``-v`` prints them here too.

    python deploy/demo.py [--config configs/quickstart.yaml] [--workspace workspace/quickstart.zarr] [-v]
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import time
from pathlib import Path

from local import figure_roots, figure_server, prefect_server, stop_on_sigterm

REPO = Path(__file__).resolve().parents[1]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default=str(REPO / "configs" / "quickstart.yaml"))
    parser.add_argument("--workspace", default=str(REPO / "workspace" / "quickstart.zarr"))
    parser.add_argument("--port", type=int, default=None, help="Prefect server port (default: a free one)")
    parser.add_argument("--keep", action="store_true", default=os.environ.get("KEEP_SERVER", "") not in ("", "0"),
                        help="keep the servers running until Ctrl-C (also KEEP_SERVER=1)")
    parser.add_argument("--verbose", "-v", action="store_true",
                        help="print every flow and task log line here too (the Prefect UI always has them)")
    args = parser.parse_args()
    if not args.verbose:
        # the terminal shows warnings and the results; INFO lines still reach the Prefect UI (its API
        # log handler), and the Dask worker processes started below inherit the setting
        os.environ.setdefault("PREFECT_LOGGING_HANDLERS_CONSOLE_LEVEL", "WARNING")
    workspace = Path(args.workspace).resolve()
    if workspace.exists():  # a workspace of an earlier quick-start config: say so before any server starts
        from xaiflow.config import load_config
        from xaiflow.ingest import changed_datasets

        changed = changed_datasets(load_config(args.config), workspace)
        if changed:
            print(f"error: {workspace} holds dataset(s) {', '.join(changed)} made with another config than "
                  f"{args.config} (an earlier quick start?); move it away or delete it (`make clean` removes "
                  "workspace/), or pass --workspace with a new path, and run again", file=sys.stderr)
            return 2
    home = workspace.parent / "prefect-home"
    stop_on_sigterm()
    try:
        return _run(args, workspace, home)
    except KeyboardInterrupt:  # Ctrl-C or SIGTERM: the with blocks stopped every service on the way out
        print("interrupted: the Prefect server, the Dask cluster and the figure server are stopped", file=sys.stderr)
        return 130
    except (OSError, ValueError) as e:  # the figure server's port is taken or not a port
        print(f"error: {e}", file=sys.stderr)
        return 2


def _run(args: argparse.Namespace, workspace: Path, home: Path) -> int:
    """Start the services, run the pipeline, print its results; with ``--keep`` keep everything up
    (the UI, its figures and the Dask dashboard) until Ctrl-C or SIGTERM."""
    tick = time.perf_counter()
    with figure_server(figure_roots(workspace)) as files, \
            prefect_server(args.port, home=home, log=home / "server.log") as ui:
        print(f"Prefect UI:         {ui}  (server log {home / 'server.log'})", flush=True)
        from xaiflow.runtime import dask_client
        from xaiflow_flows.pipeline import PipelineParams, pipeline_flow  # after PREFECT_API_URL is set

        logging.getLogger("distributed").setLevel(logging.WARNING)  # keep the terminal for the run's own log

        with dask_client("local") as client:
            print(f"Dask dashboard:     {client.dashboard_link}", flush=True)
            print(f"Figures served at:  {files}", flush=True)
            params = PipelineParams(config_path=args.config, workspace=str(workspace),
                                    scheduler_address=client.scheduler.address)
            state = pipeline_flow(params, return_state=True)
            print(f"Flow run:           {ui}/runs/flow-run/{state.state_details.flow_run_id}", flush=True)
            if not state.is_completed():
                print(f"pipeline {state.type.value}: {state.message}", file=sys.stderr)
                return 1
            _print_results(state.result())
            print(f"Workspace:          {workspace}")
            print(f"Total:              {time.perf_counter() - tick:.0f} s", flush=True)
            if args.keep:
                print(f"Kept up until Ctrl-C: the UI {ui}, the Dask dashboard {client.dashboard_link}, the figures "
                      f"at {files}", flush=True)
                try:
                    while True:
                        time.sleep(3600)
                except KeyboardInterrupt:
                    pass
    return 0


def _print_results(result: dict) -> None:
    """The stage table, the faithfulness headline and each model's shortcut verdict."""
    print()
    print(f"{'stage':<12} {'status':<28} {'seconds':>8}  result")
    for row in result["stages"]:
        print(f"{row['stage']:<12} {row['status']:<28} {row['seconds']:>8.1f}  {row['result']}")
    for r in result["results"].get("evaluate", {}).get("summary", []):
        if r["metric"] in ("road", "region_perturbation", "deletion", "insertion", "relevance_mass_accuracy"):
            print(f"  {r['method']:<22} {r['metric']:<24} {r['mean']:.3f} ± {r['std']:.3f}")
    if "report" in result["results"]:
        _print_verdicts(result["results"]["report"])
        print(f"Report:             {result['results']['report']['report_url']}")


def _print_verdicts(report: dict) -> None:
    """Each model's shortcut verdict with the accuracy where the shortcut held (val) and on test."""
    rows = report.get("comparison") or [{"model": report["model_id"], "verdict": report["verdict"]}]
    print("Models side by side (balanced accuracy on val -> test; test accuracy with the shortcut at the class's "
          "own place / elsewhere or none):")
    for r in rows:
        numbers = ""
        if "val balanced accuracy" in r:
            numbers = f"  {_num(r['val balanced accuracy'])} -> {_num(r['test balanced accuracy'])}"
            if r.get("n with"):
                numbers += (f"; {_num(r['accuracy with shortcut'])} (n={r['n with']}) / {_num(r['accuracy without'])} "
                            f"(n={r['n without']})")
        print(f"  {r['model']:<38} {r.get('dataset', ''):<16} shortcut verdict: {r['verdict']:<12}{numbers}")


def _num(value: float | None) -> str:
    return "–" if value is None else f"{value:.2f}"


if __name__ == "__main__":
    sys.exit(main())
