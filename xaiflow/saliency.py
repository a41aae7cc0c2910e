"""The ``saliency/<dataset>/<model_id>`` group: layout, templates, and the query entry point.

One variable per method key, chunk-aligned with the images (``chunk_size`` samples):

* ``<key>``          (sample, y, x) float32 raw maps; NaN where not computed yet.
                     With ``target: all``: (sample, class, y, x), chunks (S, 1, y, x).
* ``<key>__target``  (sample) int16, the class each map explains (-1 = not computed).
* ``<key>__done``    (sample) bool, per-sample completion flags: a re-run computes only
                     what is missing, and a killed run resumes.
* ``<key>__nonfinite`` (sample) bool, maps that contained NaN/inf (stored, but flagged).
* ``<key>__scale``   only with ``storage: float16``: (sample) or (sample, class) float32, the
                     largest absolute value of each map; ``<key>`` then holds float16 maps divided
                     by it (half the bytes). Raw float16 casts would turn most gradient values
                     into slow, imprecise float16 subnormals; scaled maps lie in [-1, 1] and keep
                     float16's relative precision (2**-11 of each value above 6e-5 of the peak).

Variable attrs hold the method name, its parameters and the storage dtype (the identity: a
re-run with other parameters or storage is refused), the batching chosen for the device, and library versions; group
attrs hold the model id, the checkpoint sha256 and the target mode.

:func:`open_saliency` assembles the stored variables into one lazily loaded
``saliency(sample, xai_method, y, x)`` float32 DataArray beside the images and their
coordinates (float16 maps are decoded there, and by :func:`decode_maps` for chunk readers).
Raw maps are stored; normalize at query time.
"""

from __future__ import annotations

import os
from typing import Any

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
TARGET_SUFFIX = "__target"
DONE_SUFFIX = "__done"
NONFINITE_SUFFIX = "__nonfinite"
SCALE_SUFFIX = "__scale"
ATTR_PARAMS = "params"
ATTR_METHOD = "method"
ATTR_STORAGE = "storage"
STORAGE_DTYPES = {"float32": np.float32, "float16": np.float16}


def saliency_group(dataset: str, model_id: str) -> str:
    return schema.group_path(schema.SALIENCY, dataset, model_id)


