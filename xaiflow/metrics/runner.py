"""Metrics over a whole dataset: one Dask task per image chunk, values written beside the maps.

:func:`run_metrics` scores the stored maps of ``saliency/<dataset>/<model_id>`` (only
samples whose map is done) with the requested metrics and writes
``metrics/<dataset>/<model_id>``:

* ``value(sample, xai_method, metric)`` float32: every scalar output of every metric key
  (the ``metric`` coordinate, e.g. ``deletion``, ``deletion_random``, ``pointing_game``);
  NaN where not computed, or undefined (an empty mask; see each metric), and, per key needing
  masks, ``<key>_chance``: the share of the image in the key's region (the chance level of a
  localization number; NaN for samples without a mask, which are never scored);
* ``done(sample, xai_method, metric)`` bool: per-sample completion flags;
* one variable per curve output, ``<name>(sample, xai_method, <dim>)`` float32, e.g.
  ``deletion_curve(..., deletion_fraction)``, ``model_randomization_spearman(..., layer)``;
* coordinates: ``sample`` with the images' per-sample coordinates (label, split, group,
  ...), ``xai_method`` (saliency keys), ``metric``, and the curve dimensions;
* attrs: ``model_id``, ``checkpoint_sha256`` (of the maps' model), ``metrics`` (key ->
  metric name, parameters with defaults, mask classes: the identity), ``outputs`` (stored
  name -> key, description, ``higher_is_better``; for localization outputs also ``chance``, the
  stored name of their chance level, and ``mask_classes``, the region in words), ``methods``
  (saliency key -> method and parameters of the maps scored), ``status``, ``provenance``.

A chunked job (:class:`MetricsJob`, :mod:`xaiflow.jobs`). Every variable is chunked
``(chunk_size, all methods, all outputs)``, aligned with the image chunks: a task reads its
chunk, computes what is missing, and writes its chunk back (values first, ``done`` last), so
no two tasks touch one chunk, retries are safe and a killed run resumes. A re-run computes only what is not done. A metric key stored with
other parameters or mask classes or by an older version of the metric (its ``version``),
maps recomputed with other parameters, or maps of a retrained model are refused unless
``overwrite`` (which recomputes them). Image sizes a metric cannot score (ROAD's imputation
limit) are refused when the run is planned, before any task. New methods or
metric keys extend the group: it is small (no maps in it), so it is rewritten with the
union of coordinates, keeping every stored value.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import os
import time
from dataclasses import dataclass, field
from functools import partial
from typing import Any, Callable

import numpy as np
import torch
import xarray as xr
import zarr

import xaiflow
from xaiflow import schema, store
from xaiflow.attribution import make_method
from xaiflow.device import check_device_name, resolve_device
from xaiflow.errors import XaiflowError
from xaiflow.jobs import Chunk, ChunkJob, chunk_count, pending_chunks, run_job
from xaiflow.locks import group_lock
from xaiflow.maskspec import MaskSelection, MaskSpecError, parse_mask_selection
from xaiflow.metrics import METRICS, Metric, make_metric
from xaiflow.metrics.base import Output, stored_name
from xaiflow.models.base import MicrographModel
from xaiflow.models.catalog import ModelCatalog, ModelEntry
from xaiflow.plugins import PluginSpec, unique_keys
from xaiflow.preprocess import to_input
from xaiflow.runtime import ProgressFn, worker_compute
from xaiflow.saliency import (ATTR_METHOD, ATTR_PARAMS, ATTR_STORAGE, METHOD, StoredSaliency, group_template,
                              saliency_group, storage_of)

log = logging.getLogger("xaiflow")

VALUE = "value"
DONE = "done"
METRIC = "metric"


class MetricsError(XaiflowError):
    """Metrics cannot run as asked; the message names the metric, method, mask or group."""


def metrics_group(dataset: str, model_id: str) -> str:
    return schema.group_path(schema.METRICS, dataset, model_id)


@dataclass(frozen=True)
class MetricRun:
    """One metric key of a run: what to build on the worker and where its outputs go."""

    key: str
    name: str
    params: dict[str, Any]
    scalars: dict[str, str]  # output name -> stored name (a `metric` coordinate)
    curves: dict[str, str]  # output name -> stored variable
    selection: MaskSelection | None = None  # the region's mask classes, per image label (metrics needing masks)
    chance: str | None = None  # stored name of the region's area share (the chance level), with a selection

    @property
    def stored_scalars(self) -> list[str]:
        """Every stored scalar of the key: the metric's outputs and, with a selection, the chance level."""
        return [*self.scalars.values(), *([self.chance] if self.chance else [])]


