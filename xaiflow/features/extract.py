"""Images -> ``features/<dataset>/<key>``: chunk-parallel extraction into the workspace.

The one place where extractor output (plain arrays) becomes a labelled xarray group::

    features(sample, feature) float32, chunks (chunk_size, F) aligned with the image chunks
    coords: sample and every per-sample coordinate of the images (label, group, split,
            um_per_px, source_um_per_px, metadata columns...), feature (labels), family
    attrs:  extractor, params, identity (what makes two runs equal), citation, classes,
            provenance, status; done(sample) flags

A chunked job (:class:`FeatureJob`, :mod:`xaiflow.jobs`): a template first, then one task per
image chunk that computes the chunk's features and writes its own region and ``done`` flags,
then ``status: complete``. Re-running with the same extractor identity is a no-op (or resumes
the missing chunks of an interrupted run); other parameters are refused unless
``overwrite``. Extractors that need a fit (e.g. the CNN Gram projection) are fitted once, on
the client, on ``fit_samples`` evenly spaced images, and shipped fitted to the workers.
Extractors that use a trained model get it from the run's ``features.model`` reference
(resolved by the workspace's :class:`~xaiflow.models.catalog.ModelCatalog`) through their own
:meth:`~xaiflow.features.base.FeatureExtractor.bind`.
"""

from __future__ import annotations

import json
import logging
import os
import time
from dataclasses import dataclass
from functools import partial
from typing import Any, Callable

import dask.array as da
import numpy as np
import xarray as xr

import xaiflow
from xaiflow import layout, schema, store
from xaiflow.features.base import FEATURES, FeatureError, FeatureExtractor, build_extractor
from xaiflow.features.config import FeaturesConfig
from xaiflow.jobs import Chunk, ChunkJob, chunk_count, pending_chunks, run_job
from xaiflow.locks import group_lock
from xaiflow.runtime import ProgressFn, current_worker

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


def _no_default_model() -> str | None:
    return None


def make_extractor(workspace: str | os.PathLike[str], name: str, params: dict[str, Any],
                   default_model: Callable[[], str | None] = _no_default_model) -> FeatureExtractor:
    """Build an extractor with the parameters it runs with on this workspace (its own ``bind``);
    ``default_model`` gives the run's default model id, asked only by extractors that need one."""
    cls = FEATURES.get(name)
    return build_extractor(name, cls.bind(dict(params), str(workspace), default_model))


def _sample_coords(images: xr.Dataset) -> dict[str, tuple[str, np.ndarray, dict[str, Any]]]:
    """Every per-sample coordinate of the images with its attributes (strings as object arrays, as ingest
    writes them)."""
    out = {}
    for name, coord in images.coords.items():
        if coord.dims != (schema.SAMPLE,) or name == schema.SAMPLE:
            continue
        values = np.asarray(coord.values)
        if values.dtype.kind in "UTO":
            values = np.array(values.tolist(), dtype=object)
        out[name] = (schema.SAMPLE, values, coord.attrs)
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


def _normalized(identity: dict[str, Any]) -> dict[str, Any]:
    """A stored identity with its parameters as the extractor's identity would give them now (groups
    written before extractors had ``Params`` stored only the parameters given, not the defaults)."""
    if identity.get("extractor") not in FEATURES:
        return identity
    try:
        return {**identity, "params": FEATURES.get(identity["extractor"]).identity_of(identity.get("params", {}))}
    except FeatureError:
        return identity


def _state(workspace: str, group: str, identity: dict[str, Any], overwrite: bool) -> str:
    """'absent', 'replace', 'complete' or 'incomplete' (same identity); refuses another identity."""
    if not store.group_exists(workspace, group):
        return "absent"
    if overwrite:
        return "replace"
    old = _normalized(store.group_attrs(workspace, group).get("identity", {}))
    if old != identity:
        detail = "; ".join(_differences(old, identity))
        raise FeatureError(f"{workspace}: {group} exists with other settings ({detail}); pass --overwrite "
                           "(overwrite: true) to replace it, or give this extractor another key")
    complete = store.group_attrs(workspace, group).get(schema.ATTR_STATUS) == schema.STATUS_COMPLETE
    return "complete" if complete else "incomplete"


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


