"""Predictive uncertainty: MC dropout and deep ensembles, per sample, and their calibration.

How sure is the model, and does it know when it does not know? Two estimates of the
predictive distribution ``p(y | x)`` from ``T`` stochastic draws ``p_t(y | x)``:

* **MC dropout** (Gal & Ghahramani 2016): one model, its dropout layers kept active at
  inference, ``T`` passes (``passes``), each seeded by sample chunk, so a re-run or a retried
  chunk draws the same masks;
* **deep ensemble** (Lakshminarayanan et al. 2017): several models trained on the same data
  with different seeds (``xaiflow train --seeds 0,1,2``), one pass each (or ``passes`` MC
  dropout passes each, the two combined).

From the draws, per sample: the predictive mean ``p = mean_t p_t``, its ``entropy`` H[p]
(total uncertainty), the ``expected_entropy`` mean_t H[p_t] (aleatoric: noise in the data the
model expects) and their difference, the ``mutual_information`` between the prediction and
the model (epistemic: disagreement between draws; 0 for a deterministic model).

Stored as ``uncertainty/<dataset>/<key>`` (a chunked job, :mod:`xaiflow.jobs`; resumable, one
task per image chunk): ``probabilities(sample, draw, class)`` of every draw (with ``member`` and
``pass_index`` per draw), the summaries above, ``predicted`` and ``correct``. ``key`` is the model
id for MC dropout, ``ensemble-<hash of the member ids>`` for an ensemble.

Calibration (:func:`calibration`): the expected calibration error (ECE, Guo et al. 2017) of the
predictive mean's confidence over equal-width bins, and the reliability diagram
(:func:`reliability_figure`). :func:`disagreement_relation` asks whether uncertain samples are
those whose attribution maps disagree across methods (Spearman correlation over samples).
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any, Callable

import dask.array as da
import numpy as np
import pandas as pd
import torch
import xarray as xr
from torch import nn

from xaiflow import layout, schema, store
from xaiflow.device import check_device_name, resolve_device
from xaiflow.errors import XaiflowError
from xaiflow.jobs import Chunk, ChunkJob, chunk_count, pending_chunks, resume_or_lay_out, run_job
from xaiflow.locks import group_lock
from xaiflow.models.catalog import ModelCatalog, ModelEntry
from xaiflow.preprocess import to_input
from xaiflow.runtime import ProgressFn, worker_compute

UNCERTAINTY = "uncertainty"
CLASS = "class"
DRAW = "draw"
#: largest number of draws per sample (bounded memory: probabilities are sample x draw x class)
MAX_DRAWS = 1000
#: the per-sample summaries (besides ``probabilities`` and ``predicted``)
SUMMARIES = ("entropy", "expected_entropy", "mutual_information", "confidence")


class UncertaintyError(XaiflowError):
    """Uncertainty cannot be estimated as asked (no dropout for MC dropout, mismatched ensemble, ...)."""


def uncertainty_group(dataset: str, key: str) -> str:
    return schema.group_path(UNCERTAINTY, dataset, key)


def ensemble_key(model_ids: list[str]) -> str:
    """The group key of a set of models: one model's id, or ``ensemble-<hash>`` of the sorted ids."""
    if len(model_ids) == 1:
        return model_ids[0]
    return "ensemble-" + hashlib.sha1(",".join(sorted(model_ids)).encode()).hexdigest()[:10]


def dropout_layers(model: nn.Module) -> list[nn.Module]:
    """The model's dropout layers that drop anything (p > 0)."""
    return [m for m in model.modules() if isinstance(m, nn.modules.dropout._DropoutNd) and m.p > 0]


def entropy(p: np.ndarray, axis: int = -1) -> np.ndarray:
    """Shannon entropy in nats along ``axis`` (0 log 0 = 0)."""
    with np.errstate(divide="ignore", invalid="ignore"):
        return -np.where(p > 0, p * np.log(p), 0.0).sum(axis=axis)


def summarize_draws(probs: np.ndarray) -> dict[str, np.ndarray]:
    """(sample, draw, class) probabilities -> predictive mean and the per-sample summaries."""
    mean = probs.mean(axis=1)
    total = entropy(mean)
    expected = entropy(probs).mean(axis=1)
    return {"mean_probability": mean.astype(np.float32), "entropy": total.astype(np.float32),
            "expected_entropy": expected.astype(np.float32),
            # >= 0 mathematically (Jensen); clipped against rounding
            "mutual_information": np.maximum(total - expected, 0.0).astype(np.float32),
            "confidence": mean.max(axis=1).astype(np.float32)}