@dataclass
class MetricsResult:
    group: str
    chunks_total: int
    chunks_skipped: int
    chunks_run: int
    computed: dict[str, int] = field(default_factory=dict)  # metric key -> maps scored
    seconds: dict[str, float] = field(default_factory=dict)  # metric key -> compute time


# ------------------------------------------------------------------ planning (client)

#: what ``xaiflow evaluate`` and the evaluation flow compute when no metric is named: ROAD and
#: superpixel region perturbation (in-distribution removal; ``deletion``/``insertion`` to a
#: constant scored every method alike on the quick-start model, so they are opt-in), complexity
DEFAULT_METRICS = ("road", "region_perturbation", "sparseness", "entropy")
#: added to the defaults when the dataset has masks
MASK_METRICS = ("pointing_game", "relevance_mass_accuracy")


def default_metrics(workspace: str | os.PathLike[str], dataset: str) -> list[str]:
    """The metrics scored when none are named: faithfulness and complexity, plus localization
    against the masks when the dataset has them."""
    has_masks = store.group_exists(workspace, schema.group_path(schema.MASKS, dataset))
    return [*DEFAULT_METRICS, *(MASK_METRICS if has_masks else ())]


def _as_spec(spec: PluginSpec | str | dict[str, Any]) -> PluginSpec:
    return spec if isinstance(spec, PluginSpec) else PluginSpec.model_validate(spec)


#: a localization spec's parameter naming its mask selection (read by the runner, not passed to the metric)
MASK_CLASS_PARAM = "mask_class"
#: suffix of the stored chance level of a key that needs masks: ``<key>_chance``
CHANCE_SUFFIX = "_chance"


def _split_mask_class(spec: PluginSpec) -> tuple[PluginSpec, Any]:
    """(spec without ``mask_class``, its mask selection or None) for a metric that needs masks: the
    runner builds the region from the selection, the metric only sees the boolean region."""
    if MASK_CLASS_PARAM not in spec.params or spec.name not in METRICS or not METRICS.get(spec.name).needs_mask:
        return spec, None
    params = dict(spec.params)
    selection = params.pop(MASK_CLASS_PARAM)
    return spec.model_copy(update={"params": params}), selection


def _make_metrics(specs: list[PluginSpec]) -> dict[str, Metric]:
    if not specs:
        raise MetricsError(f"no metrics requested; valid: {', '.join(METRICS.names())}")
    try:
        unique_keys(specs, "metrics")
    except ValueError as e:
        raise MetricsError(str(e)) from None
    built = {}
    for spec in specs:
        try:
            built[spec.key] = make_metric(spec.name, **spec.params)
        except (KeyError, ValueError) as e:
            raise MetricsError(f"metrics[{spec.key}]: {e}") from None
    return built


