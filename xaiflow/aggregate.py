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

from xaiflow import schema, store
from xaiflow.errors import XaiflowError
from xaiflow.maskspec import has_mask
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


def _kept(ds: xr.Dataset, split: str | None) -> np.ndarray:
    """Samples with maps for every method (and in ``split``): a bool per sample; none is an error."""
    keep = ds["done"].all(METHOD).values
    if split:
        keep &= store.strings(ds[schema.SPLIT].values) == split
    if not keep.any():
        raise QueryError(f"no sample has maps for every method{f' in split {split!r}' if split else ''}")
    return keep


def _selected(ds: xr.Dataset, split: str | None) -> xr.Dataset:
    return ds.isel({schema.SAMPLE: np.flatnonzero(_kept(ds, split))})


#: bytes of one group query's result (a mean map per group and method): every block holds its sums,
#: so a grouping by something near-unique (sample ids) is refused instead of exhausting memory
MAX_RESULT_BYTES = 256 * 2**20

#: up to this many groups, a block's group sums are one matrix product; beyond, a sort and run sums
_MATMUL_GROUPS = 64


def _group_sums(block: np.ndarray, codes: np.ndarray, n_groups: int) -> np.ndarray:
    """(s, m, y, x) raw maps and their samples' group codes (-1: left out) -> (1, g, m, y*x + 1): per group
    and method, the sum of the mass-normalized maps and, in the last column, how many maps were summed.
    A map that is all zero or not finite is left out of its group's mean for that method. The
    normalization is folded into the weights of a (group x sample) matrix, so each map is read
    once more after its absolute value: memory speed, whatever the number of groups."""
    s, m = block.shape[:2]
    codes = codes.reshape(s)
    a = np.abs(block.reshape(s, m, -1)).astype(np.float32, copy=False)
    mass = a.sum(axis=2)
    valid = np.isfinite(mass) & (mass > 0)
    if not valid.all():
        a[~valid] = 0.0  # NaN or inf would spread through the sums
    inv = np.where(valid, 1.0 / np.where(valid, mass, 1.0), 0.0).astype(np.float32)  # (s, m)
    out = np.zeros((1, n_groups, m, a.shape[2] + 1), np.float32)
    if n_groups <= _MATMUL_GROUPS:
        member = (codes[None, :] == np.arange(n_groups)[:, None]).astype(np.float32)  # (g, s)
        for j in range(m):
            out[0, :, j, :-1] = (member * inv[:, j]) @ a[:, j]
        out[0, :, :, -1] = member @ valid.astype(np.float32)
        return out
    order = np.argsort(codes, kind="stable")
    order = order[codes[order] >= 0]
    if len(order):  # samples sorted by group: one sum per run of equal codes
        sorted_codes = codes[order]
        starts = np.flatnonzero(np.r_[True, sorted_codes[1:] != sorted_codes[:-1]])
        present = sorted_codes[starts]
        out[0, present, :, :-1] = np.add.reduceat(a[order] * inv[order][..., None], starts, axis=0)
        out[0, present, :, -1] = np.add.reduceat(valid[order].astype(np.float32), starts, axis=0)
    return out


def _group_means(sal: xr.DataArray, codes: np.ndarray, groups: list[str]) -> xr.DataArray:
    """Mean mass-normalized map per group in one pass over the maps: each sample block is read once,
    whatever the number of groups, and reduces to per-group sums (a matrix product); the sums of the
    blocks are added up in a tree. Memory: a few blocks, not the array."""
    data = sal.transpose(schema.SAMPLE, METHOD, *PIXELS).data
    if not isinstance(data, da.Array):
        data = da.from_array(data, chunks=(64, -1, -1, -1))
    data = data.rechunk({1: -1, 2: -1, 3: -1})
    h, w = data.shape[2:]
    n_groups, n_methods = len(groups), data.shape[1]
    code_blocks = da.from_array(codes.astype(np.int64), chunks=(data.chunks[0],))
    partial = da.map_blocks(_group_sums, data, code_blocks[:, None, None, None], n_groups, dtype=np.float32,
                            chunks=((1,) * data.numblocks[0], (n_groups,), (n_methods,), (h * w + 1,)))
    total = partial.sum(axis=0, dtype=np.float64)
    counts = total[..., -1:]
    mean = (total[..., :-1] / da.where(counts > 0, counts, np.nan)).reshape(n_groups, n_methods, h, w)
    coords = {k: sal[k] for k in (METHOD, *PIXELS) if k in sal.coords}
    return xr.DataArray(mean.astype(np.float32), dims=("group", METHOD, *PIXELS), coords=coords)


