"""Ingest flow: every dataset of a run config into the workspace, its chunks as Prefect tasks on Dask."""

from __future__ import annotations

from prefect import flow, get_run_logger
from prefect.artifacts import create_markdown_artifact

from xaiflow_flows.artifacts import publish_table
from xaiflow_flows.jobs import run_chunks
from xaiflow_flows.runners import on_cluster
from xaiflow.config import RunConfig, load_config
from xaiflow.ingest import ingest
from xaiflow.summary import describe_workspace, markdown_table


@flow(name="stage-ingest", flow_run_name="ingest")
def ingest_stage(run: RunConfig, workspace: str, overwrite: bool = False) -> list[dict]:
    """Scan and write every dataset (library: :func:`xaiflow.ingest.ingest`); publish the workspace summary."""
    results = [r.__dict__ for r in ingest(run, workspace, overwrite=overwrite, runner=run_chunks)]
    for r in results:
        get_run_logger().info("%s: %s, %d samples, %d skipped", r["dataset"], r["status"], r["n_samples"],
                              r["n_skipped"])
    lines = [f"# Workspace `{workspace}`", ""]
    for g in describe_workspace(workspace):
        lines += [f"## {g.path}", f"{g.shape} ({g.status})", ""] + [f"- {n}" for n in g.notes]
        if g.table is not None:
            lines += ["", markdown_table(g.table), ""]
    create_markdown_artifact("\n".join(lines), key="workspace-summary", description="datasets in the workspace")
    publish_table(results, key="ingested-datasets", description=f"datasets of {run.origin} in {workspace}")
    return results


@flow(name="xaiflow-ingest")
def ingest_flow(config_path: str = "configs/quickstart.yaml", workspace: str = "workspace/quickstart.zarr",
                overwrite: bool = False, cluster: str = "threads") -> list[dict]:
    """Ingest every dataset of a run config into the workspace and publish a summary.

    Args:
        config_path: run config YAML (its `datasets:`).
        workspace: the Zarr workspace (created if missing).
        overwrite: replace datasets ingested with another config.
        cluster: Dask cluster profile or scheduler address for the chunk tasks.
    """
    return on_cluster(ingest_stage, cluster)(run=load_config(config_path), workspace=workspace, overwrite=overwrite)