def _mask_selections(workspace: str, dataset: str, images: xr.Dataset, run_level: Any,
                     per_key: dict[str, Any]) -> tuple[list[str], dict[str, MaskSelection]]:
    """The masks group's classes and, per metric key needing masks, its selection (the key's own
    ``mask_class``, else the run's ``mask_class``, else every class but the background), after
    checking the masks group."""
    group = schema.group_path(schema.MASKS, dataset)
    needing = list(per_key)
    if not store.group_exists(workspace, group):
        raise MetricsError(f"metric(s) {needing} need masks, but dataset {dataset!r} has none ({group} does not "
                           "exist); ingest it with masks (source.masks) or drop those metrics")
    masks = store.open_group(workspace, group, check_complete=False)
    try:
        schema.validate_masks(masks, images, group)
    except schema.SchemaError as e:
        raise MetricsError(f"metric(s) {needing}: {e}") from None
    classes = [str(c) for c in masks.attrs[schema.ATTR_MASK_CLASSES]]
    labels = [str(c) for c in images.attrs[schema.ATTR_CLASSES]]
    selections = {}
    for key, own in per_key.items():
        try:
            selections[key] = parse_mask_selection(run_level if own is None else own, classes, labels)
        except MaskSpecError as e:
            raise MetricsError(f"metrics[{key}] on {group}: {e}") from None
    return classes, selections


def _selection_identity(selection: MaskSelection) -> list[str] | dict[str, list[str]]:
    """The ``mask_classes`` entry of a key's identity: the class list when it is the same for every
    label (as stored before per-label selections existed), else label -> classes with ``*``."""
    if not selection.by_label:
        return list(selection.default)
    return {**{k: list(v) for k, v in sorted(selection.by_label.items())}, "*": list(selection.default)}


def _model(workspace: str, model_id: str, sha256: str) -> tuple[ModelEntry, MicrographModel]:
    entry = ModelCatalog(workspace).get(model_id)
    if entry.sha256 != sha256:
        raise MetricsError(f"model {model_id} changed since its maps were computed (checkpoint sha256 "
                           f"{entry.sha256[:12]}, maps of {sha256[:12]}); recompute the maps first")
    return entry, entry.load()


def _jsonable(value: Any) -> Any:
    return json.loads(json.dumps(value))


def _outputs(metrics: dict[str, Metric], model: MicrographModel | None) -> dict[str, dict[str, tuple[str, Output]]]:
    """Metric key -> output name -> (stored name, output) with curve dims renamed like the names."""
    result: dict[str, dict[str, tuple[str, Output]]] = {}
    for key, metric in metrics.items():
        result[key] = {}
        for name, out in metric.outputs(model if metric.needs_model else None).items():
            if out.dim is not None:
                out = Output(out.description, out.higher_is_better, stored_name(out.dim, metric.name, key), out.coords)
            result[key][name] = (stored_name(name, metric.name, key), out)
    return result


def _labels(names: Any) -> np.ndarray:
    """Names as an object array of Python str (what xarray writes as Zarr strings)."""
    return np.array([str(n) for n in names], dtype=object)


def _layout(workspace: str, group: str, images: xr.Dataset, attrs: dict[str, Any], methods: list[str],
            scalars: list[str], curves: dict[str, Output], old: xr.Dataset | None) -> None:
    """(Re)write the group with these coordinates, carrying every value of ``old`` that is still wanted."""
    n = images.sizes[schema.SAMPLE]
    chunk = images[schema.IMAGE].data.chunksize[0]
    base = group_template(images, list(images.attrs[schema.ATTR_CLASSES]), attrs).drop_vars("class")
    dims = (schema.SAMPLE, METHOD)
    coords: dict[str, Any] = {METHOD: _labels(methods), METRIC: _labels(scalars)}
    variables: dict[str, xr.DataArray] = {
        VALUE: xr.DataArray(np.full((n, len(methods), len(scalars)), np.nan, np.float32), dims=(*dims, METRIC)),
        DONE: xr.DataArray(np.zeros((n, len(methods), len(scalars)), bool), dims=(*dims, METRIC)),
    }
    for name, out in curves.items():
        coords[out.dim] = _labels(out.coords) if isinstance(out.coords[0], str) else np.array(out.coords, np.float64)
        variables[name] = xr.DataArray(np.full((n, len(methods), len(out.coords)), np.nan, np.float32),
                                       dims=(*dims, out.dim))
    ds = base.assign_coords(coords).assign(variables)
    if old is not None:
        old = old.assign_coords({k: store.strings(old[k].values) for k in (schema.SAMPLE, METHOD, METRIC)})
        for name in variables:
            if name in old.data_vars:
                fill = False if name == DONE else np.nan
                wanted = {d: ds[d].values for d in ds[name].dims}
                carried = old[name].reindex(wanted, fill_value=fill)
                ds[name] = ds[name].copy(data=carried.values.astype(ds[name].dtype))
    encoding = {v: {"chunks": (chunk, *ds[v].shape[1:])} for v in ds.data_vars}
    store.delete_group(workspace, group)
    store.write_group(workspace, group, ds, encoding=encoding)