#: forward passes per batch (a write unit can be a shard of hundreds of images)
BATCH = 32


def stochastic_probabilities(model: nn.Module, x: torch.Tensor, passes: int, seed: int) -> np.ndarray:
    """(B, passes, K) softmax outputs, in batches of :data:`BATCH` (B >= 1): with ``passes`` > 1 the dropout
    layers are active (MC dropout), batch norm stays in eval mode. The draws come from torch's global
    generator seeded with ``seed`` under :func:`xaiflow.attribution.base.seeded` (its lock keeps other
    threads of the process, which share the cached model, from drawing or switching dropout meanwhile;
    the caller's generator state is restored), so the masks depend on the seed only."""
    from xaiflow.attribution.base import seeded

    model.eval()
    layers = dropout_layers(model) if passes > 1 else []
    out = []
    with seeded(seed), torch.no_grad():  # also for one pass: no other thread has dropout on meanwhile
        for m in layers:
            m.train()
        try:
            for _ in range(passes):
                out.append(np.concatenate([torch.softmax(model(x[b:b + BATCH]).float(), dim=1).cpu().numpy()
                                           for b in range(0, len(x), BATCH)]))
        finally:
            for m in layers:
                m.eval()
    return np.stack(out, axis=1)


@dataclass(frozen=True)
class UncertaintyJob(ChunkJob):
    """Every draw of every member for each image chunk, with the per-sample summaries."""

    stage = "uncertainty"
    dataset: str
    members: tuple[ModelEntry, ...]
    passes: int
    seed: int
    device: str
    key: str

    @property
    def group(self) -> str:
        return uncertainty_group(self.dataset, self.key)

    def run_chunk(self, chunk: Chunk) -> int:
        image = f"{schema.group_path(schema.IMAGES, self.dataset)}/{schema.IMAGE}"
        images = store.read_region(self.workspace, image, chunk.start, chunk.stop)
        device = resolve_device(self.device)
        draws = []
        with worker_compute():
            for i, member in enumerate(self.members):
                model = member.cached(device)
                x = to_input(images).to(device)
                draws.append(stochastic_probabilities(model, x, self.passes, seed=self.seed + 7919 * chunk.index + i))
        probs = np.concatenate(draws, axis=1).astype(np.float32)
        summary = summarize_draws(probs)
        labels = store.read_region(self.workspace, f"{self.group}/{schema.LABEL_INDEX}", chunk.start, chunk.stop)
        predicted = summary["mean_probability"].argmax(1)
        write = partial(store.write_region, self.workspace, self.group)
        write("probabilities", chunk.start, probs)
        write("mean_probability", chunk.start, summary["mean_probability"])
        for name in SUMMARIES:
            write(name, chunk.start, summary[name])
        write("predicted", chunk.start, predicted.astype(np.int16))
        write("correct", chunk.start, predicted == labels)
        store.mark_done(self.workspace, self.group, chunk.start, chunk.stop)
        return chunk.index

    def finalize(self, results: list[int]) -> str:
        store.set_attrs(self.workspace, self.group, **{schema.ATTR_STATUS: schema.STATUS_COMPLETE})
        return self.group


def _provenance(members: list[ModelEntry], passes: int, seed: int, images: xr.Dataset) -> dict[str, Any]:
    return {"kind": "mc_dropout" if len(members) == 1 else "ensemble", "passes": passes, "seed": seed,
            "models": [m.model_id for m in members], "checkpoint_sha256": [m.sha256 for m in members],
            "images_config_hash": images.attrs[schema.ATTR_PROVENANCE]["config_hash"]}