@dataclass(frozen=True)
class FeatureJob(ChunkJob):
    """One extractor over every image chunk of a dataset, written to ``features/<dataset>/<key>``."""

    dataset: str
    key: str
    extractor: FeatureExtractor  # fitted where it needs a fit
    resumed: bool
    n_samples: int
    started: float  # time.perf_counter() at planning, for the result's seconds

    @property
    def group(self) -> str:
        return feature_group(self.dataset, self.key)

    @property
    def stage(self) -> str:  # type: ignore[override]  # one progress line per extractor
        return f"features {self.key}"

    def run_chunk(self, chunk: Chunk) -> float:
        """Features of images ``start:stop``, written to their region; returns seconds."""
        t0 = time.perf_counter()
        worker = current_worker()
        if worker is not None:
            self.extractor.configure_threads(worker.state.nthreads)
        image = f"{schema.group_path(schema.IMAGES, self.dataset)}/{schema.IMAGE}"
        features = self.extractor.transform(store.read_region(self.workspace, image, chunk.start, chunk.stop))
        store.write_region(self.workspace, self.group, FEATURES_VAR, chunk.start, features)
        store.mark_done(self.workspace, self.group, chunk.start, chunk.stop)
        return time.perf_counter() - t0

    def finalize(self, results: list[float]) -> ExtractResult:
        store.set_attrs(self.workspace, self.group, **{schema.ATTR_STATUS: schema.STATUS_COMPLETE})
        return ExtractResult(self.dataset, self.key, self.group, "resumed" if self.resumed else "written",
                             self.n_samples, len(self.extractor.feature_labels()), time.perf_counter() - self.started)


def prepare(workspace: str | os.PathLike[str], dataset: str, name: str, params: dict[str, Any] | None = None, *,
            key: str | None = None, overwrite: bool = False, fit_samples: int = 256,
            default_model: Callable[[], str | None] = _no_default_model) -> FeatureJob | ExtractResult:
    """Build, check and fit the extractor and lay out its group; an :class:`ExtractResult` instead
    when the group is up to date."""
    workspace = str(workspace)
    t0 = time.perf_counter()
    key = key or name
    images = store.open_group(workspace, schema.group_path(schema.IMAGES, dataset))
    extractor = make_extractor(workspace, name, params or {}, default_model)
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
    # a task per image shard (its chunk when unsharded), which the feature arrays take as their chunk: a
    # file per shard of images (xaiflow.layout); a resumed group keeps the unit it was written with
    chunk = layout.write_unit(workspace, f"{schema.group_path(schema.IMAGES, dataset)}/{schema.IMAGE}")
    done = np.zeros(n, bool)
    if state == "incomplete":
        old = store.open_group(workspace, group, check_complete=False)
        if list(old[schema.SAMPLE].values) == list(images[schema.SAMPLE].values):
            done = store.resume_flags(workspace, group)
            chunk = layout.write_unit(workspace, f"{group}/{schema.DONE}")
    if state == "replace":
        store.delete_group(workspace, group)
    if not done.any():
        store.create_template(workspace, group, _template(images, extractor, identity, chunk))
    chunks = pending_chunks(~done, chunk)
    if done.any():
        log.info("%s: resuming, %d of %d chunks already written", group, chunk_count(n, chunk) - len(chunks),
                 chunk_count(n, chunk))
    return FeatureJob(workspace, dataset, key, extractor, bool(done.any()), n, t0, chunks=chunks,
                      n_chunks=chunk_count(n, chunk))


def extract_features(workspace: str | os.PathLike[str], dataset: str, name: str,
                     params: dict[str, Any] | None = None, *, key: str | None = None, overwrite: bool = False,
                     fit_samples: int = 256, default_model: Callable[[], str | None] = _no_default_model,
                     client: Any = None, progress: ProgressFn | None = None,
                     runner: Callable[[ChunkJob], Any] | None = None) -> ExtractResult:
    """Write ``features/<dataset>/<key or name>`` with extractor ``name`` (see the module docstring)."""
    with group_lock(workspace, feature_group(dataset, key or name), f"features {key or name} of {dataset!r}"):
        job = prepare(workspace, dataset, name, params, key=key, overwrite=overwrite, fit_samples=fit_samples,
                      default_model=default_model)
        if isinstance(job, ExtractResult):
            return job
        return (runner or partial(run_job, client=client, progress=progress))(job)


def extract_all(workspace: str | os.PathLike[str], cfg: FeaturesConfig, *, run: Any = None,
                overwrite: bool | None = None, client: Any = None, progress: ProgressFn | None = None,
                runner: Callable[[ChunkJob], Any] | None = None) -> list[ExtractResult]:
    """Run every extractor of a ``features:`` config section on every dataset it names.

    ``run`` is the whole run config (its ``train:`` section is what ``features.model: {train:
    this}`` names); the model reference is resolved once, and only if an extractor asks for it.
    """
    from xaiflow.models.catalog import ModelCatalog

    overwrite = cfg.overwrite if overwrite is None else overwrite
    resolved: dict[str, str | None] = {}

    def default_model() -> str | None:
        if "id" not in resolved:
            resolved["id"] = None if cfg.model is None else ModelCatalog(workspace).resolve(cfg.model, run=run).model_id
        return resolved["id"]

    return [extract_features(workspace, dataset, spec.name, spec.params, key=spec.key, overwrite=overwrite,
                             fit_samples=cfg.fit_samples, default_model=default_model, client=client,
                             progress=progress, runner=runner)
            for dataset in cfg.datasets for spec in cfg.extractors]
