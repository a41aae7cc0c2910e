"""Images -> ``features/<dataset>/<key>``: chunk-parallel extraction into the workspace.

The one place where extractor output (plain arrays) becomes a labelled xarray group::

    features(sample, feature) float32, chunks (chunk_size, F) aligned with the image chunks
    coords: sample and every per-sample coordinate of the images (label, group, split,
            um_per_px, source_um_per_px, metadata columns...), feature (labels), family
    attrs:  extractor, params (verbatim), identity (what makes two runs equal), citation,
            classes, provenance, status, chunk_done(chunk)

It follows the workspace's write pattern (:mod:`xaiflow.store`): a template first, then one
Dask task per image chunk that computes the chunk's features and writes its own region and
``chunk_done`` flag, then ``status: complete``. Re-running with the same extractor identity
is a no-op (or resumes the missing chunks of an interrupted run); other parameters are
refused unless ``overwrite``. Extractors that need a fit (e.g. the CNN Gram projection) are
fitted once, on the client, on ``fit_samples`` evenly spaced images, and shipped fitted to
the workers.
"""

from __future__ import annotations

import json
import logging
import math
import os
import time
from dataclasses import dataclass
from typing import Any

import dask.array as da
import numpy as np
import xarray as xr
import zarr

import xaiflow
from xaiflow import schema, store
from xaiflow.features.base import FeatureError, FeatureExtractor, build_extractor
from xaiflow.features.config import FeaturesConfig
from xaiflow.runtime import ProgressFn, map_tasks

log = logging.getLogger("xaiflow")

FEATURES_VAR = "features"
FEATURE = "feature"
FAMILY = "family"


@dataclass
class ExtractResult:
    dataset: str
    key: str
    group: str
    status: str  # "written", "resumed", "up-to-date"
    n_samples: int
    n_features: int
    seconds: float


def feature_group(dataset: str, key: str) -> str:
    return schema.group_path(schema.FEATURES, dataset, key)


def make_extractor(workspace: str | os.PathLike[str], name: str, params: dict[str, Any]) -> FeatureExtractor:
    """Build an extractor; a cnn extractor looks model ids up in the workspace's models folder."""
    params = dict(params)
    if name == "cnn" and params.get("models_dir") is None:
        params["models_dir"] = str(store.models_dir(workspace))
    return build_extractor(name, params)


def _sample_coords(images: xr.Dataset) -> dict[str, tuple[str, np.ndarray]]:
    """Every per-sample coordinate of the images (strings as object arrays, as ingest writes them)."""
    out = {}
    for name, coord in images.coords.items():
        if coord.dims != (schema.SAMPLE,) or name == schema.SAMPLE:
            continue
        values = np.asarray(coord.values)
        if values.dtype.kind in "UTO":
            values = np.array(values.tolist(), dtype=object)
        out[name] = (schema.SAMPLE, values)
    return out


def _identity(extractor: FeatureExtractor, images: xr.Dataset, fit_samples: int) -> dict[str, Any]:
    return {"extractor": extractor.name, "params": extractor.identity_params(),
            "fit_samples": fit_samples if extractor.requires_fit else None,
            "images_config_hash": images.attrs[schema.ATTR_PROVENANCE]["config_hash"],
            **json.loads(json.dumps(extractor.provenance(), sort_keys=True))}


def _differences(old: dict[str, Any], new: dict[str, Any], prefix: str = "") -> list[str]:
    """``key: stored X, requested Y`` for every leaf that differs (nested dicts flattened)."""
    out = []
    for k in sorted(set(old) | set(new)):
        a, b = old.get(k), new.get(k)
        if isinstance(a, dict) and isinstance(b, dict):
            out += _differences(a, b, f"{prefix}{k}.")
        elif a != b:
            out.append(f"{prefix}{k}: stored {a!r}, requested {b!r}")
    return out


def _state(workspace: str, group: str, identity: dict[str, Any], overwrite: bool) -> str:
    """'absent', 'replace', 'complete' or 'incomplete' (same identity); refuses another identity."""
    if not store.group_exists(workspace, group):
        return "absent"
    if overwrite:
        return "replace"
    old = store.group_attrs(workspace, group).get("identity", {})
    if old != identity:
        detail = "; ".join(_differences(old, identity))
        raise FeatureError(f"{workspace}: {group} exists with other settings ({detail}); pass --overwrite "
                           "(overwrite: true) to replace it, or give this extractor another key")
    complete = store.group_attrs(workspace, group).get(schema.ATTR_STATUS) == schema.STATUS_COMPLETE
    return "complete" if complete else "incomplete"


def _read_images(workspace: str, dataset: str, start: int, stop: int) -> np.ndarray:
    """Images ``start:stop``, read straight from the Zarr array (as :func:`store.write_region` writes):
    opening the whole xarray group per task (every coordinate) cost more than GLCM itself."""
    group = schema.group_path(schema.IMAGES, dataset)
    return zarr.open_array(workspace, path=f"{group}/{schema.IMAGE}", mode="r", zarr_format=3)[start:stop]


def _worker_threads() -> int | None:
    try:
        from distributed import get_worker

        return get_worker().state.nthreads
    except (ImportError, ValueError):
        return None


