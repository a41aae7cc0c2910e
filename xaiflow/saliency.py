"""The ``saliency/<dataset>/<model_id>`` group: one tidy array of maps, its companions, and the readers.

Plain ``xr.open_zarr(ws, group="saliency/<dataset>/<model_id>")`` shows the group as it is stored:

* ``saliency``   (sample, xai_method, y, x) raw maps, NaN where not computed yet. With
                 ``target: all``: (sample, xai_method, class, y, x). Chunks of (S, 1, y, x) (with
                 classes (S, 1, 1, y, x)), S the images' chunk size: every (image chunk, method) is a
                 chunk of its own, so chunk tasks write independent regions; large groups put
                 several image chunks into one shard file along samples (:mod:`xaiflow.layout`).
* ``target``     (sample, xai_method) int16, the class each map explains (-1: not computed, or
                 ``target: all``, where ``class`` says it).
* ``done``       (sample, xai_method) bool, completion flags: a re-run computes only what is
                 missing, and a killed run resumes.
* ``nonfinite``  (sample, xai_method) bool, maps that contained NaN/inf (stored, but flagged).
* ``scale``      only with ``storage: float16``: (sample, xai_method[, class]) float32, the largest
                 absolute value of each map; ``saliency`` then holds float16 maps divided by it
                 (half the bytes; ``ds.saliency * ds.scale`` gives the maps). Raw float16 casts
                 would turn most gradient values into slow, imprecise float16 subnormals; scaled
                 maps lie in [-1, 1] and keep float16's relative precision (2**-11 of each value
                 above 6e-5 of the peak).
* coordinate ``xai_method``: the method keys, in the order they were added; the flags, targets
  and scales are chunked (U, 1[, class]), U the samples one chunk task writes (a shard).

Group attrs hold the model id, the checkpoint sha256, the target mode, the ``storage`` (float32
or float16), provenance (library versions, the batching chosen per key). ``saliency.attrs["methods"]``
maps each key to its identity: method name, parameters and storage; a re-run of a key with other
parameters is refused, and ``--overwrite`` then resets that key's slice and flags only.

Decisions, and why:

* Methods are added over time: a run with new keys grows the ``xai_method`` axis in the planning
  process, under the group's lock (:mod:`xaiflow.locks`), before any chunk task runs: the
  coordinate first, then every array (a Zarr resize: nothing stored is rewritten, new cells read
  as fill values), then the identities. Planning repairs an interrupted growth (arrays shorter
  than the coordinate are grown; keys without an identity are reset and taken as new).
* Storage is a property of the group: one array has one dtype, and a second array per dtype
  would bring the loose variables back. A run asking for the other storage is refused;
  ``--overwrite`` recomputes the group (every map) in the asked storage.
* Groups written before this layout (one variable per key: ``<key>``, ``<key>__target``,
  ``<key>__done``, ``<key>__nonfinite``, ``<key>__scale``, the identity in each map's attrs)
  keep opening: :class:`StoredSaliency` reads both layouts, and every reader (queries, metrics,
  reports) goes through it. Attribution on such a group runs only when it has nothing to
  compute; anything new is refused with a message naming ``--overwrite``, which rewrites the
  group in this layout with the run's methods. It is not converted in place: ``saliency``, the
  default key of the saliency method, is also the new array's name, and a conversion copies
  every map without a way to make it atomic on object storage; recomputing is what
  ``--overwrite`` already means.

:func:`open_saliency` gives the maps as one lazily loaded float32 ``saliency(sample, xai_method,
y, x)`` beside the images and their coordinates (float16 maps decoded), in either layout.
Raw maps are stored; normalize at query time.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any, NamedTuple

import dask.array as da
import numpy as np
import pandas as pd
import xarray as xr
import zarr
from zarr.codecs import BloscCodec

from xaiflow import layout, schema, store
from xaiflow.errors import XaiflowError

#: the method dimension; not "method", which would collide with ``.sel(method=...)``
#: (xarray's nearest-neighbour argument) and silently select nothing
METHOD = "xai_method"
CLASS = "class"
MAPS = "saliency"
TARGET = "target"
DONE = "done"
NONFINITE = "nonfinite"
SCALE = "scale"
#: every array of the group with a method axis (axis 1), and the value of a cell not computed yet
FILL: dict[str, Any] = {MAPS: np.nan, TARGET: -1, DONE: False, NONFINITE: False, SCALE: np.nan}
ATTR_METHODS = "methods"
ATTR_PARAMS = "params"
ATTR_METHOD = "method"
ATTR_STORAGE = "storage"
STORAGE_DTYPES = {"float32": np.float32, "float16": np.float16}
#: the older layout's variable of each array of a key: ``<key><suffix>``
_LEGACY_SUFFIX = {MAPS: "", TARGET: "__target", DONE: "__done", NONFINITE: "__nonfinite", SCALE: "__scale"}
_LONG_NAMES = {MAPS: "attribution map (raw relevance)", TARGET: "class index the map explains (-1: none)",
               DONE: "map computed", NONFINITE: "map contained NaN or inf",
               SCALE: "largest absolute value of the map (float16 maps are stored divided by it)"}


class SaliencyQueryError(XaiflowError):
    """The saliency group or a requested method/sample is missing."""


def saliency_group(dataset: str, model_id: str) -> str:
    return schema.group_path(schema.SALIENCY, dataset, model_id)


def storage_of(attrs: dict[str, Any]) -> str:
    """A key's storage dtype from its identity (maps stored before the option existed are float32)."""
    return str(attrs.get(ATTR_STORAGE, "float32"))