def method_template(images: xr.Dataset, key: str, classes: list[str], all_targets: bool, attrs: dict[str, Any],
                    storage: str = "float32", unit: int | None = None) -> xr.Dataset:
    """Empty (lazy) variables of one method key, to be appended to the saliency group: maps in the
    images' chunks, inside shards of ``unit`` samples when ``unit`` is a multiple of more than one
    chunk (:mod:`xaiflow.layout`); flags and targets in one chunk per ``unit``."""
    n, h, w = images[schema.IMAGE].shape
    chunk = images[schema.IMAGE].data.chunksize[0]
    s = unit or chunk
    dtype = STORAGE_DTYPES[storage]
    if all_targets:
        data = da.full((n, len(classes), h, w), np.nan, dtype=dtype, chunks=(s, 1, h, w))
        dims: tuple[str, ...] = (schema.SAMPLE, CLASS, schema.Y, schema.X)
    else:
        data = da.full((n, h, w), np.nan, dtype=dtype, chunks=(s, h, w))
        dims = (schema.SAMPLE, schema.Y, schema.X)
    ds = xr.Dataset({
        key: (dims, data, {**attrs, ATTR_STORAGE: storage}),
        key + TARGET_SUFFIX: ((schema.SAMPLE,), da.full(n, -1, dtype=np.int16, chunks=s)),
        key + DONE_SUFFIX: ((schema.SAMPLE,), da.zeros(n, dtype=bool, chunks=s)),
        key + NONFINITE_SUFFIX: ((schema.SAMPLE,), da.zeros(n, dtype=bool, chunks=s)),
    })
    if storage == "float16":
        ds[key + SCALE_SUFFIX] = (dims[:-2], da.full(data.shape[:-2], np.nan, dtype=np.float32, chunks=data.chunks[:-2]))
    if s > chunk:
        ds[key].encoding = layout.sample_encoding(chunk, s // chunk, data.chunksize[1:])
    return ds


def storage_of(attrs: dict[str, Any]) -> str:
    """A method variable's storage dtype (maps stored before the option existed are float32)."""
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


def group_template(images: xr.Dataset, classes: list[str], attrs: dict[str, Any]) -> xr.Dataset:
    """The saliency group's coordinates (copied from the images) and ``attrs``, without methods."""
    keep = [c for c in (schema.SAMPLE, schema.LABEL, schema.LABEL_INDEX, schema.GROUP, schema.SPLIT, schema.UM_PER_PX)
            if c in images.coords]
    coords = {k: (images[k].dims, np.asarray(images[k].values.tolist(), dtype=object)
                  if images[k].dtype.kind in "OTU" else images[k].values) for k in keep}
    coords[CLASS] = np.array(classes, dtype=object)
    return xr.Dataset(coords=coords, attrs=attrs)


def map_codec() -> BloscCodec:
    """Codec of stored maps: LZ4 without shuffle. Measured on UHCS maps (128 px, chunks of 16):
    gradient maps (saliency, IG, SmoothGrad, Grad-CAM) compress only 1.0-1.4x with any codec,
    so the codec should cost next to nothing: LZ4 without shuffle encodes a 1 MiB chunk in
    ~0.4 ms (with byte shuffle ~1.8 ms for 1.1-1.35x, zarr's default Zstd ~5 ms for 1.06-1.4x)
    and still shrinks piecewise-constant maps 10-45x (occlusion 45x, LIME 10x; shuffle made
    LIME's 4x). Map writes are on every chunk task's path, next to cheap methods' compute."""
    return BloscCodec(cname="lz4", clevel=5, shuffle="noshuffle", typesize=4)


def write_template(workspace: str | os.PathLike[str], group: str, ds: xr.Dataset, mode: str) -> None:
    encoding: dict[str, dict[str, Any]] = {v: {"chunks": ds[v].data.chunksize, **ds[v].encoding}
                                           for v in ds.data_vars}
    for v in ds.data_vars:
        if ds[v].ndim >= 3:  # maps; flags and targets keep the default codec
            encoding[v]["compressors"] = (map_codec(),)
    ds.to_zarr(store.location(workspace), group=group, mode=mode, compute=False, consolidated=False, zarr_format=3,
               encoding=encoding)


def stored_methods(workspace: str | os.PathLike[str], group: str) -> dict[str, dict[str, Any]]:
    """Method key -> variable attrs of every method stored in a saliency group."""
    if not store.group_exists(workspace, group):
        return {}
    ds = xr.open_zarr(store.location(workspace), group=group, consolidated=False, zarr_format=3)
    return {k: dict(ds[k].attrs) for k in ds.data_vars if ATTR_METHOD in ds[k].attrs}


class SaliencyQueryError(XaiflowError):
    """The saliency group or a requested method/sample is missing."""


def open_saliency(workspace: str | os.PathLike[str], dataset: str, model: str,
                  methods: list[str] | None = None, with_images: bool = True) -> xr.Dataset:
    """Stored maps as ``saliency(sample, xai_method, y, x)`` (lazy, a Dask chunk per shard), with
    ``target(sample, xai_method)``, ``done(sample, xai_method)``, ``nonfinite`` (small: in memory),
    the images (lazy) and their coordinates (label, split, group, ...)."""
    group = saliency_group(dataset, model)
    if not store.group_exists(workspace, group):
        raise SaliencyQueryError(f"{workspace}: no saliency for dataset {dataset!r} and model {model!r} "
                                 f"(groups: {', '.join(store.list_groups(workspace))}); run `xaiflow attribute`")
    raw = store.open_group(workspace, group, check_complete=False, by_shard=True)
    stored = sorted(k for k in raw.data_vars if ATTR_METHOD in raw[k].attrs)  # listing order varies
    keys = methods or stored
    missing = sorted(set(keys) - set(stored))
    if missing:
        raise SaliencyQueryError(f"{group}: method(s) {missing} not computed; stored: {stored}")
    index = pd.Index(keys, name=METHOD)

    def maps(k: str) -> xr.DataArray:
        stored = raw[k].drop_attrs().rename(None)
        if storage_of(raw[k].attrs) == "float16":
            return stored.astype(np.float32) * raw[k + SCALE_SUFFIX].drop_attrs()
        return stored

    root = zarr.open_group(store.location(workspace), path=group, mode="r", zarr_format=3)

    def small(name: str) -> xr.DataArray:
        """A per-sample array (flags, targets): read now, in one zarr call (a Dask task per chunk costs more)."""
        return raw[name].drop_attrs().rename(None).copy(data=np.asarray(root[name][:]))

    def stack(suffix: str) -> xr.DataArray:
        arrays = [maps(k) if not suffix else small(k + suffix) for k in keys]
        return xr.concat(arrays, dim=index, coords="minimal", compat="override").transpose(schema.SAMPLE, METHOD, ...)

    out = xr.Dataset({"saliency": stack(""), "target": stack(TARGET_SUFFIX), "done": stack(DONE_SUFFIX),
                      "nonfinite": stack(NONFINITE_SUFFIX)},
                     attrs={**raw.attrs, "methods": {k: raw[k].attrs for k in keys}})
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