def extract_chunk(task: tuple[int, int, int], extractor: FeatureExtractor, workspace: str, dataset: str,
                  group: str) -> float:
    """One Dask task: features of images ``start:stop``, written to their region; returns seconds."""
    index, start, stop = task
    t0 = time.perf_counter()
    threads = _worker_threads()
    if threads:
        extractor.configure_threads(threads)
    features = extractor.transform(_read_images(workspace, dataset, start, stop))
    store.write_region(workspace, group, FEATURES_VAR, start, features)
    store.mark_chunk_done(workspace, group, index)
    return time.perf_counter() - t0


def _template(images: xr.Dataset, extractor: FeatureExtractor, identity: dict[str, Any], chunk: int) -> xr.Dataset:
    labels, families = extractor.feature_labels(), extractor.feature_families()
    if len(set(labels)) != len(labels) or len(families) != len(labels):
        raise FeatureError(f"extractor {extractor.name!r}: feature labels must be unique and match the families")
    n, f = images.sizes[schema.SAMPLE], len(labels)
    coords = {schema.SAMPLE: np.array(images[schema.SAMPLE].values.tolist(), dtype=object),
              **_sample_coords(images),
              FEATURE: np.array(labels, dtype=object), FAMILY: (FEATURE, np.array(families, dtype=object))}
    data = da.zeros((n, f), dtype=np.float32, chunks=(chunk, f))
    ds = xr.Dataset({FEATURES_VAR: ((schema.SAMPLE, FEATURE), data)}, coords=coords)
    ds.attrs.update({
        schema.ATTR_SCHEMA_VERSION: schema.SCHEMA_VERSION,
        schema.ATTR_CLASSES: list(images.attrs[schema.ATTR_CLASSES]),
        "extractor": extractor.name,
        "params": json.loads(json.dumps(extractor.get_params())),
        "identity": identity,
        "citation": extractor.citation,
        schema.ATTR_PROVENANCE: {"images_config_hash": identity["images_config_hash"],
                                 "xaiflow_version": xaiflow.__version__},
    })
    return ds


def extract_features(workspace: str | os.PathLike[str], dataset: str, name: str,
                     params: dict[str, Any] | None = None, *, key: str | None = None, overwrite: bool = False,
                     fit_samples: int = 256, client: Any = None,
                     progress: ProgressFn | None = None) -> ExtractResult:
    """Write ``features/<dataset>/<key or name>`` with extractor ``name`` (see the module docstring)."""
    workspace = str(workspace)
    t0 = time.perf_counter()
    key = key or name
    images = store.open_group(workspace, schema.group_path(schema.IMAGES, dataset))
    extractor = make_extractor(workspace, name, params or {})
    identity = _identity(extractor, images, fit_samples)
    group = feature_group(dataset, key)
    state = _state(workspace, group, identity, overwrite)
    n, n_features = images.sizes[schema.SAMPLE], len(extractor.feature_labels())
    if state == "complete":
        log.info("%s is up to date; nothing to do", group)
        return ExtractResult(dataset, key, group, "up-to-date", n, n_features, time.perf_counter() - t0)

    if extractor.requires_fit:
        idx = np.unique(np.linspace(0, n - 1, min(n, fit_samples)).round().astype(int))
        extractor.fit(images[schema.IMAGE].data[idx].compute(scheduler="synchronous"))
    chunk = images[schema.IMAGE].data.chunksize[0]
    n_chunks = math.ceil(n / chunk)
    done = np.zeros(n_chunks, bool)
    if state == "incomplete":
        old = store.open_group(workspace, group, check_complete=False)
        if list(old[schema.SAMPLE].values) == list(images[schema.SAMPLE].values):
            done = store.chunks_done(workspace, group)
    if state == "replace":
        store.delete_group(workspace, group)
    if not done.any():
        store.create_template(workspace, group, _template(images, extractor, identity, chunk), n_chunks)
    else:
        log.info("%s: resuming, %d of %d chunks already written", group, int(done.sum()), n_chunks)
    tasks = [(i, i * chunk, min(n, (i + 1) * chunk)) for i in range(n_chunks) if not done[i]]
    map_tasks(extract_chunk, tasks, client=client, progress=progress, stage=f"features {key}",
              extractor=extractor, workspace=workspace, dataset=dataset, group=group)
    store.set_attrs(workspace, group, **{schema.ATTR_STATUS: schema.STATUS_COMPLETE})
    return ExtractResult(dataset, key, group, "resumed" if done.any() else "written", n, n_features,
                         time.perf_counter() - t0)


def extract_all(workspace: str | os.PathLike[str], cfg: FeaturesConfig, *, overwrite: bool | None = None,
                client: Any = None, progress: ProgressFn | None = None) -> list[ExtractResult]:
    """Run every extractor of a ``features:`` config section on every dataset it names."""
    overwrite = cfg.overwrite if overwrite is None else overwrite
    return [extract_features(workspace, dataset, spec.name, cfg.params_for(spec), key=spec.group_key,
                             overwrite=overwrite, fit_samples=cfg.fit_samples, client=client, progress=progress)
            for dataset in cfg.datasets for spec in cfg.extractors]
