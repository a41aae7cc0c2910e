"""Attribution over a whole dataset: one Dask task per image chunk, maps written beside the images.

:func:`prepare` (on the client) resolves the model and methods, validates everything that
can be validated before any work (method names, parameters, layers, class counts, a model
that changed since maps were stored), creates or extends ``saliency/<dataset>/<model_id>``
(see :mod:`xaiflow.saliency`) and returns the chunk tasks that still have work.
:func:`run_chunk` (on a worker) reads one image chunk, explains every requested method for
the samples not yet done, and writes that chunk's region and flags: no two tasks touch a
chunk, so retries and parallel workers are safe and a killed run resumes where it stopped.
:func:`run_attribution` ties both together on a Dask client.

Devices and memory: the device comes from the config (``auto`` picks CUDA on a worker that
has it); torch threads follow the worker's thread count; the number of model evaluations per
forward pass is chosen from the activation memory of one evaluation and the per-worker
memory budget, capped per device type (on this CPU, small passes are faster), and each
method turns it into its own batching parameter
(:meth:`~xaiflow.attribution.base.AttributionMethod.batching`: Integrated Gradients'
``internal_batch_size``, occlusion's ``perturbations_per_eval``, ...). Batching changes speed
and memory, not the maps, so it is recorded but is not part of a method's identity.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import os
import time
from dataclasses import dataclass, field
from functools import lru_cache, partial
from importlib.metadata import version
from typing import Any, Callable

import numpy as np
import torch
import zarr

import xaiflow
from xaiflow import layout, regions, saliency, schema, store
from xaiflow.attribution import METHODS, AttributionMethod, make_method
from xaiflow.config import AttributionConfig, RunConfig
from xaiflow.device import resolve_device
from xaiflow.errors import XaiflowError
from xaiflow.jobs import Chunk, ChunkJob, pending_chunks, run_job
from xaiflow.locks import group_lock
from xaiflow.models.catalog import ModelCatalog, ModelEntry
from xaiflow.predict import current_predictions
from xaiflow.preprocess import to_input
from xaiflow.runtime import ProgressFn, worker_compute
from xaiflow.saliency import (ATTR_METHOD, ATTR_PARAMS, ATTR_STORAGE, DONE, MAPS, NONFINITE, SCALE, TARGET,
                              StoredSaliency, decode_maps, encode_maps, saliency_group, storage_of)

log = logging.getLogger("xaiflow")


class AttributionError(XaiflowError):
    """Attribution cannot run as configured; the message names the method, parameter or value."""


@dataclass(frozen=True)
class MethodRun:
    key: str
    name: str
    params: dict[str, Any]  # as configured: the method's identity (batching excluded)


@dataclass
class AttributionResult:
    group: str
    chunks_total: int
    chunks_skipped: int
    chunks_run: int
    maps_computed: dict[str, int] = field(default_factory=dict)
    nonfinite: dict[str, int] = field(default_factory=dict)
    seconds: dict[str, float] = field(default_factory=dict)


# ------------------------------------------------------------------ planning (client)

def _batched_method(run: MethodRun, model: torch.nn.Module, batch: int,
                    evals: int) -> tuple[AttributionMethod, dict[str, int]]:
    """The method of ``run`` with the batching the method chooses for ``evals`` evaluations per pass
    (unless the config sets its batching parameter itself)."""
    cls = METHODS.get(run.name)
    batching = {} if cls.batch_param in run.params else cls.batching(batch, evals)
    return make_method(run.name, model, **run.params, **batching), batching


def _evals_per_pass(budget_mb: int, per_eval: int, cap: int) -> int:
    return int(max(1, min(cap, budget_mb * 2**20 // per_eval)))


def check_memory(method: AttributionMethod, key: str, batch: int, image_shape: tuple[int, ...], per_eval: int,
                 chunk_bytes: int, limit_bytes: int, limit_name: str) -> int:
    """The estimated peak bytes of one chunk task for ``method`` (its call on ``batch`` images plus the
    chunk's maps), refused with an error naming the method, its memory parameter, the estimate and
    the limit when it exceeds ``limit_bytes``: a config value cannot take a worker, or the host, down."""
    need = method.peak_bytes(batch, image_shape, per_eval) + chunk_bytes
    if need > limit_bytes:
        param = method.memory_param
        driver = f", driven by {param}={getattr(method.params, param)}" if param else ""
        raise AttributionError(
            f"methods[{key}] ({method.name}): one chunk task would need about {need / 2**20:,.0f} MiB "
            f"({batch} image(s) of {tuple(image_shape)} per call{driver}), more than {limit_name} "
            f"({limit_bytes / 2**20:,.0f} MiB); lower {param or 'batch_size'} or give the workers more memory")
    return need


def _planned_targets(workspace: str, target: str, predictions: str | None, images: Any) -> np.ndarray | None:
    """Every sample's class to explain when the store already knows it (so chunk tasks carry it)."""
    if target == "label":
        return np.asarray(images[schema.LABEL_INDEX].values, np.int64)
    if predictions:
        return np.asarray(zarr.open_group(store.location(workspace), path=predictions, mode="r", zarr_format=3)["predicted"][:], np.int64)
    return None


def _check_methods(cfg: AttributionConfig, entry: ModelEntry, images: Any, n_classes: int) -> int:
    """Every method builds with its parameters (errors name the method key), and one chunk task of
    each fits the per-worker memory budget (estimated on the CPU, before anything is written).
    Returns the model evaluations per image of all methods together."""
    model, cpu = entry.load(), torch.device("cpu")
    n, h, w = images[schema.IMAGE].shape
    chunk = images[schema.IMAGE].data.chunksize[0]
    shape = (model.in_channels, h, w)
    per_eval = evaluation_bytes(model, entry.sha256, shape, cpu)
    batch = cfg.batch_size or default_batch_size(cpu)
    evals = _evals_per_pass(cfg.memory_budget_mb, per_eval, cfg.max_evals_per_pass.get("cpu", 8))
    chunk_bytes = 2 * chunk * (n_classes if cfg.target == "all" else 1) * h * w * 4
    evaluations = 0
    for spec in cfg.methods:
        try:
            method, _ = _batched_method(MethodRun(spec.key, spec.name, dict(spec.params)), model, batch, evals)
        except (KeyError, ValueError) as e:
            raise AttributionError(f"methods[{spec.key}]: {e}") from None
        check_memory(method, spec.key, batch, shape, per_eval, chunk_bytes, cfg.memory_budget_mb * 2**20,
                     "attribution.memory_budget_mb per worker")
        evaluations += method.cost(shape).evaluations * (n_classes if cfg.target == "all" else 1)
    return evaluations


def _new_unit(cfg: AttributionConfig, images: Any, n_classes: int, evaluations: int) -> int:
    """Samples one chunk task writes in a new saliency group: image chunks in shards chosen from the
    maps' size and the methods' cost (a stored group keeps its own, :meth:`StoredSaliency.unit`)."""
    n, h, w = images[schema.IMAGE].shape
    chunk = images[schema.IMAGE].data.chunksize[0]
    map_bytes = h * w * np.dtype(cfg.storage).itemsize * (n_classes if cfg.target == "all" else 1)
    return chunk * layout.chunks_per_shard(cfg.shard_chunks, n, chunk, map_bytes, evaluations)


def _identity(attrs: dict[str, Any]) -> dict[str, Any]:
    """A stored key's identity (an older group's map attrs hold more, and no storage before float16 existed)."""
    return {ATTR_METHOD: attrs[ATTR_METHOD], ATTR_PARAMS: attrs[ATTR_PARAMS], ATTR_STORAGE: storage_of(attrs)}


def _replaced(stored: StoredSaliency, attrs: dict[str, Any], identities: dict[str, dict[str, Any]],
              selected: np.ndarray, overwrite: bool) -> bool:
    """Whether the stored group must be rewritten for this run: it was computed for another checkpoint,
    target mode or storage, or it is in the older layout and this run has maps to compute there
    (see :mod:`xaiflow.saliency`). Refused, with a message naming ``--overwrite``, unless ``overwrite``."""
    old = store.group_attrs(stored.workspace, stored.group)
    changed = {k: (old.get(k), v) for k, v in attrs.items() if old.get(k) != v and (stored.tidy or k != ATTR_STORAGE)}
    if changed:
        if overwrite:
            return True
        hint = (f" (one storage for every map of a group: set attribution.storage: {old[ATTR_STORAGE]} to add "
                "methods to it)" if ATTR_STORAGE in changed else "")
        before = ", ".join(f"{k}={a!r}" for k, (a, _) in changed.items())
        now = ", ".join(f"{k}={b!r}" for k, (_, b) in changed.items())
        raise AttributionError(f"{stored.group} was computed with {before}; this run has {now}. "
                               f"Pass --overwrite to recompute every map{hint}")
    if stored.tidy:
        return False
    todo = [k for k, identity in identities.items() if k not in stored.methods
            or _identity(stored.methods[k]) != identity or not stored.done(k)[selected].all()]
    if todo and not overwrite:
        raise AttributionError(
            f"{stored.group} is stored in the layout of an older xaiflow (one variable per method: "
            f"{', '.join(stored.methods)}), to which maps of {', '.join(todo)} cannot be added. Pass --overwrite to "
            "rewrite the group in the current layout with this run's methods (maps of methods not in this run are "
            "deleted: list them in --methods to keep them)")
    return bool(todo)


def _extend(workspace: str, stored: StoredSaliency, identities: dict[str, dict[str, Any]], overwrite: bool) -> None:
    """Add this run's new keys to a group of the current layout, and with ``overwrite`` reset the keys
    stored with another identity (their slice and flags only); else refuse those."""
    changed = {}
    for key, identity in identities.items():
        if key in stored.methods and _identity(stored.methods[key]) != identity:
            if not overwrite:
                name = identity[ATTR_METHOD]
                raise AttributionError(
                    f"{stored.group}: {key!r} is stored with {_identity(stored.methods[key])}, this run asks for "
                    f"{identity}. Use another key (methods: [{{name: {name}, key: {name}_v2, params: ...}}]) "
                    "or --overwrite")
            changed[key] = identity
    new = {k: v for k, v in identities.items() if k not in stored.methods}
    orphans = [k for k in new if k in stored.axis]  # columns of an interrupted growth, without an identity
    saliency.reset(workspace, stored.group, [*changed, *orphans])
    saliency.grow(workspace, stored.group, list(new))
    if changed or new:
        saliency.set_identities(workspace, stored.group, {**changed, **new})


def prepare(workspace: str | os.PathLike[str], cfg: AttributionConfig, run: RunConfig | None = None,
            overwrite: bool = False) -> AttributionJob:
    """Validate, create/extend the saliency group; return the job with its pending chunks."""
    workspace = str(workspace)
    entry = ModelCatalog(workspace).resolve(cfg.model, run=run, dataset=cfg.dataset)
    model_id = entry.model_id
    images = store.open_group(workspace, schema.group_path(schema.IMAGES, cfg.dataset))
    classes = list(images.attrs[schema.ATTR_CLASSES])
    if entry.num_classes != len(classes):
        raise AttributionError(f"model {model_id} has {entry.num_classes} outputs but dataset "
                               f"{cfg.dataset!r} has {len(classes)} classes {classes}")
    evaluations = _check_methods(cfg, entry, images, len(classes))

    group = saliency_group(cfg.dataset, model_id)
    group_attrs = {"model_id": model_id, "checkpoint_sha256": entry.sha256, "target": cfg.target,
                   ATTR_STORAGE: cfg.storage}
    n = images.sizes[schema.SAMPLE]
    selected = (np.ones(n, bool) if cfg.splits is None
                else np.isin(store.strings(images[schema.SPLIT].values), cfg.splits))
    identities = {spec.key: json.loads(json.dumps({  # as stored in JSON attrs, to compare with them
        ATTR_METHOD: spec.name, ATTR_PARAMS: METHODS.get(spec.name).identity_of(spec.params),
        ATTR_STORAGE: cfg.storage})) for spec in cfg.methods}
    stored = StoredSaliency.open(workspace, group)
    if stored is not None and _replaced(stored, group_attrs, identities, selected, overwrite):
        store.delete_group(workspace, group)
        stored = None
    if stored is None:
        unit = _new_unit(cfg, images, len(classes), evaluations)
        saliency.create_group(workspace, group, images, classes, {**group_attrs, schema.ATTR_CLASSES: classes,
                                                                  schema.ATTR_SCHEMA_VERSION: schema.SCHEMA_VERSION},
                              identities, cfg.target == "all", cfg.storage, unit)
    else:
        unit = stored.unit()
        if stored.tidy:
            _extend(workspace, stored, identities, overwrite)
    # complete again only once every chunk task of this run is done; set_attrs also consolidates the
    # workspace's metadata after the changes above (chunk tasks and plain xarray read the new shapes)
    store.set_attrs(workspace, group, **{schema.ATTR_STATUS: schema.STATUS_INCOMPLETE})
    stored = StoredSaliency.open(workspace, group)
    assert stored is not None

    chunk = unit  # a task writes whole shards (xaiflow.layout)
    flags = {m.key: stored.done(m.key) for m in cfg.methods}
    done = np.logical_and.reduce(list(flags.values()))
    predictions = current_predictions(workspace, entry, cfg.dataset) if cfg.target == "predicted" else None
    known = _planned_targets(workspace, cfg.target, predictions, images)

    def payload(start: int, stop: int) -> Selection:
        chosen = np.flatnonzero(selected[start:stop]) + start
        return Selection(tuple(chosen.tolist()), None if known is None else tuple(known[chosen].tolist()))

    chunks = pending_chunks(selected & ~done, chunk, payload)
    n_selected_chunks = len(pending_chunks(selected, chunk))
    return AttributionJob(
        workspace=workspace, dataset=cfg.dataset, model=entry, n_classes=len(classes), target=cfg.target,
        methods=tuple(MethodRun(m.key, m.name, dict(m.params)) for m in cfg.methods), storage=cfg.storage,
        device=cfg.device, batch_size=cfg.batch_size, memory_budget_mb=cfg.memory_budget_mb,
        max_evals_per_pass=dict(cfg.max_evals_per_pass), gpu=cfg.gpu, predictions=predictions,
        splits=tuple(cfg.splits) if cfg.splits is not None else None,
        columns={m.key: stored.axis.index(m.key) for m in cfg.methods} if stored.tidy else {},
        done_before={k: int((v & selected).sum()) for k, v in flags.items()}, chunks=chunks, n_chunks=n_selected_chunks)


# ------------------------------------------------------------------ batching

def evaluation_bytes(model: torch.nn.Module, sha: str, shape: tuple[int, ...], device: torch.device) -> int:
    """Memory of one model evaluation with gradients: activations, their gradients, headroom (x3).

    Measured once per (checkpoint, input shape, device) and process (a bounded cache: a worker
    sees few models and shapes)."""
    return _evaluation_bytes(model, sha, shape, str(device))


@lru_cache(maxsize=64)
def _evaluation_bytes(model: torch.nn.Module, sha: str, shape: tuple[int, ...], device: str) -> int:
    total = 0

    def hook(_module: torch.nn.Module, _inp: Any, out: Any) -> None:
        nonlocal total
        if isinstance(out, torch.Tensor):
            total += out.numel() * out.element_size()

    leaves = [m for m in model.modules() if not any(True for _ in m.children())]
    handles = [m.register_forward_hook(hook) for m in leaves]
    try:
        with torch.no_grad():
            model(torch.zeros((1, *shape), device=device))
    finally:
        for h in handles:
            h.remove()
    return 3 * max(total, 1)


def default_batch_size(device: torch.device) -> int:
    return 32 if device.type == "cuda" else 4


# ------------------------------------------------------------------ the job

@dataclass(frozen=True)
class Selection:
    """What the plan knows of one chunk: the samples (absolute indices) this run explains in it, and
    the class to explain for each when known at planning (labels, stored predictions; else None:
    the worker predicts it)."""

    samples: tuple[int, ...]
    targets: tuple[int, ...] | None = None


@dataclass(frozen=True)
class AttributionJob(ChunkJob):
    """Maps of every method for the selected samples of every pending image chunk (``n_chunks``:
    the chunks holding a selected sample)."""

    stage = "attribute"
    dataset: str
    model: ModelEntry
    n_classes: int
    target: str
    methods: tuple[MethodRun, ...]
    storage: str  # float32, or float16 maps with a per-map scale (xaiflow.saliency)
    device: str
    batch_size: int | None
    memory_budget_mb: int
    max_evals_per_pass: dict[str, int]
    gpu: bool
    #: ``predictions/<dataset>/<model_id>`` when it holds this checkpoint's predictions of these
    #: images: ``target: predicted`` then reads the stored class instead of a forward pass
    predictions: str | None
    splits: tuple[str, ...] | None  # the samples explained (None: all)
    columns: dict[str, int]  # method key -> its column on the group's xai_method axis
    done_before: dict[str, int]  # method key -> selected samples whose map was stored at planning

    @property
    def group(self) -> str:
        return saliency_group(self.dataset, self.model.model_id)

    @property
    def resources(self) -> dict[str, float] | None:
        return {"GPU": 1} if self.gpu else None

    def run_chunk(self, chunk: Chunk) -> dict[str, Any]:
        """Explain one chunk for every method and write its region and flags."""
        with worker_compute() as worker:
            return self._compute(chunk, chunk.payload, worker)

    def _targets(self, chosen: Selection, model: torch.nn.Module, pixels: np.ndarray, local: np.ndarray,
                 batch: int, device: torch.device) -> np.ndarray:
        """The class each selected sample's maps explain, once per chunk for every method: planned
        (labels, this checkpoint's stored predictions), else predicted here."""
        targets = np.full(len(pixels), -1, np.int64)
        if chosen.targets is not None:
            targets[local] = chosen.targets
        elif self.target == "predicted":
            with torch.no_grad():
                for b in range(0, len(local), batch):
                    idx = local[b:b + batch]
                    targets[idx] = model(to_input(pixels[idx]).to(device)).argmax(1).cpu().numpy()
        return targets

    def _compute(self, chunk: Chunk, chosen: Selection, worker: Any) -> dict[str, Any]:
        device = resolve_device(self.device)
        model = self.model.cached(device)
        s0, s1 = chunk.start, chunk.stop
        region = slice(s0, s1)
        local = np.array(chosen.samples) - s0
        # every array this chunk touches, opened and read together (see xaiflow.regions)
        image_path = f"{schema.group_path(schema.IMAGES, self.dataset)}/{schema.IMAGE}"
        names = (MAPS, TARGET, NONFINITE, *((SCALE,) if self.storage == "float16" else ()))  # a method's data arrays
        paths = {name: f"{self.group}/{name}" for name in (*names, DONE)}
        arrays = regions.open_arrays(self.workspace, [image_path, *paths.values()])
        pixels, done_flags = regions.read([arrays[image_path], arrays[paths[DONE]]], region)
        batch = self.batch_size or default_batch_size(device)
        shape = (model.in_channels, *pixels.shape[1:])
        per_eval = evaluation_bytes(model, self.model.sha256, shape, device)
        cap = self.max_evals_per_pass.get(device.type, self.max_evals_per_pass.get("cpu", 8))
        evals = _evals_per_pass(self.memory_budget_mb, per_eval, cap)
        worker_limit = getattr(getattr(worker, "memory_manager", None), "memory_limit", None)
        limit, limit_name = ((worker_limit, "this worker's memory limit") if worker_limit
                             else (self.memory_budget_mb * 2**20, "attribution.memory_budget_mb"))
        chunk_bytes = 2 * (s1 - s0) * (self.n_classes if self.target == "all" else 1) * pixels[0].size * 4
        chunk_targets = self._targets(chosen, model, pixels, local, batch, device)
        result: dict[str, Any] = {"index": chunk.index, "computed": {}, "nonfinite": {}, "seconds": {},
                                  "batching": {}, "worker": worker.address if worker is not None else None}

        data_arrays = [arrays[paths[name]] for name in names]
        for m in self.methods:
            cell = (region, self.columns[m.key])  # this chunk of the method's column: its own Zarr chunks
            done = done_flags[:, self.columns[m.key]].astype(bool)
            todo = local[~done[local]]
            if not len(todo):
                continue
            tick = time.perf_counter()
            method, batching = _batched_method(m, model, batch, evals)
            check_memory(method, m.key, batch, shape, per_eval, chunk_bytes, limit, limit_name)
            if done.any():  # keep the maps of samples done earlier
                stored_maps, targets, nonfinite, *scale = regions.read(data_arrays, cell)
                maps = decode_maps(stored_maps, scale[0] if scale else None)
                nonfinite = nonfinite.astype(bool)
            else:  # a fresh chunk: nothing stored to keep, start from the arrays' fill values
                maps = np.full((s1 - s0, *arrays[paths[MAPS]].shape[2:]), np.nan, np.float32)
                targets = np.full(s1 - s0, -1, np.int16)
                nonfinite = np.zeros(s1 - s0, bool)
            for b in range(0, len(todo), batch):
                idx = todo[b:b + batch]
                x = to_input(pixels[idx]).to(device)
                if self.target == "all":
                    for k in range(self.n_classes):
                        maps[idx, k] = method.attribute(x, torch.full((len(idx),), k, device=device)).cpu().numpy()
                    bad = ~np.isfinite(maps[idx]).all(axis=(1, 2, 3))
                else:
                    t = chunk_targets[idx]
                    maps[idx] = method.attribute(x, torch.from_numpy(t).to(device)).cpu().numpy()
                    targets[idx] = t
                    bad = ~np.isfinite(maps[idx]).all(axis=(1, 2))
                nonfinite[idx] = bad
            if self.storage == "float16":
                scaled, scale = encode_maps(maps)
                regions.write(data_arrays, cell, [scaled, targets, nonfinite, scale])
            else:
                regions.write(data_arrays, cell, [maps, targets, nonfinite])
            done[todo] = True
            regions.write([arrays[paths[DONE]]], cell, [done])  # last: a map is done only once it is stored
            result["computed"][m.key] = int(len(todo))
            result["nonfinite"][m.key] = int(nonfinite[todo].sum())
            result["seconds"][m.key] = time.perf_counter() - tick
            result["batching"][m.key] = {**batching, "images_per_call": batch, "device": str(device)}
        return result

    def _stored(self) -> dict[str, int]:
        """Method key -> selected samples whose map is stored now (read from the done flags)."""
        images = store.open_group(self.workspace, schema.group_path(schema.IMAGES, self.dataset))
        selected = (np.ones(images.sizes[schema.SAMPLE], bool) if self.splits is None
                    else np.isin(store.strings(images[schema.SPLIT].values), self.splits))
        stored = StoredSaliency.open(self.workspace, self.group)
        assert stored is not None
        return {m.key: int((stored.done(m.key) & selected).sum()) for m in self.methods} | {"": int(selected.sum())}

    def finalize(self, results: list[dict[str, Any]]) -> AttributionResult:
        """Verify every selected map is stored (else the group stays incomplete and the error says how
        many are missing), record provenance, mark the group complete, and sum up: maps computed are
        counted from the flags, so maps a killed worker stored before dying count too."""
        stored = self._stored()
        wanted = stored.pop("")
        missing = {k: wanted - n for k, n in stored.items() if n < wanted}
        if missing:
            raise AttributionError(f"{self.group}: maps missing after the run ({missing} of {wanted} per method key): "
                                   "a chunk task did not finish; run the same command again to compute them")
        out = AttributionResult(self.group, self.n_chunks, self.skipped, len(results),
                                maps_computed={k: n - self.done_before.get(k, 0) for k, n in stored.items()
                                               if n > self.done_before.get(k, 0)})
        batching: dict[str, Any] = {}
        for r in results:
            for k in r["computed"]:
                out.nonfinite[k] = out.nonfinite.get(k, 0) + r["nonfinite"][k]
                out.seconds[k] = out.seconds.get(k, 0.0) + r["seconds"][k]
                batching[k] = r["batching"][k]
        for k, n in out.nonfinite.items():
            if n:
                log.warning("%s: %d map(s) of %s contain NaN/inf; flagged in %s.sel(xai_method=%r)", self.group, n,
                            k, NONFINITE, k)
        provenance = {
            "xaiflow_version": xaiflow.__version__, "torch_version": torch.__version__,
            "captum_version": version("captum"), "checkpoint_sha256": self.model.sha256,
            "updated": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"), "batching": batching,
        }
        store.set_attrs(self.workspace, self.group, **{schema.ATTR_PROVENANCE: provenance,
                                                       schema.ATTR_STATUS: schema.STATUS_COMPLETE})
        return out


# ------------------------------------------------------------------ whole run (client)

def run_attribution(workspace: str | os.PathLike[str], cfg: AttributionConfig, *, run: RunConfig | None = None,
                    overwrite: bool = False, client: Any = None, progress: ProgressFn | None = None,
                    runner: Callable[[ChunkJob], Any] | None = None) -> AttributionResult:
    """Compute every requested map that is not stored yet (one Dask task per image chunk)."""
    entry = ModelCatalog(workspace).resolve(cfg.model, run=run, dataset=cfg.dataset)
    cfg = cfg.model_copy(update={"model": entry.model_id})
    keys = ", ".join(m.key for m in cfg.methods)
    with group_lock(workspace, saliency_group(cfg.dataset, entry.model_id), f"attribution ({keys})"):
        job = prepare(workspace, cfg, run, overwrite)
        log.info("%s: %d chunk(s) to compute, %d already complete", job.group, len(job.chunks), job.skipped)
        return (runner or partial(run_job, client=client, progress=progress))(job)
