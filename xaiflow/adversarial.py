"""Adversarial inspection with the Fisher information (after Martin & Elster, Neurocomputing 2020).

An adversarial example is a small perturbation of a correctly handled micrograph that changes
the model's decision. Can we tell one from a clean image without knowing the attack? Martin &
Elster propose the Fisher information of the predictive distribution ``p(y | x, theta)``:

    F(x) = sum_k p_k(x) g_k g_k^T,   g_k = grad_theta log p_k(x)

which measures how much the output distribution at ``x`` reacts to the parameters; adversarial
inputs sit where it is large. Three summaries, none of which forms the (params x params) matrix:

* ``fisher_trace``: ``tr F = sum_k p_k |g_k|^2`` (one backward pass per class);
* ``fisher_quadratic``: ``v^T F v`` along the unit direction ``v = g_c / |g_c|`` of the predicted
  class ``c``: ``sum_k p_k (g_k . v)^2``;
* ``fisher_input``: the sum of the **Fisher-information sensitivity map** ``fis_map``, the
  diagonal of the Fisher information of a relative perturbation of each input pixel
  (``x_j -> x_j (1 + e_j)``): ``sum_k p_k (x_j d log p_k / d x_j)^2``. The map says which pixels the
  output distribution is most sensitive to, for clean and adversarial inputs side by side.

Attacks (untargeted, against the clean prediction, in the model's input space of standardized
images, L-infinity budget ``epsilon``): FGSM (a signed-gradient step, Goodfellow et al. 2015)
of the smallest size that flips the decision, and PGD (up to ``steps`` steps of ``step_size`` from
a seeded random start, projected back into the ball, Madry et al. 2018) stopped at the first
flip. Both give examples just across the decision boundary: slight perturbations, as small as
the attack finds, rather than inputs driven deep into another class.

Stored as ``adversarial/<dataset>/<model_id>`` (a chunked job, :mod:`xaiflow.jobs`): every score
per ``(sample, input)`` with ``input`` in clean/fgsm/pgd, the predictions, the perturbation size,
whether the attack flipped the decision and the maps. Only the chosen subset (``split``, at
most ``max_samples``) is computed; other samples keep the fill value (NaN) and ``selected`` false.
:func:`detection_auc` gives the ROC AUC of each score for telling clean from successful
adversarial inputs.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import dask.array as da
import numpy as np
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

ADVERSARIAL = "adversarial"
INPUT = "input"
INPUTS = ("clean", "fgsm", "pgd")
SCORES = ("fisher_trace", "fisher_quadratic", "fisher_input")
#: most samples one run attacks (each costs classes x inputs backward passes per sample)
MAX_SAMPLES = 100_000
#: images per attack pass
BATCH = 32


class AdversarialError(XaiflowError):
    """The adversarial inspection cannot run as asked (bad budget, empty subset, ...)."""


def adversarial_group(dataset: str, model_id: str) -> str:
    return schema.group_path(ADVERSARIAL, dataset, model_id)


@dataclass(frozen=True)
class AttackSettings:
    """L-infinity budget and PGD schedule, in units of the standardized input (std 1 per image)."""

    epsilon: float = 0.1
    steps: int = 10
    step_size: float = 0.025
    seed: int = 0

    def check(self) -> None:
        if not 0 < self.epsilon <= 4:
            raise AdversarialError(f"epsilon={self.epsilon}: give a budget in (0, 4] standardized units")
        if not 1 <= self.steps <= 1000:
            raise AdversarialError(f"steps={self.steps}: give 1 to 1000 PGD steps")
        if not 0 < self.step_size <= self.epsilon:
            raise AdversarialError(f"step_size={self.step_size}: give a step in (0, epsilon={self.epsilon}]")


def _input_gradient(model: nn.Module, x: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    x = x.detach().requires_grad_(True)
    loss = nn.functional.cross_entropy(model(x), target, reduction="sum")
    return torch.autograd.grad(loss, x)[0]


def _flips(model: nn.Module, x: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model(x).argmax(1) != target


def fgsm(model: nn.Module, x: torch.Tensor, target: torch.Tensor, epsilon: float, search: int = 8) -> torch.Tensor:
    """Signed-gradient steps along one direction (FGSM), each image moved by the smallest size in
    ``(0, epsilon]`` that changes its decision (``search`` bisection steps), or by ``epsilon`` when
    none does: an example just across the decision boundary, as small as the attack allows."""
    direction = _input_gradient(model, x, target).sign()
    low = torch.zeros(len(x), device=x.device)
    high = torch.full((len(x),), float(epsilon), device=x.device)
    flips = _flips(model, x + epsilon * direction, target)
    for _ in range(search):
        mid = (low + high) / 2
        now = _flips(model, x + mid[:, None, None, None] * direction, target)
        high = torch.where(now, mid, high)
        low = torch.where(now, low, mid)
    size = torch.where(flips, high, torch.full_like(high, float(epsilon)))
    return (x + size[:, None, None, None] * direction).detach()


def pgd(model: nn.Module, x: torch.Tensor, target: torch.Tensor, s: AttackSettings,
        generator: torch.Generator) -> torch.Tensor:
    """Up to ``s.steps`` signed-gradient steps from a random start in the ball, projected back after
    each; an image stops at the first step that changes its decision (early stopping keeps the
    example near the boundary instead of driving it deep into the wrong class)."""
    noise = (torch.rand(x.shape, generator=generator) * 2 - 1).to(x.device) * s.epsilon
    adv = x + noise
    active = ~_flips(model, adv, target)
    for _ in range(s.steps):
        if not active.any():
            break
        step = adv + s.step_size * _input_gradient(model, adv, target).sign()
        step = torch.max(torch.min(step, x + s.epsilon), x - s.epsilon)
        adv = torch.where(active[:, None, None, None], step, adv).detach()
        active &= ~_flips(model, adv, target)
    return adv


def fisher_scores(model: nn.Module, x: torch.Tensor) -> dict[str, Any]:
    """For one input ``(1, C, H, W)``: probabilities, the trace and quadratic form of the parameter
    Fisher information, and the input Fisher-information sensitivity map (module docstring)."""
    params = [p for p in model.parameters() if p.requires_grad]
    x = x.detach().requires_grad_(True)
    log_p = torch.log_softmax(model(x).float(), dim=1)[0]
    p = log_p.exp().detach()
    k_count, c = len(log_p), int(p.argmax())

    def grads(k: int) -> tuple[torch.Tensor, torch.Tensor]:
        g = torch.autograd.grad(log_p[k], [x, *params], retain_graph=True)
        return g[0], torch.cat([t.reshape(-1) for t in g[1:]])

    # the predicted class's direction first, then each class's terms summed as they come: one
    # parameter-sized vector at a time (never K of them, never the matrix)
    x_grad, g_c = grads(c)
    v = g_c / g_c.norm().clamp_min(1e-12)
    fis = torch.zeros_like(x)
    trace = quadratic = 0.0
    for k in range(k_count):
        xg, g = (x_grad, g_c) if k == c else grads(k)
        fis += p[k] * (x.detach() * xg) ** 2
        trace += float(p[k] * (g * g).sum())
        quadratic += float(p[k] * (g @ v) ** 2)
    return {"probabilities": p.cpu().numpy(), "fisher_trace": trace, "fisher_quadratic": quadratic,
            "fis_map": fis[0].sum(0).cpu().numpy(), "fisher_input": float(fis.sum())}


@dataclass(frozen=True)
class AdversarialJob(ChunkJob):
    """Attacks and Fisher scores for the selected samples of each image chunk."""

    stage = "adversarial"
    dataset: str
    model: ModelEntry
    attack: AttackSettings
    device: str

    @property
    def group(self) -> str:
        return adversarial_group(self.dataset, self.model.model_id)

    def run_chunk(self, chunk: Chunk) -> int:
        rows = np.asarray(chunk.payload)  # selected samples of the chunk, relative to its start
        image = f"{schema.group_path(schema.IMAGES, self.dataset)}/{schema.IMAGE}"
        images = store.read_region(self.workspace, image, chunk.start, chunk.stop)[rows]
        device = resolve_device(self.device)
        n, h, w = images.shape
        out = {name: np.full((chunk.stop - chunk.start, len(INPUTS)), np.nan, np.float32)
               for name in (*SCORES, "confidence", "perturbation")}
        predicted = np.full((chunk.stop - chunk.start, len(INPUTS)), -1, np.int16)
        maps = np.full((chunk.stop - chunk.start, len(INPUTS), h, w), np.nan, np.float32)
        with worker_compute():
            model = self.model.cached(device)
            model.eval()
            x = to_input(images).to(device)
            with torch.no_grad():
                clean_pred = model(x).argmax(1)
            generator = torch.Generator().manual_seed(self.attack.seed + 7919 * chunk.index)
            batches = [slice(b, b + BATCH) for b in range(0, len(x), BATCH)]  # bounded memory per pass
            inputs = (x, torch.cat([fgsm(model, x[b], clean_pred[b], self.attack.epsilon) for b in batches]),
                      torch.cat([pgd(model, x[b], clean_pred[b], self.attack, generator) for b in batches]))
            for j, batch in enumerate(inputs):
                for i, r in enumerate(rows):
                    s = fisher_scores(model, batch[i:i + 1])
                    for name in SCORES:
                        out[name][r, j] = s[name]
                    out["confidence"][r, j] = s["probabilities"].max()
                    predicted[r, j] = s["probabilities"].argmax()
                    maps[r, j] = s["fis_map"]
                out["perturbation"][rows, j] = (batch - x).abs().amax(dim=(1, 2, 3)).cpu().numpy()
        write = partial(store.write_region, self.workspace, self.group)
        for name, values in out.items():
            write(name, chunk.start, values)
        write("predicted", chunk.start, predicted)
        write("flipped", chunk.start, (predicted != predicted[:, :1]) & (predicted >= 0))
        write("fis_map", chunk.start, maps)
        store.mark_done(self.workspace, self.group, chunk.start, chunk.stop)
        return chunk.index

    def finalize(self, results: list[int]) -> str:
        store.set_attrs(self.workspace, self.group, **{schema.ATTR_STATUS: schema.STATUS_COMPLETE})
        return self.group


def select(images: xr.Dataset, split: str | None, max_samples: int, seed: int) -> np.ndarray:
    """A bool per sample: the samples of ``split`` (all when None), at most ``max_samples`` of them,
    drawn at random (seeded) across the classes."""
    if not 1 <= max_samples <= MAX_SAMPLES:
        raise AdversarialError(f"max_samples={max_samples}: give 1 to {MAX_SAMPLES}")
    keep = np.ones(images.sizes[schema.SAMPLE], bool)
    if split:
        splits = store.strings(images[schema.SPLIT].values)
        keep = splits == split
        if not keep.any():
            raise AdversarialError(f"no sample in split {split!r}; splits: {sorted(set(splits.tolist()))}")
    chosen = np.flatnonzero(keep)
    if len(chosen) > max_samples:
        chosen = np.sort(np.random.default_rng(seed).choice(chosen, max_samples, replace=False))
    out = np.zeros_like(keep)
    out[chosen] = True
    return out


def prepare(workspace: str | os.PathLike[str], model_id: str, dataset: str, *, attack: AttackSettings = AttackSettings(),
            split: str | None = "test", max_samples: int = 64, device: str = "cpu",
            overwrite: bool = False) -> AdversarialJob:
    """Check the settings and lay out (or resume) ``adversarial/<dataset>/<model_id>``."""
    workspace = str(workspace)
    check_device_name(device)
    attack.check()
    model = ModelCatalog(workspace).get(model_id)
    images = store.open_group(workspace, schema.group_path(schema.IMAGES, dataset))
    classes = list(images.attrs[schema.ATTR_CLASSES])
    if model.num_classes != len(classes):
        raise AdversarialError(f"model {model.model_id} has {model.num_classes} outputs but dataset {dataset!r} has "
                               f"{len(classes)} classes {classes}")
    selected = select(images, split, max_samples, attack.seed)
    group = adversarial_group(dataset, model.model_id)
    provenance = {"model_id": model.model_id, "checkpoint_sha256": model.sha256, "epsilon": attack.epsilon,
                  "steps": attack.steps, "step_size": attack.step_size, "seed": attack.seed, "split": split,
                  "max_samples": max_samples,
                  "images_config_hash": images.attrs[schema.ATTR_PROVENANCE]["config_hash"]}
    unit = layout.chunk_unit(workspace, f"{schema.group_path(schema.IMAGES, dataset)}/{schema.IMAGE}")
    done = resume_or_lay_out(workspace, group, provenance, overwrite=overwrite, error=AdversarialError,
                             lay_out=partial(_create, workspace, group, images, selected, classes, provenance, unit))
    pending = ~done & selected
    chunks = pending_chunks(pending, unit, payload=lambda a, b: np.flatnonzero(selected[a:b]))
    return AdversarialJob(workspace, dataset, model, attack, device, chunks=chunks,
                          n_chunks=chunk_count(len(selected), unit))


def _create(workspace: str, group: str, images: xr.Dataset, selected: np.ndarray, classes: list[str],
            provenance: dict[str, Any], unit: int) -> None:
    n = images.sizes[schema.SAMPLE]
    h, w = images.sizes[schema.Y], images.sizes[schema.X]
    pair = (schema.SAMPLE, INPUT)

    def empty(*shape: int, dtype: Any = np.float32) -> da.Array:
        return da.zeros((n, *shape), dtype=dtype, chunks=(unit, *shape))

    ds = xr.Dataset(
        {**{name: (pair, empty(len(INPUTS))) for name in (*SCORES, "confidence", "perturbation")},
         "predicted": (pair, empty(len(INPUTS), dtype=np.int16)), "flipped": (pair, empty(len(INPUTS), dtype=bool)),
         "fis_map": ((*pair, schema.Y, schema.X), empty(len(INPUTS), h, w))},
        coords={schema.SAMPLE: images[schema.SAMPLE].values.astype(object), INPUT: np.array(INPUTS, object),
                "selected": (schema.SAMPLE, selected),
                schema.LABEL: (schema.SAMPLE, images[schema.LABEL].values.astype(object)),
                schema.SPLIT: (schema.SAMPLE, images[schema.SPLIT].values.astype(object))},
        attrs={schema.ATTR_CLASSES: classes, schema.ATTR_SCHEMA_VERSION: schema.SCHEMA_VERSION,
               schema.ATTR_PROVENANCE: provenance},
    )
    ds["predicted"].encoding["fill_value"] = -1  # also where no chunk task writes: -1 is no class
    ds["fisher_trace"].attrs["long_name"] = "trace of the Fisher information w.r.t. the parameters"
    ds["fisher_quadratic"].attrs["long_name"] = "Fisher information along the predicted class's parameter gradient"
    ds["fisher_input"].attrs["long_name"] = "sum of the Fisher-information sensitivity map over the pixels"
    ds["perturbation"].attrs.update(long_name="L-infinity size of the perturbation", units="standardized input")
    store.create_template(workspace, group, ds)


def inspect_adversarial(workspace: str | os.PathLike[str], model_id: str, dataset: str, *,
                        attack: AttackSettings = AttackSettings(), split: str | None = "test", max_samples: int = 64,
                        device: str = "cpu", overwrite: bool = False, client: Any = None,
                        progress: ProgressFn | None = None, runner: Callable[[ChunkJob], Any] | None = None) -> str:
    """Write ``adversarial/<dataset>/<model_id>``; returns the group path. Resumes an unfinished run."""
    runner = runner or partial(run_job, client=client, progress=progress)
    entry = ModelCatalog(workspace).get(model_id)
    with group_lock(workspace, adversarial_group(dataset, entry.model_id), f"adversarial inspection of {entry.model_id}"):
        return runner(prepare(workspace, entry.model_id, dataset, attack=attack, split=split,
                              max_samples=max_samples, device=device, overwrite=overwrite))


def open_adversarial(workspace: str | os.PathLike[str], group: str) -> xr.Dataset:
    """The scores of the selected samples (maps left lazy)."""
    ds = store.open_group(workspace, group)
    return ds.isel({schema.SAMPLE: np.flatnonzero(ds["selected"].values)})


def correctly_classified(ds: xr.Dataset) -> np.ndarray:
    """A bool per sample: the model gets the clean image right (an adversarial example is a
    perturbation of a correctly handled input)."""
    classes = list(ds.attrs[schema.ATTR_CLASSES])
    truth = np.array([classes.index(c) for c in store.strings(ds[schema.LABEL].values)])
    return ds["predicted"].values[:, 0] == truth


def detection_auc(ds: xr.Dataset) -> list[dict[str, Any]]:
    """Per attack and score: ROC AUC of the score for telling the correctly classified clean inputs
    from their adversarial versions that the attack flipped (1: adversarial always higher; 0.5: no
    better than chance; below 0.5: adversarial lower), with the attack's success rate on them and
    the counts."""
    from sklearn.metrics import roc_auc_score

    ds = ds.isel({schema.SAMPLE: np.flatnonzero(correctly_classified(ds))})
    rows = []
    for j, attack in enumerate(INPUTS[1:], start=1):
        flipped = ds["flipped"].values[:, j].astype(bool)
        row: dict[str, Any] = {"attack": attack, "success_rate": float(flipped.mean()) if len(flipped) else np.nan, "clean": int(len(flipped)),
                               "adversarial": int(flipped.sum())}
        for name in SCORES:
            clean, adv = ds[name].values[:, 0], ds[name].values[flipped, j]
            scores = np.r_[clean, adv]
            ok = np.isfinite(scores)
            labels = np.r_[np.zeros(len(clean)), np.ones(len(adv))]
            row[name] = (float(roc_auc_score(labels[ok], scores[ok]))
                         if flipped.any() and len(np.unique(labels[ok])) == 2 else np.nan)
        rows.append(row)
    return rows


def scores_figure(ds: xr.Dataset, path: str | os.PathLike[str], title: str = "") -> Path:
    """Histograms (log scale) of each Fisher score for clean and flipped adversarial inputs, with the AUCs."""
    import matplotlib.pyplot as plt

    from xaiflow.figures import save_figure

    aucs = {r["attack"]: r for r in detection_auc(ds)}
    fig, axes = plt.subplots(1, len(SCORES), figsize=(4 * len(SCORES), 3.2))
    for ax, name in zip(axes, SCORES):
        values = ds[name].values
        for j, inp in enumerate(INPUTS):
            keep = np.ones(len(values), bool) if j == 0 else ds["flipped"].values[:, j].astype(bool)
            v = np.log10(np.maximum(values[keep, j], 1e-12))
            if len(v):
                auc = "" if j == 0 else f" (AUC {aucs[inp][name]:.2f})"
                ax.hist(v, bins=20, alpha=0.5, label=f"{inp}{auc}")
        ax.set(xlabel=f"log10 {name}", ylabel="samples")
        ax.legend(fontsize=7)
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return save_figure(fig, path)


def maps_figure(ds: xr.Dataset, images: xr.DataArray, path: str | os.PathLike[str], n: int = 4) -> Path:
    """For ``n`` samples the PGD attack flipped: the image, and the Fisher-information sensitivity
    map of the clean, FGSM and PGD input (one colour scale per row)."""
    import matplotlib.pyplot as plt

    from xaiflow.figures import save_figure

    flipped = np.flatnonzero(ds["flipped"].values[:, 2])[:n]
    if not len(flipped):
        raise AdversarialError("no adversarial example flipped the decision: nothing to show")
    classes = ds.attrs[schema.ATTR_CLASSES]
    fig, axes = plt.subplots(len(flipped), 1 + len(INPUTS), figsize=(2.2 * (1 + len(INPUTS)), 2.2 * len(flipped)),
                             squeeze=False)
    for row, i in zip(axes, flipped):
        sample = ds[schema.SAMPLE].values[i]
        row[0].imshow(images.sel({schema.SAMPLE: sample}).values, cmap="gray")
        row[0].set_title(f"{sample}\n{ds[schema.LABEL].values[i]}", fontsize=7)
        maps = ds["fis_map"].isel({schema.SAMPLE: i}).values
        top = np.nanpercentile(maps, 99.5) or 1.0
        for j, inp in enumerate(INPUTS):
            row[1 + j].imshow(maps[j], cmap="magma", vmin=0, vmax=top)
            row[1 + j].set_title(f"{inp}: {classes[int(ds['predicted'].values[i, j])]}", fontsize=7)
    for ax in axes.flat:
        ax.set_axis_off()
    fig.tight_layout()
    return save_figure(fig, path)
