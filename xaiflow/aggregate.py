"""Queries over stored saliency: group means, mask mass, method agreement (lazy, chunk by chunk).

Every query takes the dataset of :func:`xaiflow.saliency.open_saliency` and returns an
xarray object backed by dask: nothing is loaded until ``.compute()``, and then one sample
chunk at a time, so a query over a whole collection needs memory for a few chunks, not for
the saliency array. Raw maps are normalized here, at query time:

* ``mass``: ``|map| / sum(|map|)`` - each map distributes one unit of relevance, so maps of
  different methods and images can be averaged and compared (the default);
* ``p99``: ``|map| / p99(|map|)`` clipped to 1 - for display.
"""

from __future__ import annotations

import os

import dask.array as da
import numpy as np
import pandas as pd
import xarray as xr
from scipy.stats import rankdata

from xaiflow import schema
from xaiflow.errors import XaiflowError
from xaiflow.saliency import METHOD

PIXELS = (schema.Y, schema.X)


class QueryError(XaiflowError):
    """A query cannot be answered (empty group, unknown coordinate, missing masks...)."""


def normalized(saliency: xr.DataArray, how: str = "mass") -> xr.DataArray:
    """Per-map normalization of raw maps (see the module docstring)."""
    a = abs(saliency)
    if how == "mass":
        return a / a.sum(PIXELS).where(lambda s: s > 0)
    if how == "p99":
        return (a / a.quantile(0.99, dim=PIXELS).drop_vars("quantile").where(lambda s: s > 0)).clip(max=1)
    raise QueryError(f"unknown normalization {how!r}; valid: mass, p99")


def grouping(ds: xr.Dataset, by: str, bins: list[float] | None = None) -> xr.DataArray:
    """The per-sample group labels: a coordinate (label, group, detector...), ``predicted``
    (the explained class of the first method), or a numeric coordinate cut into ``bins``."""
    if by == "predicted":
        classes = list(ds.attrs.get(schema.ATTR_CLASSES, []))
        t = ds["target"].isel({METHOD: 0}).values
        return xr.DataArray(np.array([classes[i] if 0 <= i < len(classes) else "" for i in t], object),
                            dims=schema.SAMPLE, name="predicted")
    if by not in ds.coords:
        raise QueryError(f"no coordinate {by!r} to group by; coordinates: {sorted(map(str, ds.coords))}")
    values = ds[by].values
    if bins is not None:
        cut = pd.cut(np.asarray(values, float), bins=bins)
        labels = np.array([str(c) if isinstance(c, pd.Interval) else "" for c in cut], object)
        return xr.DataArray(labels, dims=schema.SAMPLE, name=f"{by}_bin")
    return xr.DataArray(np.asarray(values.tolist(), object), dims=schema.SAMPLE, name=by)


def _selected(ds: xr.Dataset, split: str | None) -> xr.Dataset:
    done = ds["done"].all(METHOD).values
    keep = done & (np.asarray(ds[schema.SPLIT].values.tolist()) == split if split else True)
    if not keep.any():
        raise QueryError(f"no sample has maps for every method{f' in split {split!r}' if split else ''}")
    return ds.isel({schema.SAMPLE: np.flatnonzero(keep)})


def group_maps(ds: xr.Dataset, by: str = schema.LABEL, stat: str = "mean", bins: list[float] | None = None,
               split: str | None = None, how: str = "mass") -> xr.DataArray:
    """Mean (or median) normalized map per group: (``by``, xai_method, y, x), lazy.

    Only samples with maps for every method are used; an empty group is an error.
    """
    ds = _selected(ds, split)
    labels = grouping(ds, by, bins)
    norm = normalized(ds["saliency"], how)
    groups = [g for g in pd.unique(labels.values) if g != ""]
    if bins is not None:  # bins in ascending order, not in order of appearance
        groups = [g for g in (str(c) for c in pd.cut([], bins=bins).categories) if g in groups]
    if not groups:
        raise QueryError(f"grouping by {by!r} leaves no non-empty group")
    parts = []
    for g in groups:
        idx = np.flatnonzero(labels.values == g)
        sub = norm.isel({schema.SAMPLE: idx})
        if stat == "mean":
            parts.append(sub.mean(schema.SAMPLE))
        elif stat == "median":
            parts.append(sub.chunk({schema.SAMPLE: -1}).median(schema.SAMPLE))
        else:
            raise QueryError(f"unknown statistic {stat!r}; valid: mean, median")
    out = xr.concat(parts, dim=pd.Index([str(g) for g in groups], name=labels.name))
    counts = pd.Series(labels.values).value_counts()
    return out.assign_coords(n_samples=(labels.name, [int(counts[g]) for g in groups]))


