"""Train and evaluate a CNN on a workspace dataset (pure torch; no Prefect).

* Splits come from the workspace (assigned by specimen at ingest); with ``folds`` the
  train+val specimens are re-split into k specimen-grouped folds (test stays held out).
* Imbalance: class-weighted cross-entropy (``balance: loss``) or a class-balanced sampler.
* Augmentations that suit micrographs (no preferred orientation): flips, 90-degree
  rotations, random crops (evaluation uses the full image: the networks pool globally).
* Early stopping on validation balanced accuracy; the best epoch's weights are kept.
* Determinism: one seed drives initialisation, shuffling and augmentation.
* Reports per-class precision/recall, balanced accuracy and the confusion matrix for val
  and test, beside the majority-class baseline.

The checkpoint goes to ``<workspace>.models/<model_id>/`` where ``model_id`` hashes the
training config and the data (images config hash + sample ids + splits): a re-run with the
same inputs reuses it instead of training again.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
from torch import nn

from xaiflow import schema, store
from xaiflow.config import AugmentConfig, TrainConfig
from xaiflow.device import resolve_device, set_torch_threads
from xaiflow.errors import XaiflowError
from xaiflow.models import build_model
from xaiflow.models.catalog import ModelCatalog
from xaiflow.models.checkpoint import save_checkpoint
from xaiflow.preprocess import to_input

log = logging.getLogger("xaiflow")


class TrainingError(XaiflowError):
    """Training cannot start or run (missing split, class without samples, ...)."""


# ------------------------------------------------------------------ data

def load_split_arrays(workspace: str | Path, cfg: TrainConfig) -> dict[str, Any]:
    """Images, label indices and split masks of the dataset, with the checks training needs."""
    group = schema.group_path(schema.IMAGES, cfg.dataset)
    try:
        ds = store.open_group(workspace, group)
    except store.WorkspaceError as e:
        raise TrainingError(str(e)) from None
    classes = list(ds.attrs[schema.ATTR_CLASSES])
    split = store.strings(ds[schema.SPLIT].values)
    groups = store.strings(ds[schema.GROUP].values)
    labels = ds[schema.LABEL_INDEX].values.astype(np.int64)
    if cfg.folds is not None:
        if cfg.fold is None or cfg.fold >= cfg.folds:
            raise TrainingError(f"fold must be in 0..{cfg.folds - 1} when folds={cfg.folds}, got {cfg.fold}")
        split = fold_split(split, groups, labels, cfg.folds, cfg.fold, cfg.seed)
    for name in ("train", "val"):
        if not (split == name).any():
            raise TrainingError(f"{group}: split {name!r} is empty; re-ingest with a non-zero fraction for it")
    train_classes = set(labels[split == "train"].tolist())
    missing = [c for i, c in enumerate(classes) if i not in train_classes and (labels == i).any()]
    if missing:
        raise TrainingError(f"{group}: class(es) {missing} have no training sample (split 'train'); "
                            "change the split seed/fractions or drop the class")
    # read here, in this process: inside a Dask task there is no client to send a computation to
    return {"images": ds[schema.IMAGE].data.compute(scheduler="synchronous"), "labels": labels, "split": split,
            "classes": classes, "groups": groups, "sample": store.strings(ds[schema.SAMPLE].values), "attrs": ds.attrs}


def fold_split(split: np.ndarray, groups: np.ndarray, labels: np.ndarray, k: int, fold: int, seed: int) -> np.ndarray:
    """Re-split train+val specimens into k stratified, grouped folds; ``fold`` becomes val."""
    from sklearn.model_selection import StratifiedGroupKFold

    pool = np.flatnonzero(split != "test")
    folds = list(StratifiedGroupKFold(n_splits=k, shuffle=True, random_state=seed)
                 .split(pool, labels[pool], groups[pool]))
    out = split.copy()
    out[pool] = "train"
    out[pool[folds[fold][1]]] = "val"
    return out


def data_hash(arrays: dict[str, Any]) -> str:
    """Identity of the training data: the ingest config and the sample/split assignment."""
    h = hashlib.sha256(arrays["attrs"][schema.ATTR_PROVENANCE]["config_hash"].encode())
    h.update("\n".join(arrays["sample"]).encode())
    h.update("\n".join(arrays["split"]).encode())
    return h.hexdigest()


def resolve_model_id(workspace: str | Path, cfg: TrainConfig) -> str:
    """The id :func:`train_model` gives (or gave) this config, without loading any pixels."""
    group = schema.group_path(schema.IMAGES, cfg.dataset)
    try:
        ds = store.open_group(workspace, group)
    except store.WorkspaceError as e:
        raise TrainingError(str(e)) from None
    split = store.strings(ds[schema.SPLIT].values)
    if cfg.folds is not None:
        split = fold_split(split, store.strings(ds[schema.GROUP].values), ds[schema.LABEL_INDEX].values.astype(np.int64),
                           cfg.folds, cfg.fold or 0, cfg.seed)
    arrays = {"attrs": ds.attrs, "sample": store.strings(ds[schema.SAMPLE].values), "split": split}
    return model_id_for(cfg, data_hash(arrays))


def model_id_for(cfg: TrainConfig, dhash: str) -> str:
    blob = json.dumps({"train": cfg.model_dump(mode="json", exclude={"device", "threads"}), "data": dhash},
                      sort_keys=True)
    suffix = f"-f{cfg.fold}" if cfg.folds is not None else ""
    return f"{cfg.arch}-{cfg.dataset}{suffix}-{hashlib.sha256(blob.encode()).hexdigest()[:10]}"


# ------------------------------------------------------------------ metrics

def classification_report(y_true: np.ndarray, y_pred: np.ndarray, classes: list[str]) -> dict[str, Any]:
    """Balanced accuracy, accuracy, per-class precision/recall and confusion (rows: true)."""
    k = len(classes)
    cm = np.zeros((k, k), np.int64)
    np.add.at(cm, (y_true, y_pred), 1)
    support = cm.sum(1)
    predicted = cm.sum(0)
    recall = np.divide(np.diag(cm), support, out=np.full(k, np.nan), where=support > 0)
    precision = np.divide(np.diag(cm), predicted, out=np.full(k, np.nan), where=predicted > 0)
    present = support > 0
    return {
        "n": int(len(y_true)),
        "accuracy": float((y_true == y_pred).mean()) if len(y_true) else float("nan"),
        "balanced_accuracy": float(np.nanmean(recall[present])) if present.any() else float("nan"),
        "per_class": {c: {"precision": _f(precision[i]), "recall": _f(recall[i]), "support": int(support[i])}
                      for i, c in enumerate(classes)},
        "confusion": cm.tolist(),
    }


def _f(v: float) -> float | None:
    return None if np.isnan(v) else float(v)


def majority_baseline(train_labels: np.ndarray, y_true: np.ndarray, classes: list[str]) -> dict[str, Any]:
    """What always predicting the most frequent training class scores on ``y_true``."""
    majority = int(np.bincount(train_labels, minlength=len(classes)).argmax())
    rep = classification_report(y_true, np.full_like(y_true, majority), classes)
    return {"class": classes[majority], "accuracy": rep["accuracy"], "balanced_accuracy": rep["balanced_accuracy"]}


# ------------------------------------------------------------------ training loop

def _augment(x: torch.Tensor, aug: AugmentConfig, gen: torch.Generator) -> torch.Tensor:
    n = x.shape[0]
    if aug.crop is not None and aug.crop < min(x.shape[-2:]):
        h, w = x.shape[-2:]
        ys = torch.randint(0, h - aug.crop + 1, (n,), generator=gen)
        xs = torch.randint(0, w - aug.crop + 1, (n,), generator=gen)
        x = torch.stack([x[i, :, y:y + aug.crop, xx:xx + aug.crop] for i, (y, xx) in enumerate(zip(ys, xs))])
    if aug.flips:
        flip_h = torch.rand(n, generator=gen) < 0.5
        flip_v = torch.rand(n, generator=gen) < 0.5
        x = torch.where(flip_h[:, None, None, None], x.flip(-1), x)
        x = torch.where(flip_v[:, None, None, None], x.flip(-2), x)
    if aug.rot90 and x.shape[-1] == x.shape[-2]:
        k = torch.randint(0, 4, (n,), generator=gen)
        x = torch.stack([torch.rot90(x[i], int(k[i]), dims=(-2, -1)) for i in range(n)])
    return x


@torch.no_grad()
def predict_logits(model: nn.Module, images: np.ndarray, device: torch.device, batch_size: int = 32) -> np.ndarray:
    """Logits (N, K) for stored images, in eval mode."""
    model.eval()
    out = []
    for i in range(0, len(images), batch_size):
        out.append(model(to_input(images[i:i + batch_size]).to(device)).float().cpu())
    return torch.cat(out).numpy() if out else np.zeros((0, 0), np.float32)


def train_model(workspace: str | Path, cfg: TrainConfig, *, force: bool = False,
                progress: Callable[[int, dict[str, float]], None] | None = None) -> dict[str, Any]:
    """Train (or reuse) the model ``cfg`` describes; returns a summary row.

    The summary holds ``model_id``, ``checkpoint``, ``reused`` and the val/test metrics.
    """
    arrays = load_split_arrays(workspace, cfg)
    model_id = model_id_for(cfg, data_hash(arrays))
    catalog = ModelCatalog(workspace)
    directory = catalog.directory / model_id
    if not force and model_id in catalog.ids():
        entry = catalog.get(model_id)
        if catalog.remote:  # a checkpoint whose upload failed last time goes beside the store now
            from xaiflow.models.remote import push, remote_ids

            if model_id not in remote_ids(catalog.remote):
                push(catalog.remote, directory)
        log.info("model %s exists; reusing it (use --force to retrain)", model_id)
        return _summary(model_id, directory, cfg, entry.metrics, reused=True)

    set_torch_threads(cfg.threads)
    device = resolve_device(cfg.device)
    torch.manual_seed(cfg.seed)
    gen = torch.Generator().manual_seed(cfg.seed)
    classes, labels, split, images = arrays["classes"], arrays["labels"], arrays["split"], arrays["images"]
    try:
        model = build_model(cfg.arch, num_classes=len(classes), **cfg.model_params).to(device)
    except TypeError as e:
        raise TrainingError(str(e)) from None
    train_idx, val_idx = np.flatnonzero(split == "train"), np.flatnonzero(split == "val")
    counts = np.bincount(labels[train_idx], minlength=len(classes)).astype(np.float64)
    inv = np.where(counts > 0, counts.sum() / np.maximum(counts, 1) / (counts > 0).sum(), 0.0)
    weight = torch.tensor(inv, dtype=torch.float32, device=device) if cfg.balance == "loss" else None
    loss_fn = nn.CrossEntropyLoss(weight=weight)
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=cfg.epochs)

    history: list[dict[str, float]] = []
    best = (-1.0, None, 0)  # (val balanced accuracy, state, epoch)
    start = time.perf_counter()
    seen = 0
    for epoch in range(cfg.epochs):
        model.train()
        if cfg.balance == "sampler":
            p = inv[labels[train_idx]]
            order = train_idx[torch.multinomial(torch.tensor(p / p.sum()), len(train_idx), True, generator=gen).numpy()]
        else:
            order = train_idx[torch.randperm(len(train_idx), generator=gen).numpy()]
        total = 0.0
        for i in range(0, len(order), cfg.batch_size):
            idx = np.sort(order[i:i + cfg.batch_size])
            x = _augment(to_input(images[idx]), cfg.augment, gen).to(device)
            y = torch.from_numpy(labels[idx]).to(device)
            opt.zero_grad(set_to_none=True)
            loss = loss_fn(model(x), y)
            loss.backward()
            opt.step()
            total += loss.item() * len(idx)
            seen += len(idx)
        sched.step()
        val_pred = predict_logits(model, images[val_idx], device).argmax(1)
        val = classification_report(labels[val_idx], val_pred, classes)
        row = {"epoch": epoch + 1, "train_loss": total / len(order), "val_balanced_accuracy": val["balanced_accuracy"],
               "val_accuracy": val["accuracy"], "seconds": time.perf_counter() - start}
        history.append(row)
        if progress:
            progress(epoch + 1, row)
        log.info("%s epoch %d: loss %.3f, val balanced acc %.3f", model_id, epoch + 1, row["train_loss"],
                 row["val_balanced_accuracy"])
        if val["balanced_accuracy"] > best[0]:
            best = (val["balanced_accuracy"], {k: v.detach().clone() for k, v in model.state_dict().items()}, epoch + 1)
        elif epoch + 1 - best[2] >= cfg.patience:
            break
    model.load_state_dict(best[1])
    seconds = time.perf_counter() - start

    metrics: dict[str, Any] = {"classes": classes, "best_epoch": best[2], "epochs_run": len(history),
                               "train_seconds": seconds, "train_images_per_second": seen / seconds,
                               "device": str(device)}
    for name in ("val", "test"):
        idx = np.flatnonzero(split == name)
        if len(idx):
            pred = predict_logits(model, images[idx], device).argmax(1)
            metrics[name] = classification_report(labels[idx], pred, classes)
            metrics[name]["majority_baseline"] = majority_baseline(labels[train_idx], labels[idx], classes)
    config = {"train": cfg.model_dump(mode="json"), "data_hash": data_hash(arrays), "workspace": str(workspace)}
    save_checkpoint(directory, model.cpu(), config, history, metrics)
    if catalog.remote:  # a workspace on object storage: the mirror's new checkpoint goes beside the store
        from xaiflow.models.remote import push

        push(catalog.remote, directory)
    return _summary(model_id, directory, cfg, metrics, reused=False)


def _summary(model_id: str, directory: Path, cfg: TrainConfig, metrics: dict[str, Any], reused: bool) -> dict[str, Any]:
    row: dict[str, Any] = {"model_id": model_id, "checkpoint": str(directory), "dataset": cfg.dataset,
                           "arch": cfg.arch, "fold": cfg.fold, "seed": cfg.seed, "reused": reused,
                           "best_epoch": metrics.get("best_epoch"),
                           "images_per_second": metrics.get("train_images_per_second")}
    for name in ("val", "test"):
        if name in metrics:
            row[f"{name}_balanced_accuracy"] = metrics[name]["balanced_accuracy"]
            row[f"{name}_majority_balanced_accuracy"] = metrics[name]["majority_baseline"]["balanced_accuracy"]
    return row


# ------------------------------------------------------------------ several models on Dask

def _train_task(cfg: TrainConfig, workspace: str, force: bool) -> dict[str, Any]:
    """One training run inside a Dask worker, with torch threads = the worker's threads."""
    if cfg.threads is None:
        try:
            from distributed import get_worker

            cfg = cfg.model_copy(update={"threads": get_worker().state.nthreads})
        except ValueError:  # not inside a worker
            pass
    return train_model(workspace, cfg, force=force)


def expand_runs(cfg: TrainConfig, folds: int | None = None, seeds: list[int] | None = None) -> list[TrainConfig]:
    """One config per (fold, seed): k specimen-grouped folds and/or several seeds."""
    runs = []
    for seed in seeds or [cfg.seed]:
        if folds:
            runs += [cfg.model_copy(update={"seed": seed, "folds": folds, "fold": f}) for f in range(folds)]
        else:
            runs.append(cfg.model_copy(update={"seed": seed}))
    return runs


def train_many(workspace: str | Path, configs: list[TrainConfig], *, force: bool = False, client: Any = None,
               progress: Any = None) -> list[dict[str, Any]]:
    """Train several models as Dask tasks (one model per task); one summary row per model."""
    from xaiflow.runtime import map_tasks

    return map_tasks(_train_task, configs, client=client, progress=progress, stage="train",
                     workspace=str(workspace), force=force)
