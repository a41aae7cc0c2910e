"""Features flow: extract every extractor of a config on every dataset it names (one Prefect task
each, one Dask task per image chunk inside), then the specimen-grouped CV table per dataset."""

from __future__ import annotations

import re

from prefect import flow, get_run_logger, task
from prefect.artifacts import create_table_artifact

from flows.artifacts import publish_figures, publish_summary

from xaiflow.config import load_config
from xaiflow.features.extract import extract_features
from xaiflow.runtime import dask_client
from xaiflow.studies.run import classification_study


@task(name="extract-features")
def extract_task(config_path: str, workspace: str, dataset: str, key: str, overwrite: bool, cluster: str) -> dict:
    cfg = load_config(config_path).features
    spec = next(s for s in cfg.extractors if s.group_key == key)
    with dask_client(cluster) as client:
        result = extract_features(workspace, dataset, spec.name, cfg.params_for(spec), key=key,
                                  overwrite=overwrite or cfg.overwrite, fit_samples=cfg.fit_samples, client=client)
    return result.__dict__


@task(name="classify-features")
def classify_task(config_path: str, workspace: str, dataset: str, out_dir: str | None, cluster: str) -> dict:
    cfg = load_config(config_path)
    with dask_client(cluster) as client:
        result = classification_study(workspace, cfg.features, cfg.studies, dataset=dataset, out_dir=out_dir,
                                      client=client)
    return {"table": result.headline.to_dict("records"), "files": [str(p) for p in result.files]}


@flow(name="xaiflow-features")
def features_flow(config_path: str = "configs/uhcs_studies.yaml", workspace: str = "workspace/uhcs.zarr",
                  overwrite: bool = False, cv: bool = True, out_dir: str | None = None,
                  cluster: str = "local") -> dict[str, list[dict]]:
    """Write features/<dataset>/<key> for every dataset and extractor, then grouped-CV accuracy per feature set."""
    cfg = load_config(config_path)
    if cfg.features is None:
        raise ValueError(f"{config_path}: no `features:` section")
    logger = get_run_logger()
    for dataset in cfg.features.datasets:
        for spec in cfg.features.extractors:
            r = extract_task(config_path, workspace, dataset, spec.group_key, overwrite, cluster)
            logger.info("%s: %s, %d samples x %d features", r["group"], r["status"], r["n_samples"], r["n_features"])
    tables, figures = {}, []
    for dataset in cfg.features.datasets if cv else []:
        out = classify_task(config_path, workspace, dataset, out_dir, cluster)
        tables[dataset] = out["table"]
        figures += [f for f in out["files"] if f.endswith(".png")]
        key = re.sub(r"[^a-z0-9-]", "-", f"feature-classification-{dataset}".lower())  # Prefect's key alphabet
        create_table_artifact(tables[dataset], key=key,
                              description=f"{dataset}: balanced accuracy, mean and std over specimen-grouped folds")
    publish_figures(figures, "feature-classification-figure")
    publish_summary("Features", "features-summary", workspace,
                    {"feature groups": [f"features/{d}/{s.group_key}" for d in cfg.features.datasets
                                        for s in cfg.features.extractors],
                     "classification tables": list(tables)}, figures)
    return tables