def _check_members(members: list[ModelEntry], passes: int, classes: list[str], dataset: str) -> None:
    if not members:
        raise UncertaintyError("no model given")
    if not 1 <= passes <= MAX_DRAWS or passes * len(members) > MAX_DRAWS:
        raise UncertaintyError(f"passes={passes} with {len(members)} model(s): give 1 to {MAX_DRAWS} draws in all")
    if len(members) == 1 and passes < 2:
        raise UncertaintyError("one model needs passes >= 2 (MC dropout draws); or give several models (an ensemble)")
    ids = [m.model_id for m in members]
    if len(set(ids)) != len(ids):
        raise UncertaintyError(f"a model is named twice: {ids}")
    for m in members:
        if m.num_classes != len(classes):
            raise UncertaintyError(f"model {m.model_id} has {m.num_classes} outputs but dataset {dataset!r} has "
                                   f"{len(classes)} classes {classes}")
        if passes > 1 and not dropout_layers(m.load()):
            raise UncertaintyError(f"model {m.model_id} ({m.arch}) has no dropout layer with p > 0, so MC dropout "
                                   "passes would all be equal; train it with model_params: {dropout: 0.2} or use "
                                   "an ensemble (several models, passes 1)")


def prepare(workspace: str | os.PathLike[str], model_ids: list[str], dataset: str, *, passes: int = 20,
            seed: int = 0, device: str = "cpu", overwrite: bool = False) -> UncertaintyJob:
    """Check the models and lay out (or resume) ``uncertainty/<dataset>/<key>``."""
    workspace = str(workspace)
    check_device_name(device)
    catalog = ModelCatalog(workspace)
    members = sorted((catalog.get(m) for m in model_ids), key=lambda m: m.model_id)  # an ensemble has no order
    images = store.open_group(workspace, schema.group_path(schema.IMAGES, dataset))
    classes = list(images.attrs[schema.ATTR_CLASSES])
    _check_members(members, passes, classes, dataset)
    key = ensemble_key([m.model_id for m in members])
    group = uncertainty_group(dataset, key)
    provenance = _provenance(members, passes, seed, images)
    n = images.sizes[schema.SAMPLE]
    chunk = layout.write_unit(workspace, f"{schema.group_path(schema.IMAGES, dataset)}/{schema.IMAGE}")
    done = resume_or_lay_out(workspace, group, provenance, overwrite=overwrite, error=UncertaintyError,
                             lay_out=partial(_create, workspace, group, images, members, passes, classes, provenance,
                                             chunk))
    chunks = pending_chunks(~done, chunk)
    return UncertaintyJob(workspace, dataset, tuple(members), passes, seed, device, key, chunks=chunks,
                          n_chunks=chunk_count(n, chunk))


def _create(workspace: str, group: str, images: xr.Dataset, members: list[ModelEntry], passes: int,
            classes: list[str], provenance: dict[str, Any], chunk: int) -> None:
    n, k, draws = images.sizes[schema.SAMPLE], len(classes), passes * len(members)

    def empty(*shape: int, dtype: Any = np.float32) -> da.Array:
        return da.zeros((n, *shape), dtype=dtype, chunks=(chunk, *shape))

    variables = {"probabilities": ((schema.SAMPLE, DRAW, CLASS), empty(draws, k)),
                 "mean_probability": ((schema.SAMPLE, CLASS), empty(k)),
                 "predicted": ((schema.SAMPLE,), empty(dtype=np.int16)),
                 "correct": ((schema.SAMPLE,), empty(dtype=bool)),
                 **{name: ((schema.SAMPLE,), empty()) for name in SUMMARIES}}
    ds = xr.Dataset(
        variables,
        coords={schema.SAMPLE: images[schema.SAMPLE].values.astype(object), CLASS: np.array(classes, object),
                "member": (DRAW, np.repeat([m.model_id for m in members], passes).astype(object)),
                "pass_index": (DRAW, np.tile(np.arange(passes), len(members))),
                schema.LABEL_INDEX: images[schema.LABEL_INDEX],
                schema.LABEL: (schema.SAMPLE, images[schema.LABEL].values.astype(object)),
                schema.SPLIT: (schema.SAMPLE, images[schema.SPLIT].values.astype(object))},
        attrs={schema.ATTR_CLASSES: classes, schema.ATTR_SCHEMA_VERSION: schema.SCHEMA_VERSION,
               schema.ATTR_PROVENANCE: provenance},
    )
    ds["entropy"].attrs.update(long_name="predictive entropy (total uncertainty)", units="nat")
    ds["expected_entropy"].attrs.update(long_name="expected entropy of the draws (aleatoric)", units="nat")
    ds["mutual_information"].attrs.update(long_name="mutual information (epistemic)", units="nat")
    ds["confidence"].attrs.update(long_name="largest mean class probability", units="1")
    store.create_template(workspace, group, ds)