def prepare(workspace: str | os.PathLike[str], dataset: str, model_id: str,
            metrics: list[PluginSpec | str | dict[str, Any]] | None = None, methods: list[str] | None = None,
            mask_class: Any = None, *, device: str = "auto", batch_size: int = 8,
            overwrite: bool = False) -> MetricsJob:
    """Validate, create or extend the metrics group; return the job with its pending chunks
    (``metrics``: default :func:`default_metrics`; ``mask_class``: see :func:`run_metrics`)."""
    workspace = str(workspace)
    check_device_name(device)
    metrics = default_metrics(workspace, dataset) if metrics is None else metrics
    images = store.open_group(workspace, schema.group_path(schema.IMAGES, dataset))
    sal = saliency_group(dataset, model_id)
    if not store.group_exists(workspace, sal):
        raise MetricsError(f"no saliency maps for dataset {dataset!r} and model {model_id!r} ({sal} does not exist); "
                           "run `xaiflow attribute` first")
    sal_attrs = store.group_attrs(workspace, sal)
    if sal_attrs.get("target") == "all":
        raise MetricsError(f"{sal} holds maps of every class (target='all'); metrics need one explained class per "
                           "sample: compute maps with target 'predicted' or 'label'")
    stored_maps = StoredSaliency.open(workspace, sal)
    computed = stored_maps.methods if stored_maps else {}
    keys = list(methods) if methods else sorted(computed)
    missing = [m for m in keys if m not in computed]
    if missing or not keys:
        raise MetricsError(f"method(s) {missing} not computed for {dataset}/{model_id}; computed: {sorted(computed)}")
    specs, own_selection = zip(*(_split_mask_class(_as_spec(s)) for s in metrics)) if metrics else ((), ())
    built = _make_metrics(list(specs))
    for key, metric in built.items():  # before any task: a size a metric refuses fails the run, not a chunk
        try:
            metric.check_image_size(images.sizes[schema.Y], images.sizes[schema.X])
        except XaiflowError as e:
            raise MetricsError(f"metrics[{key}]: {e}") from None
    per_key = {k: sel for k, sel in zip(built, own_selection) if built[k].needs_mask}
    mask_classes, selections = (_mask_selections(workspace, dataset, images, mask_class, per_key)
                                if per_key else (None, {}))
    sha = str(sal_attrs.get("checkpoint_sha256"))
    entry, model = (_model(workspace, model_id, sha) if any(m.needs_model for m in built.values())
                    else (None, None))
    outputs = _outputs(built, model)
    chance = {k: k + CHANCE_SUFFIX for k in selections}
    clash = sorted(set(chance.values()) & {name for outs in outputs.values() for name, _ in outs.values()})
    if clash:
        raise MetricsError(f"metric output(s) {clash} would be overwritten by the chance level of a localization "
                           "key (stored as <key>_chance); rename the metric key")

    identities = {k: _jsonable({**m.identity(),
                                **({"mask_classes": _selection_identity(selections[k])} if k in selections else {})})
                  for k, m in built.items()}
    method_ids = {k: _jsonable({"method": computed[k][ATTR_METHOD], "params": computed[k][ATTR_PARAMS],
                                # float16 maps score (slightly) differently; float32 keeps the older identity
                                **({ATTR_STORAGE: "float16"} if storage_of(computed[k]) == "float16" else {})})
                  for k in keys}
    group = metrics_group(dataset, model_id)
    old, stored = _reconcile(workspace, group, sha, identities, method_ids, overwrite)
    for key, outs in outputs.items():
        for name, out in outs.values():
            stored["outputs"][name] = {"key": key, "description": out.description,
                                       "higher_is_better": out.higher_is_better, "dim": out.dim}
            if key in selections and out.dim is None:  # a localization number names its region and chance level
                stored["outputs"][name].update(chance=chance[key], mask_classes=selections[key].describe())
        if key in selections:
            stored["outputs"][chance[key]] = {
                "key": key, "description": f"chance level of {key}: the share of the image in its region "
                                           f"({selections[key].describe()})",
                "higher_is_better": None, "dim": None, "chance_of": key,
                "mask_classes": selections[key].describe()}
    stored["metrics"].update(identities)
    stored["methods"].update(method_ids)
    old_methods = store.strings(old[METHOD].values).tolist() if old is not None else []
    all_methods = list(dict.fromkeys([*old_methods, *keys]))
    scalars = [n for n, o in stored["outputs"].items() if o["dim"] is None]
    curves = _curve_layout(stored["outputs"], outputs, old)
    attrs = {"model_id": model_id, "checkpoint_sha256": sha, schema.ATTR_SCHEMA_VERSION: schema.SCHEMA_VERSION,
             **stored, schema.ATTR_STATUS: schema.STATUS_INCOMPLETE}
    if (old is None or old_methods != all_methods or store.strings(old[METRIC].values).tolist() != scalars
            or set(curves) != set(old.data_vars) - {VALUE, DONE}):
        _layout(workspace, group, images, attrs, all_methods, scalars, curves, old)
    store.set_attrs(workspace, group, **attrs)

    runs = []
    for key, metric in built.items():
        outs = outputs[key]
        runs.append(MetricRun(key, metric.name, metric.params.model_dump(mode="json"),
                              scalars={n: s for n, (s, o) in outs.items() if o.dim is None},
                              curves={n: s for n, (s, o) in outs.items() if o.dim is not None},
                              selection=selections.get(key), chance=chance.get(key)))
    chunk = images[schema.IMAGE].data.chunksize[0]
    root = zarr.open_group(store.location(workspace), mode="r", zarr_format=3, use_consolidated=False)
    done = np.asarray(root[f"{group}/{DONE}"][:], bool)
    cols = [scalars.index(name) for run in runs for name in run.stored_scalars]
    pending = np.zeros(images.sizes[schema.SAMPLE], bool)
    for m in keys:  # samples with a finished map whose metrics of this run are not all done
        ready = stored_maps.done(m)
        pending |= ready & ~done[:, all_methods.index(m)][:, cols].all(axis=1)
    return MetricsJob(
        workspace=workspace, dataset=dataset, model_id=model_id, model=entry, methods=tuple(keys),
        method_specs={k: (computed[k][ATTR_METHOD], dict(computed[k][ATTR_PARAMS])) for k in keys},
        metrics=tuple(runs), stored_methods=tuple(all_methods), stored_outputs=tuple(scalars),
        mask_classes=tuple(mask_classes) if mask_classes else None, device=device, batch_size=batch_size,
        chunks=pending_chunks(pending, chunk), n_chunks=chunk_count(images.sizes[schema.SAMPLE], chunk))


