"""Relative importance of structures: which phase of the micrograph drives the model's decision?

Attribution maps say where relevance lies, pixel by pixel; a materials scientist asks which
*structure* matters: the carbide particles, the lamellae, the matrix between them? With expert
masks (``masks/<dataset>``: a class per pixel) the question can be put to the model directly.
For every selected image and every mask class that covers at least ``min_area`` of it:

* **occlusion**: that class's pixels are replaced by a baseline, and the drop of the model's
  probability for its clean predicted class is recorded (``occlusion_drop`` = p_clean -
  p_occluded; large: the decision rests on that phase), with whether the decision changed
  (``flipped``);
* **keep only**: every *other* pixel is replaced by the baseline, and the probability of the
  clean predicted class is recorded (``keep_only``; high: that phase alone suffices);
* ``area``: the class's share of the image's pixels (recorded for every class, present or not).

Baselines (what "removed" means; the network sees images standardized per image,
:func:`xaiflow.preprocess.to_input`, so a baseline that changes the image's contrast also changes
how the kept pixels are scaled):

* ``blur`` (the default): the image blurred with a Gaussian of ``sigma`` pixels. It keeps the
  local mean brightness, so the occluded image stays close to the micrographs the model knows:
  the structure is gone, not replaced by a flat patch the model never saw;
* ``mean``: the image's mean grey value;
* ``noise``: Gaussian noise of the image's mean and standard deviation, drawn from
  ``np.random.default_rng([seed, sample index])`` (the same for a sample whichever chunk computes it).

Stored as ``importance/<dataset>/<model_id>`` (a chunked job, :mod:`xaiflow.jobs`; resumable, one
task per image chunk), dims ``(sample, mask_class)``: ``occlusion_drop``, ``keep_only``, ``flipped``
and ``area``, with the clean ``predicted`` class and its ``probability`` per sample. Only the
samples of ``split`` that have a mask are computed (``selected``); mask classes below ``min_area``
keep NaN (and ``flipped`` false). :func:`summarize` gives, per true class and mask class, the
means with their spread and, when attribution maps of the model exist, each method's relevance
share beside the area share (:func:`relevance_shares`); :func:`sentences` says it in words and
:func:`importance_figure` draws it.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import dask.array as da
import numpy as np
import pandas as pd
import torch
import xarray as xr
import zarr
from scipy import ndimage

from xaiflow import layout, schema, store
from xaiflow.aggregate import mask_mass
from xaiflow.device import check_device_name, resolve_device
from xaiflow.errors import XaiflowError
from xaiflow.jobs import Chunk, ChunkJob, chunk_count, pending_chunks, resume_or_lay_out, run_job
from xaiflow.locks import group_lock
from xaiflow.maskspec import has_mask
from xaiflow.models.catalog import ModelCatalog, ModelEntry
from xaiflow.preprocess import to_input
from xaiflow.runtime import ProgressFn, worker_compute
from xaiflow.saliency import METHOD, open_saliency, saliency_group

IMPORTANCE = "importance"
MASK_CLASS = "mask_class"
BASELINES = ("blur", "mean", "noise")
#: what a chunk task writes, and its value where nothing was computed
FILLS: dict[str, Any] = {"predicted": -1, "probability": np.nan, "occlusion_drop": np.nan, "keep_only": np.nan,
                         "flipped": False, "area": np.nan}


class ImportanceError(XaiflowError):
    """The importance of structures cannot be measured as asked (no masks, bad setting, other stored settings)."""


def importance_group(dataset: str, model_id: str) -> str:
    return schema.group_path(IMPORTANCE, dataset, model_id)


# ------------------------------------------------------------------ occlusion

def baseline_images(images: np.ndarray, baseline: str, sigma: float, samples: np.ndarray, seed: int) -> np.ndarray:
    """What replaces the removed pixels of each image ``(B, H, W)`` (module docstring); ``samples``
    (each image's index in the dataset) seed the noise."""
    images = np.asarray(images, np.float32)
    if baseline == "blur":
        return ndimage.gaussian_filter(images, sigma=(0, sigma, sigma), mode="reflect").astype(np.float32)
    mean = images.mean(axis=(1, 2), keepdims=True)
    if baseline == "mean":
        return np.broadcast_to(mean, images.shape).astype(np.float32)
    std = images.std(axis=(1, 2), keepdims=True)
    noise = np.stack([np.random.default_rng([seed, int(s)]).standard_normal(images.shape[1:]) for s in samples])
    return (mean + std * noise).astype(np.float32)


def _probabilities(model: torch.nn.Module, images: np.ndarray, device: torch.device) -> np.ndarray:
    """Softmax outputs ``(B, K)`` of stored-scale images ``(B, H, W)``."""
    with torch.no_grad():
        return torch.softmax(model(to_input(images).to(device)).float(), dim=1).cpu().numpy()


def _edited(images: np.ndarray, base: np.ndarray, masks: np.ndarray,
            pairs: np.ndarray) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """For each (image, mask class) of ``pairs``: the image with that class's pixels replaced by the
    baseline (occluded) and the baseline with only that class's pixels of the image (kept)."""
    for i, k in pairs:
        inside = masks[i] == k
        yield np.where(inside, base[i], images[i]), np.where(inside, images[i], base[i])


def occlude(model: torch.nn.Module, images: np.ndarray, masks: np.ndarray, base: np.ndarray, n_classes: int,
            min_area: float, device: torch.device, batch_size: int) -> dict[str, np.ndarray]:
    """The stored variables (module docstring) of ``images`` ``(B, H, W)`` with their ``masks`` and
    baselines ``base``; forward passes of ``batch_size`` images (occluded and kept copies together)."""
    n = len(images)
    area = np.stack([(masks == k).mean(axis=(1, 2)) for k in range(n_classes)], axis=1).astype(np.float32)
    clean = np.concatenate([_probabilities(model, images[b:b + batch_size], device) for b in range(0, n, batch_size)])
    predicted = clean.argmax(1)
    out = {"predicted": predicted.astype(np.int16), "probability": clean[np.arange(n), predicted].astype(np.float32),
           "area": area, "occlusion_drop": np.full((n, n_classes), np.nan, np.float32),
           "keep_only": np.full((n, n_classes), np.nan, np.float32), "flipped": np.zeros((n, n_classes), bool)}
    pairs = np.argwhere(area >= min_area)
    step = max(1, batch_size // 2)
    for b in range(0, len(pairs), step):
        part = pairs[b:b + step]
        occluded, kept = map(np.stack, zip(*_edited(images, base, masks, part)))
        probs = _probabilities(model, np.concatenate([occluded, kept]), device)
        i, k, c = part[:, 0], part[:, 1], predicted[part[:, 0]]
        occ, keep = probs[:len(part)], probs[len(part):]
        out["occlusion_drop"][i, k] = out["probability"][i] - occ[np.arange(len(part)), c]
        out["flipped"][i, k] = occ.argmax(1) != c
        out["keep_only"][i, k] = keep[np.arange(len(part)), c]
    return out


# ------------------------------------------------------------------ the job

@dataclass(frozen=True)
class OcclusionJob(ChunkJob):
    """Occlusion and keep-only probabilities for the selected samples of each image chunk
    (``chunk.payload``: their rows in the chunk, and the rows of their masks in ``masks/<dataset>``)."""

    stage = "importance"
    dataset: str
    model: ModelEntry
    mask_classes: tuple[str, ...]
    baseline: str
    sigma: float
    min_area: float
    seed: int
    device: str
    batch_size: int

    @property
    def group(self) -> str:
        return importance_group(self.dataset, self.model.model_id)

    def run_chunk(self, chunk: Chunk) -> int:
        rows, mask_rows = chunk.payload
        image = f"{schema.group_path(schema.IMAGES, self.dataset)}/{schema.IMAGE}"
        images = store.read_region(self.workspace, image, chunk.start, chunk.stop)[rows].astype(np.float32)
        mask = zarr.open_array(store.location(self.workspace), path=f"{schema.group_path(schema.MASKS, self.dataset)}/"
                               f"{schema.MASK}", mode="r", zarr_format=3)
        masks = np.asarray(mask.oindex[np.asarray(mask_rows)])
        samples = chunk.start + rows
        with worker_compute():
            device = resolve_device(self.device)
            found = occlude(self.model.cached(device), images, masks,
                            baseline_images(images, self.baseline, self.sigma, samples, self.seed),
                            len(self.mask_classes), self.min_area, device, self.batch_size)
        size = chunk.stop - chunk.start
        write = partial(store.write_region, self.workspace, self.group)
        for name, values in found.items():
            full = np.full((size, *values.shape[1:]), FILLS[name], values.dtype)
            full[rows] = values
            write(name, chunk.start, full)
        store.mark_done(self.workspace, self.group, chunk.start, chunk.stop)
        return chunk.index

    def finalize(self, results: list[int]) -> str:
        store.set_attrs(self.workspace, self.group, **{schema.ATTR_STATUS: schema.STATUS_COMPLETE})
        return self.group


def _check_settings(baseline: str, sigma: float, min_area: float, batch_size: int) -> None:
    if baseline not in BASELINES:
        raise ImportanceError(f"unknown baseline {baseline!r}; valid: {', '.join(BASELINES)}")
    if not (np.isfinite(sigma) and 0 < sigma <= 256):
        raise ImportanceError(f"sigma={sigma}: give a blur of (0, 256] pixels")
    if not 0 < min_area < 1:
        raise ImportanceError(f"min_area={min_area}: give the smallest share of the pixels a mask class must cover, "
                              "in (0, 1), e.g. 0.01")
    if not 1 <= batch_size <= 4096:
        raise ImportanceError(f"batch_size={batch_size}: give 1 to 4096 images per forward pass")


def _mask_rows(workspace: str, dataset: str, images: xr.Dataset) -> tuple[np.ndarray, list[str]]:
    """Per image sample, the row of its mask in ``masks/<dataset>`` (-1: no mask), and the mask classes."""
    group = schema.group_path(schema.MASKS, dataset)
    if not store.group_exists(workspace, group):
        raise ImportanceError(f"dataset {dataset!r} has no masks ({group} does not exist): the importance of "
                              "structures needs a mask class per pixel (a source with masks, e.g. folder masks: "
                              "{dir, suffix, classes})")
    masks = store.open_group(workspace, group)
    if (masks.sizes[schema.Y], masks.sizes[schema.X]) != (images.sizes[schema.Y], images.sizes[schema.X]):
        raise ImportanceError(f"{group}: masks of {masks.sizes[schema.Y]}x{masks.sizes[schema.X]} px, images of "
                              f"{images.sizes[schema.Y]}x{images.sizes[schema.X]} px")
    rows = pd.Index(store.strings(masks[schema.SAMPLE].values)).get_indexer(store.strings(images[schema.SAMPLE].values))
    rows = np.where(has_mask(masks)[np.maximum(rows, 0)], rows, -1)  # a sample not annotated has no mask
    return rows, [str(c) for c in masks.attrs[schema.ATTR_MASK_CLASSES]]


def _select(images: xr.Dataset, split: str | None, with_mask: np.ndarray, dataset: str) -> np.ndarray:
    """A bool per sample: those of ``split`` (every sample when None) that have a mask."""
    keep = with_mask.copy()
    if split is not None:
        splits = store.strings(images[schema.SPLIT].values)
        if split not in schema.SPLITS or not (splits == split).any():
            raise ImportanceError(f"no sample in split {split!r}; splits with samples: {sorted(set(splits.tolist()))}")
        keep &= splits == split
    if not keep.any():
        raise ImportanceError(f"no sample{f' of split {split!r}' if split else ''} of dataset {dataset!r} has a mask "
                              f"({int(with_mask.sum())} of {len(with_mask)} samples have one)")
    return keep


def prepare(workspace: str | os.PathLike[str], model_id: str, dataset: str, *, baseline: str = "blur",
            sigma: float = 4.0, min_area: float = 0.01, split: str | None = "test", seed: int = 0,
            device: str = "cpu", batch_size: int = 32, overwrite: bool = False) -> OcclusionJob:
    """Check the settings and lay out (or resume) ``importance/<dataset>/<model_id>``; ``overwrite``
    replaces a group made with other settings (checkpoint, baseline, sigma, seed, split, min_area, images)."""
    workspace = str(workspace)
    check_device_name(device)
    _check_settings(baseline, sigma, min_area, batch_size)
    model = ModelCatalog(workspace).get(model_id)
    images = store.open_group(workspace, schema.group_path(schema.IMAGES, dataset))
    classes = list(images.attrs[schema.ATTR_CLASSES])
    if model.num_classes != len(classes):
        raise ImportanceError(f"model {model.model_id} has {model.num_classes} outputs but dataset {dataset!r} has "
                              f"{len(classes)} classes {classes}")
    mask_rows, mask_classes = _mask_rows(workspace, dataset, images)
    selected = _select(images, split, mask_rows >= 0, dataset)
    provenance = {"model_id": model.model_id, "checkpoint_sha256": model.sha256, "baseline": baseline,
                  "sigma": sigma if baseline == "blur" else None, "seed": seed if baseline == "noise" else None,
                  "split": split, "min_area": min_area,
                  "images_config_hash": images.attrs[schema.ATTR_PROVENANCE]["config_hash"]}
    group = importance_group(dataset, model.model_id)
    unit = layout.chunk_unit(workspace, f"{schema.group_path(schema.IMAGES, dataset)}/{schema.IMAGE}")
    done = resume_or_lay_out(workspace, group, provenance, overwrite=overwrite, error=ImportanceError,
                             lay_out=partial(_create, workspace, group, images, selected, classes, mask_classes,
                                             provenance, unit))
    pending = ~done & selected

    def payload(start: int, stop: int) -> tuple[np.ndarray, np.ndarray]:
        rows = np.flatnonzero(selected[start:stop])
        return rows, mask_rows[start + rows]

    return OcclusionJob(workspace, dataset, model, tuple(mask_classes), baseline, sigma, min_area, seed, device,
                        batch_size, chunks=pending_chunks(pending, unit, payload), n_chunks=chunk_count(len(selected), unit))


def _create(workspace: str, group: str, images: xr.Dataset, selected: np.ndarray, classes: list[str],
            mask_classes: list[str], provenance: dict[str, Any], unit: int) -> None:
    n, k = images.sizes[schema.SAMPLE], len(mask_classes)
    pair = (schema.SAMPLE, MASK_CLASS)

    def empty(*shape: int, dtype: Any = np.float32) -> da.Array:
        return da.zeros((n, *shape), dtype=dtype, chunks=(unit, *shape))

    ds = xr.Dataset(
        {"predicted": ((schema.SAMPLE,), empty(dtype=np.int16)), "probability": ((schema.SAMPLE,), empty()),
         "occlusion_drop": (pair, empty(k)), "keep_only": (pair, empty(k)), "flipped": (pair, empty(k, dtype=bool)),
         "area": (pair, empty(k))},
        coords={schema.SAMPLE: images[schema.SAMPLE].values.astype(object), MASK_CLASS: np.array(mask_classes, object),
                "selected": (schema.SAMPLE, selected),
                schema.LABEL: (schema.SAMPLE, images[schema.LABEL].values.astype(object)),
                schema.LABEL_INDEX: images[schema.LABEL_INDEX],
                schema.SPLIT: (schema.SAMPLE, images[schema.SPLIT].values.astype(object))},
        attrs={schema.ATTR_CLASSES: classes, schema.ATTR_MASK_CLASSES: mask_classes,
               schema.ATTR_SCHEMA_VERSION: schema.SCHEMA_VERSION, schema.ATTR_PROVENANCE: provenance},
    )
    for name, fill in FILLS.items():  # also where no chunk task writes (zarr's fill value)
        ds[name].encoding["fill_value"] = fill
    removed = f"the class's pixels replaced by the {provenance['baseline']} baseline"
    ds["probability"].attrs["long_name"] = "probability of the predicted class (clean image)"
    ds["occlusion_drop"].attrs["long_name"] = f"probability of the clean predicted class, clean minus with {removed}"
    ds["keep_only"].attrs["long_name"] = "probability of the clean predicted class with every other pixel replaced"
    ds["flipped"].attrs["long_name"] = (f"decision changed with {removed} (false where occlusion_drop is NaN: "
                                        "class not occluded)")
    ds["area"].attrs["long_name"] = "share of the image's pixels in the mask class"
    store.create_template(workspace, group, ds)


def measure_importance(workspace: str | os.PathLike[str], model_id: str, dataset: str, *, baseline: str = "blur",
                       sigma: float = 4.0, min_area: float = 0.01, split: str | None = "test", seed: int = 0,
                       device: str = "cpu", batch_size: int = 32, overwrite: bool = False, client: Any = None,
                       progress: ProgressFn | None = None, runner: Callable[[ChunkJob], Any] | None = None) -> str:
    """Write ``importance/<dataset>/<model_id>``; returns the group path. Resumes an unfinished run."""
    runner = runner or partial(run_job, client=client, progress=progress)
    entry = ModelCatalog(workspace).get(model_id)
    with group_lock(workspace, importance_group(dataset, entry.model_id), f"importance of structures for {entry.model_id}"):
        return runner(prepare(workspace, entry.model_id, dataset, baseline=baseline, sigma=sigma, min_area=min_area,
                              split=split, seed=seed, device=device, batch_size=batch_size, overwrite=overwrite))


# ------------------------------------------------------------------ reading and summing up

def open_importance(workspace: str | os.PathLike[str], dataset: str, model_id: str) -> xr.Dataset:
    """The stored importance of the selected samples (complete group), loaded (small)."""
    ds = store.open_group(workspace, importance_group(dataset, model_id))
    return ds.isel({schema.SAMPLE: np.flatnonzero(ds["selected"].values)}).load()


def relevance_shares(workspace: str | os.PathLike[str], dataset: str, model_id: str,
                     samples: np.ndarray) -> xr.DataArray | None:
    """Share of each stored attribution map's relevance mass in each mask class
    (:func:`xaiflow.aggregate.mask_mass`), ``(sample, xai_method, mask_class)`` for ``samples`` (ids of samples
    with a mask, as :func:`open_importance` gives them; in that order, NaN where a sample lacks a map of some
    method); None when the model has no maps of one explained class per sample."""
    group = saliency_group(dataset, model_id)
    if not store.group_exists(workspace, group) or store.group_attrs(workspace, group).get("target") == "all":
        return None
    sal = open_saliency(workspace, dataset, model_id, with_images=False)
    ids = store.strings(sal[schema.SAMPLE].values)
    rows = np.flatnonzero(sal["done"].all(METHOD).values & np.isin(ids, store.strings(samples)))
    if not len(rows):
        return None
    masks = store.open_group(workspace, schema.group_path(schema.MASKS, dataset))
    mask_rows = pd.Index(store.strings(masks[schema.SAMPLE].values)).get_indexer(ids[rows])
    masks = masks.isel({schema.SAMPLE: mask_rows}).assign_coords({schema.SAMPLE: sal[schema.SAMPLE].values[rows]})
    mass = mask_mass(sal.isel({schema.SAMPLE: rows}), masks)["mass"].compute()
    return mass.assign_coords({schema.SAMPLE: ids[rows]}).reindex({schema.SAMPLE: store.strings(samples)})


def _spread(values: np.ndarray) -> tuple[float, float]:
    return (float(values.mean()), float(values.std())) if len(values) else (np.nan, np.nan)


def _cell(ds: xr.Dataset, keep: np.ndarray, mask_class: str, shares: xr.DataArray | None) -> dict[str, Any]:
    """Statistics over the kept samples in which ``mask_class`` was occluded (module docstring)."""
    one = ds.sel({MASK_CLASS: mask_class})
    present = keep & np.isfinite(one["occlusion_drop"].values)
    row: dict[str, Any] = {"n": int(present.sum())}
    for name in ("occlusion_drop", "keep_only", "area"):
        row[name], row[f"{name}_std"] = _spread(one[name].values[present].astype(float))
    row["flip_rate"] = float(one["flipped"].values[present].mean()) if present.any() else np.nan
    if shares is not None:
        area = one["area"].values
        for method in store.strings(shares[METHOD].values).tolist():
            share = shares.sel({METHOD: method, MASK_CLASS: mask_class}).values
            mapped = present & np.isfinite(share)
            row[f"share_{method}"] = float(share[mapped].mean()) if mapped.any() else np.nan
            row[f"ratio_{method}"] = row[f"share_{method}"] / float(area[mapped].mean()) if mapped.any() else np.nan
    return row


def summarize(ds: xr.Dataset, shares: xr.DataArray | None = None) -> pd.DataFrame:
    """Per true class (and ``all``) and mask class present in its images: ``n`` samples, mean and std of
    ``occlusion_drop``, ``keep_only`` and ``area``, and the ``flip_rate``; with ``shares``
    (:func:`relevance_shares`), per method the mean relevance share (``share_<method>``) and its ratio to
    the mean area share over the same samples (``ratio_<method>``; above 1: the method puts more relevance
    on that phase than its area). ``ds``: :func:`open_importance`."""
    labels = store.strings(ds[schema.LABEL].values)
    rows = []
    for name in [*ds.attrs[schema.ATTR_CLASSES], "all"]:
        keep = labels == name if name != "all" else np.ones(len(labels), bool)
        for mask_class in store.strings(ds[MASK_CLASS].values).tolist():
            cell = _cell(ds, keep, mask_class, shares)
            if cell["n"]:
                rows.append({"class": name, MASK_CLASS: mask_class, **cell})
    return pd.DataFrame(rows)


def _removal(mask_class: str, drop: float) -> str:
    return f"removing {mask_class!r} " + ("by " if drop >= 0 else "raises it by ") + f"{abs(drop):.2f}"


def sentences(summary: pd.DataFrame) -> list[str]:
    """One sentence per class of :func:`summarize`'s table naming the mask class whose removal hurts the
    predicted class's probability most (mean ± std, n, how often the decision changed), the others' mean
    drops, and what that class alone leaves of the probability (keep only)."""
    out = []
    for name, rows in summary.groupby("class", sort=False):
        rows = rows.sort_values("occlusion_drop", ascending=False)
        top = rows.iloc[0]
        verb = "lowers" if top["occlusion_drop"] >= 0 else "raises"
        said = (f"{name}: removing {top[MASK_CLASS]!r} {verb} the predicted class's probability by "
                f"{abs(top['occlusion_drop']):.2f} ± {top['occlusion_drop_std']:.2f} (n={top['n']}, decision changed in "
                f"{top['flip_rate']:.0%})")
        said += "".join(f"; {_removal(r[MASK_CLASS], r['occlusion_drop'])}" for _, r in rows.iloc[1:].iterrows())
        out.append(f"{said}; {top[MASK_CLASS]!r} alone keeps it at {top['keep_only']:.2f}")
    return out


def _bars(ax: Any, table: pd.DataFrame, errors: pd.DataFrame | None, ylabel: str) -> None:
    """Grouped bars: one group per row of ``table``, one bar per column (with ``errors`` as error bars)."""
    width = 0.8 / max(1, table.shape[1])
    x = np.arange(len(table))
    for j, column in enumerate(table.columns):
        yerr = None if errors is None else errors[column].values
        ax.bar(x + (j - (table.shape[1] - 1) / 2) * width, table[column].values, width, yerr=yerr, capsize=2,
               label=str(column))
    ax.set_xticks(x, table.index, fontsize=8)
    ax.axhline(0, color="k", linewidth=0.5)
    ax.set_ylabel(ylabel, fontsize=8)
    ax.legend(fontsize=7)


def importance_figure(summary: pd.DataFrame, path: str | os.PathLike[str], title: str = "") -> Path:
    """Mean occlusion drop (± std) per true class (groups) and mask class (bars); with relevance shares in
    ``summary``, a second panel: per mask class, its area share beside each method's relevance share (all
    samples)."""
    from matplotlib.figure import Figure

    from xaiflow.figures import save_figure

    methods = [c.removeprefix("share_") for c in summary.columns if c.startswith("share_")]
    classes = list(dict.fromkeys(summary["class"]))
    mask_classes = list(dict.fromkeys(summary[MASK_CLASS]))
    fig = Figure(figsize=(4.5 + 1.2 * len(classes) + (4 if methods else 0), 3.4))
    axes = fig.subplots(1, 2 if methods else 1, squeeze=False)[0]
    grid = partial(summary.pivot, index="class", columns=MASK_CLASS)
    _bars(axes[0], grid(values="occlusion_drop").reindex(index=classes, columns=mask_classes),
          grid(values="occlusion_drop_std").reindex(index=classes, columns=mask_classes),
          "drop of the predicted class's probability")
    axes[0].set_title("removing each phase (mean ± std)", fontsize=9)
    if methods:
        overall = summary[summary["class"] == "all"].set_index(MASK_CLASS).reindex(mask_classes)
        shares = overall[["area", *(f"share_{m}" for m in methods)]].set_axis(["area", *methods], axis=1)
        _bars(axes[1], shares, None, "share of the image (area) or of the relevance")
        axes[1].set_title("relevance share vs area share (all classes)", fontsize=9)
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return save_figure(fig, path)
