"""Predictions of a trained model for every sample of a dataset: ``predictions/<dataset>/<model_id>``.

One Dask task per image chunk: the worker loads the model once (see
:mod:`xaiflow.models.cache`), predicts the chunk and writes its chunk-aligned region.
"""

from __future__ import annotations

import math
import os
from typing import Any

import dask.array as da
import numpy as np
import torch
import xarray as xr

from xaiflow import schema, store
from xaiflow.device import resolve_device
from xaiflow.models.cache import cached_model
from xaiflow.models.checkpoint import verify_checkpoint
from xaiflow.runtime import ProgressFn, map_tasks
from xaiflow.training import predict_logits

CLASS = "class"


class PredictionError(ValueError):
    """Prediction cannot run (unknown model, class mismatch, ...)."""


def checkpoint_dir(workspace: str | os.PathLike[str], model_id: str):
    directory = store.models_dir(workspace) / model_id
    if not (directory / "manifest.json").is_file():
        known = sorted(p.name for p in store.models_dir(workspace).glob("*") if not p.name.startswith(".")) \
            if store.models_dir(workspace).is_dir() else []
        raise PredictionError(f"no trained model {model_id!r} in {store.models_dir(workspace)} (models: {known or 'none'})")
    return directory


def _predict_chunk(task: tuple[int, int, int], workspace: str, model_id: str, dataset: str, device: str) -> int:
    index, start, stop = task
    model, _ = cached_model(checkpoint_dir(workspace, model_id), resolve_device(device))
    images = store.open_group(workspace, schema.group_path(schema.IMAGES, dataset))[schema.IMAGE][start:stop].values
    logits = predict_logits(model, images, next(model.parameters()).device)
    probs = torch.softmax(torch.from_numpy(logits), dim=1).numpy()
    group = schema.group_path(schema.PREDICTIONS, dataset, model_id)
    store.write_region(workspace, group, "logits", start, logits.astype(np.float32))
    store.write_region(workspace, group, "probabilities", start, probs.astype(np.float32))
    store.write_region(workspace, group, "predicted", start, logits.argmax(1).astype(np.int16))
    store.mark_chunk_done(workspace, group, index)
    return index


def current_predictions(workspace: str | os.PathLike[str], model_id: str, dataset: str,
                        sha256: str | None = None) -> str | None:
    """The predictions group if it is complete and was made by this checkpoint from these images
    (so a pipeline re-run can skip predicting, and attribution can read the predicted class),
    else None. ``sha256``: the checkpoint's weights hash when the caller has verified it already."""
    workspace = str(workspace)
    group = schema.group_path(schema.PREDICTIONS, dataset, model_id)
    if not store.group_exists(workspace, group):
        return None
    sha = sha256 or verify_checkpoint(checkpoint_dir(workspace, model_id)).weights_sha256
    images = store.group_attrs(workspace, schema.group_path(schema.IMAGES, dataset))
    attrs = store.group_attrs(workspace, group)
    made_by = attrs.get(schema.ATTR_PROVENANCE, {})
    same = (attrs.get(schema.ATTR_STATUS) == schema.STATUS_COMPLETE and made_by.get("checkpoint_sha256") == sha
            and made_by.get("images_config_hash") == images[schema.ATTR_PROVENANCE]["config_hash"])
    return group if same else None


def predict_dataset(workspace: str | os.PathLike[str], model_id: str, dataset: str, *, device: str = "cpu",
                    client: Any = None, progress: ProgressFn | None = None) -> str:
    """Write ``predictions/<dataset>/<model_id>``; returns the group path."""
    workspace = str(workspace)
    manifest = verify_checkpoint(checkpoint_dir(workspace, model_id))
    images = store.open_group(workspace, schema.group_path(schema.IMAGES, dataset))
    classes = list(images.attrs[schema.ATTR_CLASSES])
    n_out = manifest.hparams["num_classes"]
    if n_out != len(classes):
        raise PredictionError(
            f"model {model_id} has {n_out} outputs but dataset {dataset!r} has {len(classes)} classes {classes}")
    n = images.sizes[schema.SAMPLE]
    chunk = images[schema.IMAGE].data.chunksize[0]
    k = len(classes)
    ds = xr.Dataset(
        {"logits": ((schema.SAMPLE, CLASS), da.zeros((n, k), dtype=np.float32, chunks=(chunk, k))),
         "probabilities": ((schema.SAMPLE, CLASS), da.zeros((n, k), dtype=np.float32, chunks=(chunk, k))),
         "predicted": ((schema.SAMPLE,), da.zeros(n, dtype=np.int16, chunks=chunk))},
        coords={schema.SAMPLE: images[schema.SAMPLE].values.astype(object), CLASS: np.array(classes, object),
                schema.LABEL_INDEX: images[schema.LABEL_INDEX], schema.SPLIT: images[schema.SPLIT].values.astype(object)},
        attrs={schema.ATTR_CLASSES: classes, schema.ATTR_SCHEMA_VERSION: schema.SCHEMA_VERSION,
               schema.ATTR_PROVENANCE: {"model_id": model_id, "checkpoint_sha256": manifest.weights_sha256,
                                        "images_config_hash": images.attrs[schema.ATTR_PROVENANCE]["config_hash"]}},
    )
    group = schema.group_path(schema.PREDICTIONS, dataset, model_id)
    n_chunks = math.ceil(n / chunk)
    store.create_template(workspace, group, ds, n_chunks)
    tasks = [(i, i * chunk, min(n, (i + 1) * chunk)) for i in range(n_chunks)]
    map_tasks(_predict_chunk, tasks, client=client, progress=progress, stage="predict",
              workspace=workspace, model_id=model_id, dataset=dataset, device=device)
    store.set_attrs(workspace, group, **{schema.ATTR_STATUS: schema.STATUS_COMPLETE})
    return group