def _reconcile(workspace: str, group: str, sha: str, identities: dict[str, Any], method_ids: dict[str, Any],
               overwrite: bool) -> tuple[xr.Dataset | None, dict[str, dict[str, Any]]]:
    """The stored group (without what must be recomputed) and its ``metrics``/``outputs``/``methods`` attrs.

    Refuses, unless ``overwrite``, a group computed for another checkpoint, a metric key
    stored with another identity, and metrics of maps recomputed with other parameters.
    """
    empty: dict[str, dict[str, Any]] = {"metrics": {}, "outputs": {}, "methods": {}}
    if not store.group_exists(workspace, group):
        return None, empty
    attrs = store.group_attrs(workspace, group)
    if attrs.get("checkpoint_sha256") != sha:
        if not overwrite:
            raise MetricsError(f"{group} was computed for maps of checkpoint "
                               f"{str(attrs.get('checkpoint_sha256'))[:12]}; "
                               f"the maps are now from {sha[:12]}. Pass overwrite to recompute every metric")
        store.delete_group(workspace, group)
        return None, empty
    stored = {k: dict(attrs.get(k, {})) for k in empty}
    drop_outputs: list[str] = []
    for key, identity in identities.items():
        if key in stored["metrics"] and stored["metrics"][key] != identity:
            if not overwrite:
                if _without_version(stored["metrics"][key]) == _without_version(identity):
                    raise MetricsError(f"{group}: {key!r} was computed by version "
                                       f"{stored['metrics'][key].get('version', 1)} of metric {identity['metric']!r}; "
                                       f"version {identity.get('version', 1)} computes other values. Pass overwrite "
                                       "to recompute it, or store it under another key")
                raise MetricsError(f"{group}: {key!r} is stored with {stored['metrics'][key]}, this run asks for "
                                   f"{identity}. Use another key or overwrite")
            drop_outputs += [name for name, o in stored["outputs"].items() if o["key"] == key]
    drop_methods = []
    for key, identity in method_ids.items():
        if key in stored["methods"] and stored["methods"][key] != identity:
            if not overwrite:
                raise MetricsError(f"{group}: metrics of {key!r} were computed on maps made with "
                                   f"{stored['methods'][key]}; the stored maps are now from {identity}. "
                                   "Pass overwrite to recompute them")
            drop_methods.append(key)
    stored["outputs"] = {k: v for k, v in stored["outputs"].items() if k not in drop_outputs}
    old = store.open_group(workspace, group, check_complete=False).load()
    old = old.drop_vars([v for v in drop_outputs if v in old.data_vars])
    old = old.sel({METRIC: ~np.isin(store.strings(old[METRIC].values), drop_outputs),
                   METHOD: ~np.isin(store.strings(old[METHOD].values), drop_methods)})
    return old, stored


