"""Training and prediction flows: the config's model (or k folds / several seeds as parallel Dask
tasks), then its predictions (chunks as Prefect tasks), reused where they are current."""

from __future__ import annotations

from prefect import flow, get_run_logger
from prefect.artifacts import create_table_artifact

from xaiflow_flows.artifacts import publish_summary
from xaiflow_flows.jobs import run_chunks
from xaiflow_flows.runners import flow_client, on_cluster
from xaiflow.config import RunConfig, load_config
from xaiflow.models.catalog import ModelCatalog
from xaiflow.predict import current_predictions, predict_dataset
from xaiflow.training import expand_runs, train_many


@flow(name="stage-train", flow_run_name="train")
def train_stage(run: RunConfig, workspace: str, folds: int | None = None, seeds: list[int] | None = None,
                force: bool = False, device: str | None = None) -> list[dict]:
    """Train (or reuse) the models of the `train:` section, one Dask task each; publish their scores."""
    train = run.section("train")
    if device:
        train = train.model_copy(update={"device": device})
    client = flow_client()
    rows = train_many(workspace, expand_runs(train, folds, seeds), force=force, client=client)
    for row in rows:
        get_run_logger().info("%s: test balanced accuracy %.3f (majority %.3f)", row["model_id"],
                              row.get("test_balanced_accuracy", float("nan")),
                              row.get("test_majority_balanced_accuracy", float("nan")))
    create_table_artifact(rows, key="trained-models", description="balanced accuracy on held-out specimens")
    publish_summary("Training", "training-summary", workspace,
                    {f"{r['model_id']} {k}": r.get(k) for r in rows
                     for k in ("test_balanced_accuracy", "test_majority_balanced_accuracy", "checkpoint", "reused")})
    return rows


@flow(name="stage-predict", flow_run_name="predict")
def predict_stage(run: RunConfig, workspace: str, models: list[str] | None = None, device: str = "cpu",
                  force: bool = False) -> list[dict]:
    """Predictions of ``models`` (default: the config's model) on their training dataset and the
    attribution dataset, kept where a complete group made by the same checkpoint from the same
    images exists (unless ``force``)."""
    catalog = ModelCatalog(workspace)
    entries = [catalog.get(m) for m in models] if models else [catalog.resolve(run=run)]
    rows = []
    for entry in entries:
        for dataset in dict.fromkeys([entry.dataset] + ([run.attribution.dataset] if run.attribution else [])):
            current = None if force else current_predictions(workspace, entry, dataset)
            group = current or predict_dataset(workspace, entry.model_id, dataset, device=device, runner=run_chunks)
            rows.append({"model_id": entry.model_id, "dataset": dataset, "group": group,
                         "reused": current is not None})
    create_table_artifact(rows, key="predictions", description="prediction groups written or reused")
    return rows


@flow(name="xaiflow-train")
def train_flow(config_path: str = "configs/quickstart.yaml", workspace: str = "workspace/quickstart.zarr",
               folds: int | None = None, seeds: list[int] | None = None, force: bool = False,
               cluster: str = "local", device: str | None = None, predict: bool = True) -> list[dict]:
    """Train the config's model (k specimen-grouped folds / seeds in parallel), then write its predictions.

    Args:
        config_path: run config YAML with a `train:` section.
        workspace: the Zarr workspace holding the images.
        folds: train k models on specimen-grouped folds of train+val.
        seeds: one model per seed.
        force: retrain even if a checkpoint with this config exists.
        cluster: Dask cluster profile or scheduler address.
        device: overrides train.device (cpu, cuda, cuda:N, auto).
        predict: write predictions/<dataset>/<model> (or leave them to the predict flow).
    """
    run = load_config(config_path)
    rows = on_cluster(train_stage, cluster)(run=run, workspace=workspace, folds=folds, seeds=seeds, force=force,
                                            device=device)
    if predict:
        on_cluster(predict_stage, cluster)(run=run, workspace=workspace, models=[r["model_id"] for r in rows])
    return rows


@flow(name="xaiflow-predict")
def predict_flow(config_path: str = "configs/quickstart.yaml", workspace: str = "workspace/quickstart.zarr",
                 cluster: str = "local", device: str = "cpu", force: bool = False) -> list[dict]:
    """Predictions of the config's trained model on its training dataset (and the attribution dataset),
    skipped where a complete group made by this checkpoint from these images exists (unless ``force``)."""
    return on_cluster(predict_stage, cluster)(run=load_config(config_path), workspace=workspace, device=device,
                                              force=force)