def estimate_uncertainty(workspace: str | os.PathLike[str], model_ids: list[str], dataset: str, *, passes: int = 20,
                         seed: int = 0, device: str = "cpu", overwrite: bool = False, client: Any = None,
                         progress: ProgressFn | None = None,
                         runner: Callable[[ChunkJob], Any] | None = None) -> str:
    """Write ``uncertainty/<dataset>/<key>`` for one model (MC dropout, ``passes`` >= 2) or an
    ensemble (several models, ``passes`` each); returns the group path. Resumes an unfinished run."""
    runner = runner or partial(run_job, client=client, progress=progress)
    catalog = ModelCatalog(workspace)
    ids = [catalog.get(m).model_id for m in model_ids]
    with group_lock(workspace, uncertainty_group(dataset, ensemble_key(ids)), f"uncertainty of {', '.join(ids)}"):
        return runner(prepare(workspace, ids, dataset, passes=passes, seed=seed, device=device, overwrite=overwrite))


def open_uncertainty(workspace: str | os.PathLike[str], group: str, split: str | None = None) -> xr.Dataset:
    """The stored group (complete), the samples of ``split`` only when given, loaded (small)."""
    ds = store.open_group(workspace, group)
    if split:
        keep = store.strings(ds[schema.SPLIT].values) == split
        if not keep.any():
            raise UncertaintyError(f"{group}: no sample in split {split!r}")
        ds = ds.isel({schema.SAMPLE: np.flatnonzero(keep)})
    return ds.drop_vars("probabilities").load()


def per_class(ds: xr.Dataset) -> list[dict[str, Any]]:
    """Per true class (and all): samples, accuracy, mean entropy, expected entropy, mutual information,
    and the mean of each for correct and wrong predictions (is the model less sure when wrong?)."""
    labels = store.strings(ds[schema.LABEL].values)
    rows = []
    for name in [*ds.attrs[schema.ATTR_CLASSES], "all"]:
        sel = labels == name if name != "all" else np.ones(len(labels), bool)
        if not sel.any():
            continue
        correct = ds["correct"].values[sel]
        mi = ds["mutual_information"].values[sel]
        row = {"class": name, "samples": int(sel.sum()), "accuracy": float(correct.mean()),
               "entropy": float(ds["entropy"].values[sel].mean()),
               "expected_entropy": float(ds["expected_entropy"].values[sel].mean()),
               "mutual_information": float(mi.mean()),
               "entropy_correct": float(ds["entropy"].values[sel][correct].mean()) if correct.any() else np.nan,
               "entropy_wrong": float(ds["entropy"].values[sel][~correct].mean()) if (~correct).any() else np.nan}
        rows.append(row)
    return rows


def calibration(ds: xr.Dataset, n_bins: int = 10) -> dict[str, Any]:
    """Expected calibration error of the predictive mean: sum over equal-width confidence bins of
    (bin share) x |accuracy - mean confidence|, with the bins (for the reliability diagram)."""
    if not 2 <= n_bins <= 100:
        raise UncertaintyError(f"n_bins={n_bins}: give 2 to 100 bins")
    conf, correct = ds["confidence"].values.astype(float), ds["correct"].values.astype(float)
    edges = np.linspace(0.0, 1.0, n_bins + 1)
    which = np.clip(np.digitize(conf, edges[1:-1], right=True), 0, n_bins - 1)
    bins, ece = [], 0.0
    for b in range(n_bins):
        sel = which == b
        count = int(sel.sum())
        acc = float(correct[sel].mean()) if count else np.nan
        mean_conf = float(conf[sel].mean()) if count else np.nan
        if count:
            ece += count / len(conf) * abs(acc - mean_conf)
        bins.append({"lower": float(edges[b]), "upper": float(edges[b + 1]), "count": count,
                     "confidence": mean_conf, "accuracy": acc})
    return {"ece": float(ece), "accuracy": float(correct.mean()), "mean_confidence": float(conf.mean()),
            "samples": len(conf), "bins": bins}


