"""Ingest flow: one Prefect task per dataset of a run config, each calling ``xaiflow.ingest``."""

from __future__ import annotations

from prefect import flow, get_run_logger, task
from prefect.artifacts import create_markdown_artifact

from flows.artifacts import publish_table

from xaiflow.config import load_config
from xaiflow.ingest import ingest_dataset
from xaiflow.runtime import dask_client
from xaiflow.summary import describe_workspace, markdown_table


@task(name="ingest-dataset", retries=1)
def ingest_dataset_task(config_path: str, dataset: str, workspace: str, overwrite: bool, cluster: str) -> dict:
    cfg = load_config(config_path).dataset(dataset)
    with dask_client(cluster) as client:
        result = ingest_dataset(cfg, workspace, overwrite=overwrite, client=client)
    return result.__dict__


@flow(name="xaiflow-ingest")
def ingest_flow(config_path: str = "configs/quickstart.yaml", workspace: str = "workspace/quickstart.zarr",
                overwrite: bool = False, cluster: str = "threads") -> list[dict]:
    """Ingest every dataset of a run config into the workspace and publish a summary."""
    logger = get_run_logger()
    cfg = load_config(config_path)
    results = [ingest_dataset_task(config_path, d.name, workspace, overwrite, cluster) for d in cfg.datasets]
    for r in results:
        logger.info("%s: %s, %d samples, %d skipped", r["dataset"], r["status"], r["n_samples"], r["n_skipped"])
    lines = [f"# Workspace `{workspace}`", ""]
    for g in describe_workspace(workspace):
        lines += [f"## {g.path}", f"{g.shape} ({g.status})", ""] + [f"- {n}" for n in g.notes]
        if g.table is not None:
            lines += ["", markdown_table(g.table), ""]
    create_markdown_artifact("\n".join(lines), key="workspace-summary", description="datasets in the workspace")
    publish_table(results, key="ingested-datasets", description=f"datasets of {config_path} in {workspace}")
    return results
