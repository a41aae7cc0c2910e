"""Training flow: train one model, or k folds / several seeds as parallel Dask tasks, then predict."""

from __future__ import annotations

from prefect import flow, get_run_logger, task
from prefect.artifacts import create_table_artifact

from xaiflow.config import load_config
from xaiflow.predict import predict_dataset
from xaiflow.runtime import dask_client
from xaiflow.training import expand_runs, train_many


@task(name="train-models")
def train_models_task(config_path: str, workspace: str, folds: int | None, seeds: list[int] | None,
                      force: bool, cluster: str) -> list[dict]:
    cfg = load_config(config_path)
    if cfg.train is None:
        raise ValueError(f"{config_path}: no `train:` section")
    with dask_client(cluster) as client:
        return train_many(workspace, expand_runs(cfg.train, folds, seeds), force=force, client=client)


@task(name="predict-dataset")
def predict_task(workspace: str, model_id: str, dataset: str, cluster: str) -> str:
    with dask_client(cluster) as client:
        return predict_dataset(workspace, model_id, dataset, client=client)


@flow(name="xaiflow-train")
def train_flow(config_path: str = "configs/quickstart.yaml", workspace: str = "workspace/quickstart.zarr",
               folds: int | None = None, seeds: list[int] | None = None, force: bool = False,
               cluster: str = "local") -> list[dict]:
    """Train the config's model (k specimen-grouped folds / seeds in parallel) and write predictions."""
    rows = train_models_task(config_path, workspace, folds, seeds, force, cluster)
    for row in rows:
        predict_task(workspace, row["model_id"], row["dataset"], cluster)
        get_run_logger().info("%s: test balanced accuracy %.3f (majority %.3f)", row["model_id"],
                              row.get("test_balanced_accuracy", float("nan")),
                              row.get("test_majority_balanced_accuracy", float("nan")))
    create_table_artifact(rows, key="trained-models", description="balanced accuracy on held-out specimens")
    return rows
