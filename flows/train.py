"""Training flow: train one model, or k folds / several seeds as parallel Dask tasks, then predict."""

from __future__ import annotations

from prefect import flow, get_run_logger, task
from prefect.artifacts import create_table_artifact

from flows.artifacts import publish_summary

from xaiflow.config import load_config
from xaiflow.predict import current_predictions, predict_dataset
from xaiflow.runtime import dask_client
from xaiflow.training import expand_runs, train_many


@task(name="train-models")
def train_models_task(config_path: str, workspace: str, folds: int | None, seeds: list[int] | None,
                      force: bool, cluster: str, device: str | None = None) -> list[dict]:
    cfg = load_config(config_path)
    if cfg.train is None:
        raise ValueError(f"{config_path}: no `train:` section")
    train = cfg.train.model_copy(update={"device": device}) if device else cfg.train
    with dask_client(cluster) as client:
        return train_many(workspace, expand_runs(train, folds, seeds), force=force, client=client)


@task(name="predict-dataset")
def predict_task(workspace: str, model_id: str, dataset: str, cluster: str, device: str = "cpu") -> str:
    with dask_client(cluster) as client:
        return predict_dataset(workspace, model_id, dataset, device=device, client=client)


@flow(name="xaiflow-train")
def train_flow(config_path: str = "configs/quickstart.yaml", workspace: str = "workspace/quickstart.zarr",
               folds: int | None = None, seeds: list[int] | None = None, force: bool = False,
               cluster: str = "local", device: str | None = None, predict: bool = True) -> list[dict]:
    """Train the config's model (k specimen-grouped folds / seeds in parallel) and write predictions
    (``predict=False``: leave them to :func:`predict_flow`; ``device`` overrides ``train.device``)."""
    rows = train_models_task(config_path, workspace, folds, seeds, force, cluster, device)
    for row in rows:
        if predict:
            predict_task(workspace, row["model_id"], row["dataset"], cluster)
        get_run_logger().info("%s: test balanced accuracy %.3f (majority %.3f)", row["model_id"],
                              row.get("test_balanced_accuracy", float("nan")),
                              row.get("test_majority_balanced_accuracy", float("nan")))
    create_table_artifact(rows, key="trained-models", description="balanced accuracy on held-out specimens")
    publish_summary("Training", "training-summary", workspace,
                    {f"{r['model_id']} {k}": r.get(k) for r in rows
                     for k in ("test_balanced_accuracy", "test_majority_balanced_accuracy", "checkpoint", "reused")})
    return rows


@flow(name="xaiflow-predict")
def predict_flow(config_path: str = "configs/quickstart.yaml", workspace: str = "workspace/quickstart.zarr",
                 cluster: str = "local", device: str = "cpu", force: bool = False) -> list[dict]:
    """Predictions of the config's trained model on its training dataset (and the attribution dataset),
    skipped where a complete group made by this checkpoint from these images exists (unless ``force``)."""
    from xaiflow.training import resolve_model_id

    cfg = load_config(config_path)
    if cfg.train is None:
        raise ValueError(f"{config_path}: no `train:` section")
    model_id = resolve_model_id(workspace, cfg.train)
    datasets = dict.fromkeys([cfg.train.dataset] + ([cfg.attribution.dataset] if cfg.attribution else []))
    rows = []
    for dataset in datasets:
        current = None if force else current_predictions(workspace, model_id, dataset)
        reused = current is not None
        group = current if reused else predict_task(workspace, model_id, dataset, cluster, device)
        rows.append({"model_id": model_id, "dataset": dataset, "group": group, "reused": reused})
    create_table_artifact(rows, key="predictions", description="prediction groups written or reused")
    return rows