def mask_mass(ds: xr.Dataset, masks: xr.Dataset) -> xr.Dataset:
    """Share of each map's relevance mass in each mask class, beside the class's area share.

    Returns ``mass(sample, xai_method, mask_class)`` and ``area(sample, mask_class)``; a ratio
    mass/area above 1 means the method puts more relevance on that phase than its area.
    """
    if masks.sizes[schema.SAMPLE] != ds.sizes[schema.SAMPLE] or \
            not np.array_equal(masks[schema.SAMPLE].values, ds[schema.SAMPLE].values):
        raise QueryError("masks and saliency have different samples")
    classes = list(masks.attrs[schema.ATTR_MASK_CLASSES])
    norm = normalized(ds["saliency"], "mass")
    mask = masks["mask"]
    mass = xr.concat([(norm * (mask == k)).sum(PIXELS) for k in range(len(classes))],
                     dim=pd.Index(classes, name="mask_class"))
    area = xr.concat([(mask == k).mean(PIXELS) for k in range(len(classes))], dim=pd.Index(classes, name="mask_class"))
    return xr.Dataset({"mass": mass.transpose(schema.SAMPLE, METHOD, "mask_class"),
                       "area": area.transpose(schema.SAMPLE, "mask_class")})


def mean_mask_mass(workspace: str | os.PathLike[str], dataset: str, ds: xr.Dataset) -> xr.Dataset:
    """:func:`mask_mass` against ``masks/<dataset>``, averaged over the samples with maps for every
    method of ``ds`` (computed)."""
    from xaiflow import store

    done = np.flatnonzero(ds["done"].all(METHOD).values)
    masks = store.open_group(workspace, schema.group_path(schema.MASKS, dataset)).isel({schema.SAMPLE: done})
    return mask_mass(ds.isel({schema.SAMPLE: done}), masks).mean(schema.SAMPLE).compute()


def _agreement_block(block: np.ndarray, top_fraction: float) -> np.ndarray:
    """(s, m, y, x) maps -> (s, 2, m, m): Spearman correlation and top-k overlap per sample."""
    s, m = block.shape[:2]
    flat = np.abs(block.reshape(s, m, -1))
    out = np.full((s, 2, m, m), np.nan, np.float32)
    k = max(1, int(top_fraction * flat.shape[-1]))
    for i in range(s):
        if not np.isfinite(flat[i]).all():
            continue
        ranks = np.apply_along_axis(rankdata, 1, flat[i])
        with np.errstate(invalid="ignore", divide="ignore"):  # a constant map has no rank correlation: NaN
            out[i, 0] = np.corrcoef(ranks)
        top = np.argpartition(-flat[i], k - 1, axis=1)[:, :k]
        sets = [set(t.tolist()) for t in top]
        out[i, 1] = [[len(a & b) / k for b in sets] for a in sets]
    return out


def method_agreement(ds: xr.Dataset, top_fraction: float = 0.1, split: str | None = None) -> xr.Dataset:
    """Method x method agreement averaged over samples: Spearman rank correlation of |maps| and
    the overlap of their top ``top_fraction`` pixels. Computed block by block (lazy)."""
    ds = _selected(ds, split)
    sal = ds["saliency"].transpose(schema.SAMPLE, METHOD, *PIXELS).data
    # all methods of a sample in one block, few samples per block: memory per task stays small
    # (ranks are float64, so a block needs ~5x its size) whatever the array's size
    sal = sal.rechunk({0: min(8, sal.chunksize[0]), 1: -1, 2: -1, 3: -1})
    per_sample = da.map_blocks(_agreement_block, sal, top_fraction, dtype=np.float32,
                               chunks=(sal.chunks[0], (2,), (sal.shape[1],), (sal.shape[1],)))
    mean = da.nanmean(per_sample, axis=0)
    methods = [str(m) for m in ds[METHOD].values]
    other = METHOD + "_2"
    coords = {METHOD: methods, other: methods}
    return xr.Dataset({"spearman": ((METHOD, other), mean[0]), "top_overlap": ((METHOD, other), mean[1])},
                      coords=coords, attrs={"top_fraction": top_fraction, "n_samples": ds.sizes[schema.SAMPLE]})