def _without_version(identity: dict[str, Any]) -> dict[str, Any]:
    """A stored metric identity without its ``version`` (see :attr:`xaiflow.metrics.base.Metric.version`)."""
    return {k: v for k, v in identity.items() if k != "version"}


def _curve_layout(stored_outs: dict[str, Any], outputs: dict[str, dict[str, tuple[str, Output]]],
                  old: xr.Dataset | None) -> dict[str, Output]:
    """Every curve variable of the group (stored ones and this run's), with its dimension and coordinates."""
    curves = {name: out for outs in outputs.values() for name, out in outs.values() if out.dim is not None}
    for name, meta in stored_outs.items():
        if meta["dim"] is not None and name not in curves and old is not None and name in old.data_vars:
            values = old[meta["dim"]].values
            coords = tuple(store.strings(values)) if values.dtype.kind in "OTU" else tuple(values.tolist())
            curves[name] = Output(meta["description"], meta["higher_is_better"], meta["dim"], coords)
    dims: dict[str, tuple[Any, ...]] = {}
    for name, out in curves.items():
        if dims.setdefault(out.dim, out.coords) != out.coords:  # type: ignore[arg-type]
            raise MetricsError(f"curve dimension {out.dim!r} of {name!r} has coordinates {out.coords}, "
                               f"another curve has {dims[out.dim]}")  # type: ignore[index]
    return curves


# ------------------------------------------------------------------ the job

