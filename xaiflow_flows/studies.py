"""Study flows: the generalization matrix and the feature-reduction curves, each a library call on the
flow's Dask cluster, publishing its headline table and figures as artifacts."""

from __future__ import annotations

from typing import Any

from prefect import flow
from prefect.artifacts import create_table_artifact

from xaiflow_flows.artifacts import publish_figures, publish_summary
from xaiflow_flows.runners import flow_client, on_cluster
from xaiflow.config import RunConfig, load_config
from xaiflow.studies.run import generalization_study, reduction_study


def _published(result: Any, study: str, table: str, table_key: str, title: str, description: str,
               workspace: str) -> dict:
    """Publish one study's headline ``table`` (as ``table_key``), figures and summary; return its
    plain-data outcome."""
    files = [str(p) for p in result.files]
    out = {"group": result.group, "files": files,
           **{name: frame.to_dict("records") for name, frame in result.tables.items() if name in ("summary", table)}}
    create_table_artifact(out[table], key=table_key, description=description)
    figures = [f for f in files if f.endswith(".png")]
    publish_figures(figures, study)
    publish_summary(title, f"{study}-summary", workspace, {"group": result.group, "files": len(files)}, figures)
    return out


@flow(name="stage-studies", flow_run_name="studies")
def studies_stage(run: RunConfig, workspace: str, out_dir: str | None = None,
                  which: tuple[str, ...] = ("generalization", "reduction")) -> dict[str, dict]:
    """The studies of the config's `studies:` section that ``which`` names and the config defines."""
    studies = run.section("studies")
    out = {}
    client = flow_client()
    if "generalization" in which and studies.generalization is not None:
        out["generalization"] = _published(
            generalization_study(workspace, studies, out_dir=out_dir, client=client), "generalization", "matrix",
            "generalization-matrix", "Generalization study",
            "balanced accuracy per model, train domain and test domain", workspace)
    if "reduction" in which and studies.reduction is not None:
        out["reduction"] = _published(
            reduction_study(workspace, run.features, studies, out_dir=out_dir, client=client), "reduction",
            "summary", "feature-reduction", "Feature-reduction study",
            "smallest k reaching the target fraction of the all-feature accuracy", workspace)
    return out


def _one_study(study: str, config_path: str, workspace: str, out_dir: str | None, cluster: str) -> dict:
    run = load_config(config_path)
    run.section(f"studies.{study}")  # a clear error naming the config when it has no such study
    return on_cluster(studies_stage, cluster)(run=run, workspace=workspace, out_dir=out_dir, which=(study,))[study]


@flow(name="xaiflow-generalization")
def generalization_flow(config_path: str = "configs/uhcs_studies.yaml", workspace: str = "workspace/uhcs.zarr",
                        out_dir: str | None = None, cluster: str = "local") -> dict:
    """Train on each domain, test on every domain; publish the matrix."""
    return _one_study("generalization", config_path, workspace, out_dir, cluster)


@flow(name="xaiflow-reduction")
def reduction_flow(config_path: str = "configs/uhcs_studies.yaml", workspace: str = "workspace/uhcs.zarr",
                   out_dir: str | None = None, cluster: str = "local") -> dict:
    """Accuracy against the number of features kept; publish the k reaching 95 % of all features."""
    return _one_study("reduction", config_path, workspace, out_dir, cluster)
