"""Study flows: the generalization matrix and the feature-reduction curves, each one Prefect task
around a library call, publishing its headline table as an artifact."""

from __future__ import annotations

from prefect import flow, task
from prefect.artifacts import create_table_artifact

from flows.artifacts import publish_figures, publish_summary

from xaiflow.config import load_config
from xaiflow.runtime import dask_client
from xaiflow.studies.run import generalization_study, reduction_study


@task(name="generalization-study")
def generalization_task(config_path: str, workspace: str, out_dir: str | None, cluster: str) -> dict:
    cfg = load_config(config_path)
    with dask_client(cluster) as client:
        result = generalization_study(workspace, cfg.studies, out_dir=out_dir, client=client)
    return {"group": result.group, "summary": result.headline.to_dict("records"),
            "matrix": result.tables["matrix"].to_dict("records"), "files": [str(p) for p in result.files]}


@task(name="reduction-study")
def reduction_task(config_path: str, workspace: str, out_dir: str | None, cluster: str) -> dict:
    cfg = load_config(config_path)
    with dask_client(cluster) as client:
        result = reduction_study(workspace, cfg.features, cfg.studies, out_dir=out_dir, client=client)
    return {"group": result.group, "summary": result.headline.to_dict("records"),
            "files": [str(p) for p in result.files]}


@flow(name="xaiflow-generalization")
def generalization_flow(config_path: str = "configs/uhcs_studies.yaml", workspace: str = "workspace/uhcs.zarr",
                        out_dir: str | None = None, cluster: str = "local") -> dict:
    """Train on each domain, test on every domain; publish the matrix."""
    result = generalization_task(config_path, workspace, out_dir, cluster)
    create_table_artifact(result["matrix"], key="generalization-matrix",
                          description="balanced accuracy per model, train domain and test domain")
    _summary("Generalization study", "generalization-summary", workspace, result)
    return result


@flow(name="xaiflow-reduction")
def reduction_flow(config_path: str = "configs/uhcs_studies.yaml", workspace: str = "workspace/uhcs.zarr",
                   out_dir: str | None = None, cluster: str = "local") -> dict:
    """Accuracy against the number of features kept; publish the k reaching 95 % of all features."""
    result = reduction_task(config_path, workspace, out_dir, cluster)
    create_table_artifact(result["summary"], key="feature-reduction",
                          description="smallest k reaching the target fraction of the all-feature accuracy")
    _summary("Feature-reduction study", "reduction-summary", workspace, result)
    return result


def _summary(title: str, key: str, workspace: str, result: dict) -> None:
    figures = [f for f in result["files"] if f.endswith(".png")]
    publish_figures(figures, f"{key}-figure")
    publish_summary(title, key, workspace, {"group": result["group"], "files": len(result["files"])}, figures)