@dataclass(frozen=True)
class MetricsJob(ChunkJob):
    """Every requested metric of every finished map of the pending image chunks."""

    stage = "metrics"
    dataset: str
    model_id: str
    model: ModelEntry | None  # only when a metric needs the model
    methods: tuple[str, ...]  # saliency keys scored by this run
    method_specs: dict[str, tuple[str, dict[str, Any]]]  # saliency key -> (method name, params)
    metrics: tuple[MetricRun, ...]
    stored_methods: tuple[str, ...]  # the group's xai_method coordinate
    stored_outputs: tuple[str, ...]  # the group's metric coordinate
    mask_classes: tuple[str, ...] | None  # the masks group's classes, when a metric needs masks
    device: str
    batch_size: int

    @property
    def group(self) -> str:
        return metrics_group(self.dataset, self.model_id)

    @property
    def saliency(self) -> str:
        return saliency_group(self.dataset, self.model_id)

    def run_chunk(self, chunk: Chunk) -> dict[str, Any]:
        """Score every finished map of one chunk that lacks a metric of the job; write the chunk back."""
        with worker_compute() as worker:
            return self._compute(chunk, worker)

    def _compute(self, chunk: Chunk, worker: Any = None) -> dict[str, Any]:
        device = resolve_device(self.device)
        model = self.model.cached(device) if self.model is not None else None
        root = zarr.open_group(store.location(self.workspace), mode="r+", zarr_format=3, use_consolidated=False)
        images = schema.group_path(schema.IMAGES, self.dataset)
        s0, s1 = chunk.start, chunk.stop
        pixels = np.asarray(root[f"{images}/{schema.IMAGE}"][s0:s1])
        regions = self._regions(root, s0, s1)
        group, sal = root[self.group], StoredSaliency.open(self.workspace, self.saliency)
        value, done = np.asarray(group[VALUE][s0:s1]), np.asarray(group[DONE][s0:s1], bool)
        curves = {v: np.asarray(group[v][s0:s1]) for run in self.metrics for v in run.curves.values()}
        result: dict[str, Any] = {"index": chunk.index, "computed": {}, "seconds": {}}

        for m in self.methods:
            mi = self.stored_methods.index(m)
            maps, targets, ready, nonfinite = sal.read(m, s0, s1)  # maps decoded to float32, either layout
            nonfinite &= ready
            method = None
            for run in self.metrics:
                cols = [self.stored_outputs.index(s) for s in run.stored_scalars]
                todo = np.flatnonzero(ready & ~done[:, mi][:, cols].all(axis=1))
                if not len(todo):
                    continue
                tick = time.perf_counter()
                metric = make_metric(run.name, **run.params)
                if metric.needs_method and method is None:
                    name, params = self.method_specs[m]
                    method = make_method(name, model, **params)  # type: ignore[arg-type]
                    _check_method_memory(method, m, min(self.batch_size, len(pixels)), pixels, model,
                                         self.model.sha256, device, worker)
                scored = todo[~nonfinite[todo]]  # maps with NaN/inf stay NaN here (flagged in the saliency group)
                region = regions.get(run.key)
                if region is not None:  # no region (no mask, or no class selected for the label): NaN, not 0
                    share = region.reshape(len(region), -1).mean(axis=1)
                    value[todo, mi, self.stored_outputs.index(run.chance)] = np.where(share > 0, share, np.nan)[todo]
                    scored = scored[share[scored] > 0]
                for b in range(0, len(scored), self.batch_size):
                    idx = scored[b:b + self.batch_size]
                    out = metric.compute(
                        maps[idx], to_input(pixels[idx]).to(device) if metric.needs_model else None, targets[idx],
                        index=idx + s0, model=model if metric.needs_model else None,
                        masks=region[idx] if region is not None else None,
                        method=method if metric.needs_method else None)
                    for name, stored in run.scalars.items():
                        value[idx, mi, self.stored_outputs.index(stored)] = out[name]
                    for name, stored in run.curves.items():
                        curves[stored][idx, mi] = out[name]
                done[np.ix_(todo, [mi], cols)] = True
                result["computed"][run.key] = result["computed"].get(run.key, 0) + int(len(scored))
                result["seconds"][run.key] = result["seconds"].get(run.key, 0.0) + time.perf_counter() - tick
            for name, data in curves.items():
                group[name][s0:s1] = data
            group[VALUE][s0:s1] = value
            group[DONE][s0:s1] = done  # last: a value is done only once it is stored
        return result

    def _regions(self, root: zarr.Group, s0: int, s1: int) -> dict[str, np.ndarray]:
        """Metric key -> (n, y, x) bool region of samples ``s0:s1``, for the keys with a mask selection:
        the selected classes of each image's label; empty where the image has no mask (``has_mask``)."""
        if self.mask_classes is None:
            return {}
        masks = root[schema.group_path(schema.MASKS, self.dataset)]
        pixels = np.asarray(masks[schema.MASK][s0:s1])
        flags = np.asarray(masks[schema.HAS_MASK][s0:s1], bool) if schema.HAS_MASK in masks else None
        labels = store.strings(np.asarray(root[schema.group_path(schema.IMAGES, self.dataset)][schema.LABEL][s0:s1]))
        return {run.key: run.selection.regions(pixels, labels, list(self.mask_classes), flags)
                for run in self.metrics if run.selection is not None}

    def finalize(self, results: list[dict[str, Any]]) -> MetricsResult:
        """Record provenance, mark the group complete, and sum up."""
        out = MetricsResult(self.group, self.n_chunks, self.skipped, len(results))
        for r in results:
            for k, v in r["computed"].items():
                out.computed[k] = out.computed.get(k, 0) + v
                out.seconds[k] = out.seconds.get(k, 0.0) + r["seconds"][k]
        provenance = {"xaiflow_version": xaiflow.__version__, "torch_version": torch.__version__,
                      "updated": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")}
        store.set_attrs(self.workspace, self.group, **{schema.ATTR_PROVENANCE: provenance,
                                                       schema.ATTR_STATUS: schema.STATUS_COMPLETE})
        return out


# ------------------------------------------------------------------ whole run (client)

def _check_method_memory(method: Any, key: str, batch: int, pixels: np.ndarray, model: MicrographModel, sha: str,
                         device: torch.device, worker: Any) -> None:
    """A metric that runs the attribution method again (model randomization) holds what one
    attribution call on ``batch`` images holds: refused, as an attribution chunk task would be,
    when that estimate exceeds the worker's memory limit."""
    from xaiflow.attribution.engine import check_memory, evaluation_bytes

    limit = getattr(getattr(worker, "memory_manager", None), "memory_limit", None)
    if not limit:
        return
    shape = (model.in_channels, *pixels.shape[1:])
    check_memory(method, key, batch, shape, evaluation_bytes(model, sha, shape, device), 8 * pixels.size, limit,
                 "this worker's memory limit")


def run_metrics(workspace: str | os.PathLike[str], dataset: str, model_id: str,
                metrics: list[PluginSpec | str | dict[str, Any]] | None = None, methods: list[str] | None = None,
                mask_class: Any = None, *, device: str = "auto", batch_size: int = 8,
                overwrite: bool = False, client: Any = None, progress: ProgressFn | None = None,
                runner: Callable[[ChunkJob], Any] | None = None) -> MetricsResult:
    """Score every finished map of ``saliency/<dataset>/<model_id>`` that lacks a requested metric.

    ``metrics``: names, ``{name, key, params}`` mappings or :class:`~xaiflow.plugins.PluginSpec`
    (default: :func:`default_metrics`); ``methods``: saliency keys (default: every stored one);
    ``mask_class``: which mask classes form the region the localization metrics evaluate against,
    any form of :func:`xaiflow.maskspec.parse_mask_selection` (a class, a union, or per image label:
    ``{network: carbide_network, "*": particles}``; default: every class but the first, the
    background); a metric spec's own ``params: {mask_class: ...}`` overrides it for that key, so
    several keys score against different regions in one run. Each such key also stores
    ``<key>_chance``, its region's share of the image (the chance level); samples without a
    mask, or without a selected class, are NaN. ``batch_size``: maps per metric call. One Dask
    task per image chunk (see the module docstring for the layout and resume rules).
    """
    with group_lock(workspace, metrics_group(dataset, model_id), "metrics"):
        job = prepare(workspace, dataset, model_id, metrics, methods, mask_class, device=device,
                      batch_size=batch_size, overwrite=overwrite)
        log.info("%s: %d chunk(s) to compute, %d complete or without maps", job.group, len(job.chunks), job.skipped)
        return (runner or partial(run_job, client=client, progress=progress))(job)