def group_maps(ds: xr.Dataset, by: str = schema.LABEL, stat: str = "mean", bins: list[float] | None = None,
               split: str | None = None, how: str = "mass") -> xr.DataArray:
    """Mean (or median) normalized map per group: (``by``, xai_method, y, x), lazy.

    Only samples with maps for every method are used; an empty group is an error. With ``bins``,
    ``attrs["samples_outside_bins"]`` counts the samples left out because their value lies outside
    the edges (``attrs["outside_range"]``: their smallest and largest value). The mean of
    mass-normalized maps reads every map once (:func:`_group_means`); a median, or the ``p99``
    normalization, selects each group's samples and needs them in memory per pixel column.
    """
    if stat not in ("mean", "median"):
        raise QueryError(f"unknown statistic {stat!r}; valid: mean, median")
    keep = _kept(ds, split)
    labels = grouping(ds, by, bins)
    values = np.where(keep, labels.values, "")
    groups = [g for g in pd.unique(values) if g != ""]
    if bins is not None:  # bins in ascending order, not in order of appearance
        groups = [g for g in (str(c) for c in pd.cut([], bins=bins).categories) if g in groups]
    if not groups:
        raise QueryError(f"grouping by {by!r} leaves no non-empty group")
    need = len(groups) * int(np.prod(ds["saliency"].shape[1:])) * 8  # float64 sums per group, and a few at once
    if need > MAX_RESULT_BYTES:
        raise QueryError(f"grouping by {by!r} gives {len(groups):,} groups: one mean map per group and method "
                         f"would need {need / 2**20:,.0f} MiB, more than {MAX_RESULT_BYTES / 2**20:,.0f} MiB; "
                         "group by a coarser coordinate, or cut a numeric one into bins")
    index = pd.Index([str(g) for g in groups], name=labels.name)
    counts = pd.Series(values).value_counts()
    if stat == "mean" and how == "mass":
        codes = pd.Index(groups).get_indexer(values).astype(np.int64)  # -1: left out
        out = _group_means(ds["saliency"], codes, groups).rename(group=labels.name).assign_coords({labels.name: index})
    else:
        norm = normalized(ds["saliency"], how)
        parts = []
        for g in groups:
            sub = norm.isel({schema.SAMPLE: np.flatnonzero(values == g)})
            parts.append(sub.mean(schema.SAMPLE) if stat == "mean" else sub.chunk({schema.SAMPLE: -1}).median(schema.SAMPLE))
        out = xr.concat(parts, dim=index)
    out = out.assign_coords(n_samples=(labels.name, [int(counts[g]) for g in groups]))
    if bins is not None:  # said, not silently dropped: samples whose value lies outside the edges (or is NaN)
        outside = keep & (labels.values == "")
        out.attrs["samples_outside_bins"] = int(outside.sum())
        values_out = np.asarray(ds[by].values, float)[outside]
        out.attrs["outside_range"] = ([float(np.nanmin(values_out)), float(np.nanmax(values_out))]
                                      if np.isfinite(values_out).any() else [])
    return out