def encode_maps(maps: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """float32 maps (..., y, x) -> (float16 maps / scale, scale per map), scale = max |finite value|.

    All-zero and all-NaN maps get scale 1; NaN/inf values stay NaN/inf (their maps are flagged)."""
    finite = np.where(np.isfinite(maps), np.abs(maps), 0.0)
    scale = finite.max(axis=(-2, -1)).astype(np.float32)
    scale[~(scale > 0)] = 1.0
    with np.errstate(over="ignore", invalid="ignore"):
        return (maps / scale[..., None, None]).astype(np.float16), scale


def decode_maps(stored: np.ndarray, scale: np.ndarray | None) -> np.ndarray:
    """Stored maps as float32: float16 maps times their scale; float32 maps as they are."""
    if scale is None:
        return np.asarray(stored, np.float32)
    return stored.astype(np.float32) * np.asarray(scale, np.float32)[..., None, None]


def map_codec() -> BloscCodec:
    """Codec of stored maps: LZ4 without shuffle. Measured on UHCS maps (128 px, chunks of 16):
    gradient maps (saliency, IG, SmoothGrad, Grad-CAM) compress only 1.0-1.4x with any codec,
    so the codec should cost next to nothing: LZ4 without shuffle encodes a 1 MiB chunk in
    ~0.4 ms (with byte shuffle ~1.8 ms for 1.1-1.35x, zarr's default Zstd ~5 ms for 1.06-1.4x)
    and still shrinks piecewise-constant maps 10-45x (occlusion 45x, LIME 10x; shuffle made
    LIME's 4x). Map writes are on every chunk task's path, next to cheap methods' compute."""
    return BloscCodec(cname="lz4", clevel=5, shuffle="noshuffle", typesize=4)


# ------------------------------------------------------------------ writing (the planning process)

def group_template(images: xr.Dataset, classes: list[str], attrs: dict[str, Any]) -> xr.Dataset:
    """A group's coordinates (copied from the images) and ``attrs``, without data variables."""
    keep = [c for c in (schema.SAMPLE, schema.LABEL, schema.LABEL_INDEX, schema.GROUP, schema.SPLIT, schema.UM_PER_PX)
            if c in images.coords]
    coords = {k: (images[k].dims, np.asarray(images[k].values.tolist(), dtype=object)
                  if images[k].dtype.kind in "OTU" else images[k].values) for k in keep}
    coords[CLASS] = np.array(classes, dtype=object)
    return xr.Dataset(coords=coords, attrs=attrs)


def create_group(workspace: str | os.PathLike[str], group: str, images: xr.Dataset, classes: list[str],
                 attrs: dict[str, Any], identities: dict[str, dict[str, Any]], all_targets: bool, storage: str,
                 unit: int) -> None:
    """Write a new saliency group: coordinates, ``attrs`` (plus ``storage``) and the empty arrays of
    the keys of ``identities``, a chunk task writing ``unit`` samples (a multiple of the images'
    chunk; more than one chunk makes shards, :mod:`xaiflow.layout`)."""
    n, h, w = images[schema.IMAGE].shape
    chunk = images[schema.IMAGE].data.chunksize[0]
    m, c = len(identities), len(classes)
    per_map = (1, h, w) if all_targets else (h, w)  # one chunk per class: class-mean queries read one class
    flag_dims: tuple[str, ...] = (schema.SAMPLE, METHOD)
    map_dims = (*flag_dims, *((CLASS,) if all_targets else ()), schema.Y, schema.X)
    ds = group_template(images, classes, {**attrs, ATTR_STORAGE: storage}).assign_coords(
        {METHOD: ((METHOD,), np.array(list(identities), dtype=object), {"long_name": "attribution method key"})})
    shape = (n, m, c, h, w) if all_targets else (n, m, h, w)
    ds[MAPS] = (map_dims, da.full(shape, np.nan, dtype=STORAGE_DTYPES[storage], chunks=(unit, 1, *per_map)),
                {ATTR_METHODS: identities, "long_name": _LONG_NAMES[MAPS]})
    ds[TARGET] = (flag_dims, da.full((n, m), -1, dtype=np.int16, chunks=(unit, 1)))
    ds[DONE] = (flag_dims, da.zeros((n, m), dtype=bool, chunks=(unit, 1)))
    ds[NONFINITE] = (flag_dims, da.zeros((n, m), dtype=bool, chunks=(unit, 1)))
    if storage == "float16":
        scale_shape, scale_chunks = ((n, m, c), (unit, 1, c)) if all_targets else ((n, m), (unit, 1))
        ds[SCALE] = (map_dims[:-2], da.full(scale_shape, np.nan, dtype=np.float32, chunks=scale_chunks))
    for name in (TARGET, DONE, NONFINITE, SCALE):
        if name in ds:
            ds[name].attrs["long_name"] = _LONG_NAMES[name]
    encoding: dict[str, dict[str, Any]] = {v: {"chunks": ds[v].data.chunksize, "fill_value": FILL[v]}
                                           for v in ds.data_vars}
    encoding[MAPS].update(layout.sample_encoding(chunk, unit // chunk, (1, *per_map)),
                          compressors=(map_codec(),))
    store.write_group(workspace, group, ds, compute=False, encoding=encoding)  # stored form, consolidated


def _writable(workspace: str | os.PathLike[str], group: str) -> zarr.Group:
    """The group for structural changes, from its own metadata (consolidated metadata may be stale)."""
    return zarr.open_group(store.location(workspace), path=group, mode="r+", zarr_format=3, use_consolidated=False)


def grow(workspace: str | os.PathLike[str], group: str, keys: list[str]) -> None:
    """Append ``keys`` (not stored yet) to the ``xai_method`` axis: the coordinate, then every array
    (new cells read as fill values); arrays an interrupted growth left shorter are grown too."""
    root = _writable(workspace, group)
    coord = root[METHOD]
    stored = store.strings(coord[:]).tolist()
    new = [k for k in keys if k not in stored]
    if new:
        coord.resize((len(stored) + len(new),))
        coord[len(stored):] = np.array(new, dtype=object)
    m = len(stored) + len(new)
    for name in FILL:
        if name in root and root[name].shape[1] != m:
            arr = root[name]
            arr.resize((arr.shape[0], m, *arr.shape[2:]))


def reset(workspace: str | os.PathLike[str], group: str, keys: list[str]) -> None:
    """Every array of ``keys`` back to fill values (the done flags first: an interrupted reset leaves
    maps to recompute, never stale maps flagged done); chunks left empty are deleted by Zarr."""
    root = _writable(workspace, group)
    stored = store.strings(root[METHOD][:]).tolist()
    for key in keys:
        i = stored.index(key)
        for name in (DONE, *(n for n in FILL if n != DONE)):
            if name in root:
                root[name][:, i] = FILL[name]


def set_identities(workspace: str | os.PathLike[str], group: str, identities: dict[str, dict[str, Any]]) -> None:
    """Record (or replace) the identity of keys in ``saliency.attrs["methods"]``."""
    maps = _writable(workspace, group)[MAPS]
    maps.attrs[ATTR_METHODS] = {**dict(maps.attrs.get(ATTR_METHODS, {})), **identities}


# ------------------------------------------------------------------ reading (either layout)

class MethodMaps(NamedTuple):
    """One key's maps (float32, decoded) and flags for a range of samples."""

    maps: np.ndarray
    targets: np.ndarray  # int64
    done: np.ndarray
    nonfinite: np.ndarray


@dataclass(frozen=True)
class StoredSaliency:
    """What a saliency group holds, in this module's layout (``tidy``) or the older one: the one
    adapter every reader goes through, so none of them knows the layout."""

    workspace: str
    group: str
    tidy: bool
    #: key -> identity (method, params, storage); tidy: in ``xai_method`` order
    methods: dict[str, dict[str, Any]]
    #: the ``xai_method`` coordinate (tidy); the column of a key is its position
    axis: tuple[str, ...]

    @classmethod
    def open(cls, workspace: str | os.PathLike[str], group: str) -> StoredSaliency | None:
        """The group's description; None when it does not exist."""
        if not store.group_exists(workspace, group):
            return None
        root = cls._root(workspace, group)
        if MAPS in root and METHOD in (root[MAPS].metadata.dimension_names or ()):
            axis = tuple(store.strings(root[METHOD][:]).tolist())
            identities = dict(root[MAPS].attrs.get(ATTR_METHODS, {}))
            return cls(str(workspace), group, True, {k: identities[k] for k in axis if k in identities}, axis)
        legacy = {name: dict(arr.attrs) for name, arr in root.arrays() if ATTR_METHOD in arr.attrs}
        return cls(str(workspace), group, False, dict(sorted(legacy.items())), ())  # listing order varies

    @staticmethod
    def _root(workspace: str | os.PathLike[str], group: str) -> zarr.Group:
        """The group from its own metadata: the root's consolidated copy may lag a planning in progress."""
        return zarr.open_group(store.location(workspace), path=group, mode="r", zarr_format=3, use_consolidated=False)

    def path(self, name: str, key: str) -> str:
        """The stored array of ``name`` (MAPS, TARGET, ...) holding ``key`` (its column ``axis.index(key)``
        in this layout)."""
        return f"{self.group}/{name if self.tidy else key + _LEGACY_SUFFIX[name]}"

    def storage(self, key: str) -> str:
        return storage_of(self.methods[key])

    def _column(self, root: zarr.Group, name: str, key: str, rows: slice) -> np.ndarray:
        arr = root[name if self.tidy else key + _LEGACY_SUFFIX[name]]
        return np.asarray(arr[rows, self.axis.index(key)] if self.tidy else arr[rows])

    def done(self, key: str) -> np.ndarray:
        """Every sample's done flag of ``key``."""
        return self._column(self._root(self.workspace, self.group), DONE, key, slice(None)).astype(bool)

    def read(self, key: str, start: int, stop: int) -> MethodMaps:
        """Maps (decoded to float32), targets and flags of ``key`` for samples ``start:stop``."""
        root, rows = self._root(self.workspace, self.group), slice(start, stop)
        scale = self._column(root, SCALE, key, rows) if self.storage(key) == "float16" else None
        return MethodMaps(decode_maps(self._column(root, MAPS, key, rows), scale),
                          self._column(root, TARGET, key, rows).astype(np.int64),
                          self._column(root, DONE, key, rows).astype(bool),
                          self._column(root, NONFINITE, key, rows).astype(bool))

    def unit(self) -> int:
        """Samples one chunk task writes (the flags' chunk along samples)."""
        key = next(iter(self.methods), "")
        return layout.write_unit(self.workspace, self.path(DONE, key))

    def dataset(self, keys: list[str]) -> xr.Dataset:
        """``saliency(sample, xai_method, ...)`` float32 of ``keys`` (lazy, a Dask chunk per shard) with
        ``target``, ``done``, ``nonfinite`` (small: read now, one zarr call each) and the group's coordinates."""
        raw = store.open_group(self.workspace, self.group, check_complete=False, by_shard=True)
        root = self._root(self.workspace, self.group)
        index = pd.Index(keys, name=METHOD)
        if self.tidy:
            cols = [self.axis.index(k) for k in keys]
            sel = raw.isel({METHOD: cols}).drop_vars(METHOD)
            maps = sel[MAPS].astype(np.float32) * sel[SCALE] if SCALE in sel else sel[MAPS]
            small = {n: sel[n].copy(data=np.asarray(root[n][:])[:, cols]) for n in (TARGET, DONE, NONFINITE)}
            maps.attrs = {k: v for k, v in sel[MAPS].attrs.items() if k != ATTR_METHODS}
            out = xr.Dataset({"saliency": maps.rename(None), **small}).assign_coords({METHOD: index})
        else:
            def legacy(name: str, k: str) -> xr.DataArray:
                var = raw[k + _LEGACY_SUFFIX[name]]
                if name != MAPS:  # per-sample arrays: read now, in one zarr call (a Dask task per chunk costs more)
                    return var.copy(data=np.asarray(root[var.name][:]))
                if self.storage(k) == "float16":
                    return var.astype(np.float32) * raw[k + _LEGACY_SUFFIX[SCALE]]
                return var

            out = xr.Dataset({new: xr.concat([legacy(name, k).drop_attrs().rename(None) for k in keys], dim=index,
                                             coords="minimal", compat="override").transpose(schema.SAMPLE, METHOD, ...)
                              for new, name in (("saliency", MAPS), ("target", TARGET), ("done", DONE),
                                                ("nonfinite", NONFINITE))})
        out.attrs = {**raw.attrs, ATTR_METHODS: {k: self.methods[k] for k in keys}}
        return out


def stored_methods(workspace: str | os.PathLike[str], group: str) -> dict[str, dict[str, Any]]:
    """Method key -> identity (method, params, storage) of every method stored in a saliency group."""
    stored = StoredSaliency.open(workspace, group)
    return dict(stored.methods) if stored else {}


def open_saliency(workspace: str | os.PathLike[str], dataset: str, model: str,
                  methods: list[str] | None = None, with_images: bool = True) -> xr.Dataset:
    """Stored maps as ``saliency(sample, xai_method, y, x)`` float32 (lazy, a Dask chunk per shard),
    with ``target(sample, xai_method)``, ``done``, ``nonfinite`` (small: in memory), the images
    (lazy) and their coordinates (label, split, group, ...), from a group of either layout."""
    group = saliency_group(dataset, model)
    stored = StoredSaliency.open(workspace, group)
    if stored is None:
        raise SaliencyQueryError(f"{workspace}: no saliency for dataset {dataset!r} and model {model!r} "
                                 f"(groups: {', '.join(store.list_groups(workspace))}); run `xaiflow attribute`")
    keys = methods or (list(stored.methods) if stored.tidy else sorted(stored.methods))
    missing = sorted(set(keys) - set(stored.methods))
    if missing:
        raise SaliencyQueryError(f"{group}: method(s) {missing} not computed; stored: {sorted(stored.methods)}")
    out = stored.dataset(keys)
    if with_images:
        images = store.open_group(workspace, schema.group_path(schema.IMAGES, dataset), by_shard=True)
        out["image"] = images[schema.IMAGE]
        out = out.assign_coords({k: images[k] for k in images.coords if k not in out.coords and k != schema.SAMPLE})
    return out


def pick_samples(ds: xr.Dataset, ids: list[str] | None = None, n: int = 4) -> list[str]:
    """Sample ids to show: ``ids`` (checked to exist), else the first ``n`` with maps for every method."""
    known = store.strings(ds[schema.SAMPLE].values).tolist()
    if ids:
        unknown = sorted(set(ids) - set(known))
        if unknown:
            raise SaliencyQueryError(f"unknown sample id(s) {unknown}; ids look like {known[:3]}")
        return list(ids)
    done = np.asarray(ds["done"].all(METHOD).values)
    chosen = [known[i] for i in np.flatnonzero(done)[:n]]
    if not chosen:
        raise SaliencyQueryError("no sample has maps for every method yet")
    return chosen
