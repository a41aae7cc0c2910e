"""``xaiflow train``, ``xaiflow models`` and ``xaiflow predict``: trained models of the workspace."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from xaiflow.cli.common import (RichProgress, WorkspaceOption, cluster_option, config_argument, dataset_option,
                                int_list, model_option, out, progress_bars, reporting_errors, rows_table, say)


def train(
    config: Path = config_argument("train"),
    workspace: str = WorkspaceOption,
    folds: Optional[int] = typer.Option(None, "--folds", help="train k models on specimen-grouped folds (Dask tasks)"),
    seeds: Optional[str] = typer.Option(None, "--seeds", help="comma-separated seeds: one model each (Dask tasks)"),
    force: bool = typer.Option(False, "--force", help="retrain even if a checkpoint with this config exists"),
    cluster: str = cluster_option(" (for several runs)"),
    predict: bool = typer.Option(True, "--predict/--no-predict", help="write predictions/<dataset>/<model>"),
) -> None:
    """Train the model of CONFIG (or several: --folds / --seeds), report test metrics, predict."""
    from xaiflow.config import load_section
    from xaiflow.runtime import dask_client
    from xaiflow.training import expand_runs, train_many, train_model

    with reporting_errors():
        train_cfg = load_section(config, "train")
        runs = expand_runs(train_cfg, folds, int_list(seeds, "--seeds"))
        if len(runs) == 1:
            with progress_bars() as bars:
                task = bars.add_task(f"train {train_cfg.arch}", total=train_cfg.epochs)
                rows = [train_model(workspace, runs[0], force=force, progress=lambda e, row: bars.update(
                    task, completed=e,
                    description=f"train {train_cfg.arch} val bal.acc {row['val_balanced_accuracy']:.2f}"))]
        else:
            with dask_client(cluster) as client, progress_bars() as bars:
                rows = train_many(workspace, runs, force=force, client=client, progress=RichProgress(bars, "models"))
        if predict:
            from xaiflow.predict import predict_dataset

            with dask_client("threads" if len(runs) == 1 else cluster) as client:
                for row in rows:
                    predict_dataset(workspace, row["model_id"], row["dataset"], client=client)
        out.print(rows_table(rows, ["model_id", "fold", "seed", "reused", "best_epoch", "val_balanced_accuracy",
                                    "test_balanced_accuracy", "test_majority_balanced_accuracy"],
                             title="balanced accuracy on held-out specimens (majority-class baseline beside it)",
                             key="models"))
        if len(rows) == 1:
            _print_class_report(workspace, rows[0]["model_id"])


def _print_class_report(workspace: str, model_id: str) -> None:
    from xaiflow.models.catalog import ModelCatalog

    metrics = ModelCatalog(workspace).get(model_id).metrics
    for split in ("test", "val"):
        if split in metrics:
            rep = metrics[split]
            classes = list(rep["per_class"])
            rows = [{"class": c, **v, **{f"pred:{p}": n for p, n in zip(classes, cm_row)}}
                    for (c, v), cm_row in zip(rep["per_class"].items(), rep["confusion"])]
            say(f"{split}: balanced accuracy {rep['balanced_accuracy']:.3f} "
                f"(majority baseline {rep['majority_baseline']['balanced_accuracy']:.3f}); "
                "per class, with the confusion matrix (rows: true class)",
                evaluation={"split": split, "balanced_accuracy": rep["balanced_accuracy"],
                            "majority_balanced_accuracy": rep["majority_baseline"]["balanced_accuracy"],
                            "classes": classes, "confusion": rep["confusion"]})
            out.print(rows_table(rows, ["class", "precision", "recall", "support", *[f"pred:{c}" for c in classes]],
                                 key="per_class", data=[{"class": c, **v} for c, v in rep["per_class"].items()]))
            break


def models(workspace: str = WorkspaceOption) -> None:
    """Table of the workspace's trained models with their metrics (full ids: any unique prefix works)."""
    from xaiflow.errors import XaiflowError
    from xaiflow.models.catalog import ModelCatalog

    with reporting_errors():
        catalog = ModelCatalog(workspace)
        rows = []
        for item in catalog.listing():
            e = item.entry
            if e is None:
                rows.append({"model_id": item.model_id, "status": item.status})
                continue
            m = e.metrics
            rows.append({"model_id": e.model_id, "arch": e.arch, "dataset": e.dataset, "status": item.status,
                         "epochs": m.get("epochs_run"), "val_bal_acc": m.get("val", {}).get("balanced_accuracy"),
                         "test_bal_acc": m.get("test", {}).get("balanced_accuracy"),
                         "majority": m.get("test", {}).get("majority_baseline", {}).get("balanced_accuracy"),
                         "img/s": m.get("train_images_per_second"), "sha256": e.sha256[:12]})
        if not rows:
            raise XaiflowError(f"no trained models in {catalog.directory}; run `xaiflow train`")
        out.print(rows_table(rows, ["model_id", "arch", "dataset", "status", "epochs", "val_bal_acc", "test_bal_acc",
                                    "majority", "img/s", "sha256"], key="models"))


def predict(
    workspace: str = WorkspaceOption,
    model: Optional[str] = model_option(),
    dataset: Optional[str] = dataset_option(),
    device: str = typer.Option("cpu", "--device", help="cpu, cuda, cuda:N or auto"),
    cluster: str = cluster_option(),
) -> None:
    """Write predictions/<dataset>/<model> (logits, probabilities, predicted class)."""
    from xaiflow.models.catalog import ModelCatalog
    from xaiflow.predict import predict_dataset
    from xaiflow.runtime import dask_client
    from xaiflow.store import open_group

    with reporting_errors():
        entry = ModelCatalog(workspace).resolve(model, dataset=dataset)
        dataset = dataset or entry.dataset
        with dask_client(cluster) as client, progress_bars() as bars:
            group = predict_dataset(workspace, entry.model_id, dataset, device=device, client=client,
                                    progress=RichProgress(bars, dataset))
        ds = open_group(workspace, group)
        correct = ds.predicted.values == ds.label_index.values
        test = correct[ds.split.values == "test"]
        say(f"[green]{group}[/]: {ds.sizes['sample']} samples, accuracy {correct.mean():.3f} "
            f"(test split {test.mean() if test.size else float('nan'):.3f})",
            group=group, n_samples=ds.sizes["sample"], accuracy=correct.mean(),
            test_accuracy=test.mean() if test.size else None)