def sample_disagreement(sal: xr.Dataset) -> pd.Series:
    """Per sample with maps of every method: 1 - the mean Spearman correlation of its methods'
    |maps| over the method pairs (0: the methods agree on the ranking of pixels, up to 2)."""
    from xaiflow.aggregate import _agreement_block
    from xaiflow.saliency import METHOD

    done = np.flatnonzero(sal["done"].all(METHOD).values)
    m = sal.sizes[METHOD]
    if m < 2:
        raise UncertaintyError("attribution disagreement needs maps of at least two methods")
    values = []
    for start in range(0, len(done), 256):
        rows = done[start:start + 256]
        block = sal["saliency"].isel({schema.SAMPLE: rows}).transpose(schema.SAMPLE, METHOD, ...).values
        rho = _agreement_block(block, 0.1)[:, 0]
        off = ~np.eye(m, dtype=bool)
        values.append(1.0 - rho[:, off].mean(axis=1))
    ids = store.strings(sal[schema.SAMPLE].values)[done]
    return pd.Series(np.concatenate(values), index=ids, name="disagreement")


def disagreement_relation(unc: xr.Dataset, sal: xr.Dataset) -> dict[str, Any]:
    """Spearman correlation, over the samples in both, between each uncertainty summary and the
    attribution disagreement across methods: do the methods disagree where the model is unsure?"""
    from scipy.stats import spearmanr

    dis = sample_disagreement(sal)
    ids = store.strings(unc[schema.SAMPLE].values)
    frame = pd.DataFrame({k: unc[k].values for k in ("entropy", "mutual_information")}, index=ids).join(dis, how="inner")
    frame = frame.dropna()
    if len(frame) < 3:
        raise UncertaintyError(f"only {len(frame)} samples have both uncertainty and maps of every method")
    out: dict[str, Any] = {"samples": len(frame), "frame": frame}
    for k in ("entropy", "mutual_information"):
        res = spearmanr(frame[k], frame["disagreement"])
        out[k] = {"rho": float(res.statistic), "p": float(res.pvalue)}
    return out


def reliability_figure(cal: dict[str, Any], path: str | os.PathLike[str], title: str = "") -> Path:
    """Reliability diagram (accuracy against confidence per bin, the diagonal is perfect
    calibration) beside the histogram of confidences."""
    import matplotlib.pyplot as plt

    from xaiflow.figures import save_figure

    bins = pd.DataFrame(cal["bins"])
    centers, width = (bins["lower"] + bins["upper"]) / 2, bins["upper"] - bins["lower"]
    fig, (ax, hist) = plt.subplots(1, 2, figsize=(8, 3.6))
    ax.bar(centers, bins["accuracy"].fillna(0), width=width, edgecolor="k", color="#4c72b0", label="accuracy")
    ax.plot([0, 1], [0, 1], "--", color="gray", label="perfectly calibrated")
    ax.set(xlabel="confidence (mean predicted probability)", ylabel="accuracy", xlim=(0, 1), ylim=(0, 1),
           title=f"ECE {cal['ece']:.3f} ({cal['samples']} samples)")
    ax.legend(loc="upper left", fontsize=8)
    hist.bar(centers, bins["count"], width=width, edgecolor="k", color="#dd8452")
    hist.set(xlabel="confidence", ylabel="samples", xlim=(0, 1), title="confidence histogram")
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return save_figure(fig, path)


def relation_figure(relation: dict[str, Any], path: str | os.PathLike[str]) -> Path:
    """Scatter of mutual information (and entropy) against attribution disagreement, with Spearman's rho."""
    import matplotlib.pyplot as plt

    from xaiflow.figures import save_figure

    frame = relation["frame"]
    fig, axes = plt.subplots(1, 2, figsize=(8, 3.4))
    for ax, k in zip(axes, ("entropy", "mutual_information")):
        ax.scatter(frame["disagreement"], frame[k], s=8, alpha=0.6)
        ax.set(xlabel="attribution disagreement (1 - mean Spearman across methods)", ylabel=f"{k} (nat)",
               title=f"Spearman rho {relation[k]['rho']:.2f} (p={relation[k]['p']:.2g})")
        ax.xaxis.label.set_size(8)
    fig.tight_layout()
    return save_figure(fig, path)
