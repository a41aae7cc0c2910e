"""Predictions of a trained model for every sample of a dataset: ``predictions/<dataset>/<model_id>``.

A chunked job (:mod:`xaiflow.jobs`), one task per image chunk: the worker loads the model
once (:meth:`xaiflow.models.catalog.ModelEntry.cached`), predicts the chunk and writes its
chunk-aligned region, then its samples' ``done`` flags.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from functools import partial
from typing import Any, Callable

import dask.array as da
import numpy as np
import torch
import xarray as xr

from xaiflow import layout, schema, store
from xaiflow.device import check_device_name, resolve_device
from xaiflow.errors import XaiflowError
from xaiflow.jobs import Chunk, ChunkJob, pending_chunks, run_job
from xaiflow.locks import group_lock
from xaiflow.models.catalog import ModelCatalog, ModelEntry
from xaiflow.runtime import ProgressFn
from xaiflow.training import predict_logits

CLASS = "class"


class PredictionError(XaiflowError):
    """Prediction cannot run (unknown model, class mismatch, ...)."""


def predictions_group(dataset: str, model_id: str) -> str:
    return schema.group_path(schema.PREDICTIONS, dataset, model_id)


@dataclass(frozen=True)
class PredictJob(ChunkJob):
    """Logits, probabilities and the predicted class of every image chunk."""

    stage = "predict"
    dataset: str
    model: ModelEntry
    device: str

    @property
    def group(self) -> str:
        return predictions_group(self.dataset, self.model.model_id)

    def run_chunk(self, chunk: Chunk) -> int:
        model = self.model.cached(resolve_device(self.device))
        image = f"{schema.group_path(schema.IMAGES, self.dataset)}/{schema.IMAGE}"
        images = store.read_region(self.workspace, image, chunk.start, chunk.stop)
        logits = predict_logits(model, images, next(model.parameters()).device)
        probs = torch.softmax(torch.from_numpy(logits), dim=1).numpy()
        store.write_region(self.workspace, self.group, "logits", chunk.start, logits.astype(np.float32))
        store.write_region(self.workspace, self.group, "probabilities", chunk.start, probs.astype(np.float32))
        store.write_region(self.workspace, self.group, "predicted", chunk.start, logits.argmax(1).astype(np.int16))
        store.mark_done(self.workspace, self.group, chunk.start, chunk.stop)
        return chunk.index

    def finalize(self, results: list[int]) -> str:
        store.set_attrs(self.workspace, self.group, **{schema.ATTR_STATUS: schema.STATUS_COMPLETE})
        return self.group


def current_predictions(workspace: str | os.PathLike[str], model: ModelEntry, dataset: str) -> str | None:
    """The predictions group if it is complete and was made by this checkpoint from these images
    (so a pipeline re-run can skip predicting, and attribution can read the predicted class),
    else None."""
    workspace = str(workspace)
    group = predictions_group(dataset, model.model_id)
    if not store.group_exists(workspace, group):
        return None
    images = store.group_attrs(workspace, schema.group_path(schema.IMAGES, dataset))
    attrs = store.group_attrs(workspace, group)
    made_by = attrs.get(schema.ATTR_PROVENANCE, {})
    same = (attrs.get(schema.ATTR_STATUS) == schema.STATUS_COMPLETE and made_by.get("checkpoint_sha256") == model.sha256
            and made_by.get("images_config_hash") == images[schema.ATTR_PROVENANCE]["config_hash"])
    return group if same else None


def prepare(workspace: str | os.PathLike[str], model_id: str, dataset: str, *, device: str = "cpu") -> PredictJob:
    """Check the model against the dataset and lay out ``predictions/<dataset>/<model_id>``."""
    workspace = str(workspace)
    check_device_name(device)
    model = ModelCatalog(workspace).get(model_id)
    images = store.open_group(workspace, schema.group_path(schema.IMAGES, dataset))
    classes = list(images.attrs[schema.ATTR_CLASSES])
    if model.num_classes != len(classes):
        raise PredictionError(f"model {model.model_id} has {model.num_classes} outputs but dataset {dataset!r} has "
                              f"{len(classes)} classes {classes}")
    n = images.sizes[schema.SAMPLE]
    # a task per image shard (its chunk when unsharded): the small per-sample arrays take that as their
    # chunk, a file per shard of images instead of per image chunk (xaiflow.layout)
    chunk = layout.write_unit(workspace, f"{schema.group_path(schema.IMAGES, dataset)}/{schema.IMAGE}")
    k = len(classes)
    ds = xr.Dataset(
        {"logits": ((schema.SAMPLE, CLASS), da.zeros((n, k), dtype=np.float32, chunks=(chunk, k))),
         "probabilities": ((schema.SAMPLE, CLASS), da.zeros((n, k), dtype=np.float32, chunks=(chunk, k))),
         "predicted": ((schema.SAMPLE,), da.zeros(n, dtype=np.int16, chunks=chunk))},
        coords={schema.SAMPLE: images[schema.SAMPLE].values.astype(object), CLASS: np.array(classes, object),
                schema.LABEL_INDEX: images[schema.LABEL_INDEX],
                schema.SPLIT: (schema.SAMPLE, images[schema.SPLIT].values.astype(object))},
        attrs={schema.ATTR_CLASSES: classes, schema.ATTR_SCHEMA_VERSION: schema.SCHEMA_VERSION,
               schema.ATTR_PROVENANCE: {"model_id": model.model_id, "checkpoint_sha256": model.sha256,
                                        "images_config_hash": images.attrs[schema.ATTR_PROVENANCE]["config_hash"]}},
    )
    group = predictions_group(dataset, model.model_id)
    store.create_template(workspace, group, ds)
    chunks = pending_chunks(np.ones(n, bool), chunk)
    return PredictJob(workspace, dataset, model, device, chunks=chunks, n_chunks=len(chunks))


def predict_dataset(workspace: str | os.PathLike[str], model_id: str, dataset: str, *, device: str = "cpu",
                    client: Any = None, progress: ProgressFn | None = None,
                    runner: Callable[[ChunkJob], Any] | None = None) -> str:
    """Write ``predictions/<dataset>/<model_id>``; returns the group path."""
    runner = runner or partial(run_job, client=client, progress=progress)
    entry = ModelCatalog(workspace).get(model_id)
    with group_lock(workspace, predictions_group(dataset, entry.model_id), f"predictions of {entry.model_id}"):
        return runner(prepare(workspace, entry.model_id, dataset, device=device))
