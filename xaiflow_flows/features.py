"""Features flow: every extractor of a config on every dataset it names (chunks as Prefect tasks on
Dask), then the specimen-grouped CV table per dataset."""

from __future__ import annotations

from prefect import flow, get_run_logger
from prefect.artifacts import create_table_artifact

from xaiflow_flows.artifacts import artifact_key, publish_figures, publish_summary
from xaiflow_flows.jobs import run_chunks
from xaiflow_flows.runners import flow_client, on_cluster
from xaiflow.config import RunConfig, load_config
from xaiflow.features.extract import extract_all
from xaiflow.studies.run import classification_study


@flow(name="stage-features", flow_run_name="features")
def features_stage(run: RunConfig, workspace: str, overwrite: bool = False, cv: bool = True,
                   out_dir: str | None = None) -> dict[str, list[dict]]:
    """Write features/<dataset>/<key> for every dataset and extractor, then grouped-CV accuracy per feature set."""
    features = run.section("features")
    for r in extract_all(workspace, features, run=run, overwrite=overwrite or None, runner=run_chunks):
        get_run_logger().info("%s: %s, %d samples x %d features", r.group, r.status, r.n_samples, r.n_features)
    tables, figures = {}, []
    client = flow_client()
    for dataset in features.datasets if cv else []:
        result = classification_study(workspace, features, run.studies, dataset=dataset, out_dir=out_dir,
                                      client=client)
        tables[dataset] = result.headline.to_dict("records")
        figures += [str(f) for f in result.files if str(f).endswith(".png")]
        create_table_artifact(tables[dataset], key=artifact_key("feature-classification", dataset),
                              description=f"{dataset}: balanced accuracy, mean and std over specimen-grouped "
                                          "folds")
    publish_figures(figures, "features")
    publish_summary("Features", "features-summary", workspace,
                    {"feature groups": [f"features/{d}/{e.key}" for d in features.datasets
                                        for e in features.extractors],
                     "classification tables": list(tables)}, figures)
    return tables


@flow(name="xaiflow-features")
def features_flow(config_path: str = "configs/uhcs_studies.yaml", workspace: str = "workspace/uhcs.zarr",
                  overwrite: bool = False, cv: bool = True, out_dir: str | None = None,
                  cluster: str = "local") -> dict[str, list[dict]]:
    """Write features/<dataset>/<key> for every dataset and extractor, then grouped-CV accuracy per feature set.

    Args:
        config_path: run config YAML with a `features:` section (and `studies:` for the CV settings).
        workspace: the Zarr workspace holding the images (and the models of cnn extractors).
        overwrite: replace feature groups written with other parameters.
        cv: classify the features with specimen-grouped cross-validation.
        out_dir: folder for tables and figures (default: beside the workspace).
        cluster: Dask cluster profile or scheduler address.
    """
    return on_cluster(features_stage, cluster)(run=load_config(config_path), workspace=workspace,
                                               overwrite=overwrite, cv=cv, out_dir=out_dir)