def mask_mass(ds: xr.Dataset, masks: xr.Dataset) -> xr.Dataset:
    """Share of each map's relevance mass in each mask class, beside the class's area share.

    Returns ``mass(sample, xai_method, mask_class)`` and ``area(sample, mask_class)``; a ratio
    mass/area above 1 means the method puts more relevance on that phase than its area. Samples
    without a mask (``has_mask`` False: masks may cover a subset) are NaN, so means skip them.
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
    annotated = xr.DataArray(has_mask(masks), dims=schema.SAMPLE)
    return xr.Dataset({"mass": mass.where(annotated).transpose(schema.SAMPLE, METHOD, "mask_class"),
                       "area": area.where(annotated).transpose(schema.SAMPLE, "mask_class")})


def mean_mask_mass(workspace: str | os.PathLike[str], dataset: str, ds: xr.Dataset) -> xr.Dataset:
    """:func:`mask_mass` against ``masks/<dataset>``, averaged over the samples with maps for every
    method of ``ds`` (computed)."""
    done = np.flatnonzero(ds["done"].all(METHOD).values)
    masks = store.open_group(workspace, schema.group_path(schema.MASKS, dataset)).isel({schema.SAMPLE: done})
    return mask_mass(ds.isel({schema.SAMPLE: done}), masks).mean(schema.SAMPLE).compute()


def average_ranks(values: np.ndarray) -> np.ndarray:
    """Ranks along the last axis, ties given their average rank (as ``scipy.stats.rankdata``), for
    every row at once: one sort per row, then each run of equal values gets the mean of its positions."""
    order = np.argsort(values, axis=-1, kind="stable")
    ordered = np.take_along_axis(values, order, axis=-1)
    n = values.shape[-1]
    pos = np.broadcast_to(np.arange(n), values.shape)
    new = np.ones(values.shape, bool)
    new[..., 1:] = ordered[..., 1:] != ordered[..., :-1]
    first = np.maximum.accumulate(np.where(new, pos, 0), axis=-1)  # start of each value's run
    last_new = np.ones(values.shape, bool)
    last_new[..., :-1] = new[..., 1:]
    last = np.flip(np.minimum.accumulate(np.flip(np.where(last_new, pos, n - 1), -1), axis=-1), -1)  # its end
    ranks = np.empty(values.shape, np.float32)
    np.put_along_axis(ranks, order, ((first + last) / 2 + 1).astype(np.float32), axis=-1)
    return ranks


def _agreement_block(block: np.ndarray, top_fraction: float) -> np.ndarray:
    """(s, m, y, x) maps -> (s, 2, m, m): Spearman correlation and top-k overlap per sample, every sample
    of the block at once (batched matrix products); NaN for a sample with a non-finite map."""
    s, m = block.shape[:2]
    flat = np.abs(block.reshape(s, m, -1), dtype=np.float32)
    out = np.full((s, 2, m, m), np.nan, np.float32)
    finite = np.isfinite(flat).all(axis=(1, 2))
    if not finite.any():
        return out
    flat = flat[finite]
    k = max(1, int(top_fraction * flat.shape[-1]))
    ranks = average_ranks(flat)
    ranks -= ranks.mean(axis=-1, keepdims=True)
    norms = np.sqrt(np.einsum("smp,smp->sm", ranks, ranks))
    with np.errstate(invalid="ignore", divide="ignore"):  # a constant map has no rank correlation: NaN
        ranks /= norms[..., None]
    out[finite, 0] = ranks @ ranks.transpose(0, 2, 1)
    top = np.zeros(flat.shape, np.float32)
    np.put_along_axis(top, np.argpartition(-flat, k - 1, axis=-1)[..., :k], 1.0, axis=-1)
    out[finite, 1] = top @ top.transpose(0, 2, 1) / k
    return out


#: bytes of maps per block of :func:`method_agreement`
_AGREEMENT_BLOCK_BYTES = 4 * 2**20


def method_agreement(ds: xr.Dataset, top_fraction: float = 0.1, split: str | None = None) -> xr.Dataset:
    """Method x method agreement averaged over samples: Spearman rank correlation of |maps| and
    the overlap of their top ``top_fraction`` pixels. Computed block by block (lazy)."""
    ds = _selected(ds, split)
    sal = ds["saliency"].transpose(schema.SAMPLE, METHOD, *PIXELS).data
    # all methods of a sample in one block of about _AGREEMENT_BLOCK_BYTES of maps: the ranks, sort order
    # and top-k masks need ~10x that per task, whatever the array's size
    per_sample = int(np.prod(sal.shape[1:])) * 4
    sal = sal.rechunk({0: max(1, min(sal.shape[0], _AGREEMENT_BLOCK_BYTES // per_sample)), 1: -1, 2: -1, 3: -1})
    per_sample = da.map_blocks(_agreement_block, sal, top_fraction, dtype=np.float32,
                               chunks=(sal.chunks[0], (2,), (sal.shape[1],), (sal.shape[1],)))
    mean = da.nanmean(per_sample, axis=0)
    methods = [str(m) for m in ds[METHOD].values]
    other = METHOD + "_2"
    coords = {METHOD: methods, other: methods}
    return xr.Dataset({"spearman": ((METHOD, other), mean[0]), "top_overlap": ((METHOD, other), mean[1])},
                      coords=coords, attrs={"top_fraction": top_fraction, "n_samples": ds.sizes[schema.SAMPLE]})
