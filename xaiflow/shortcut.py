"""Shortcut report: does a model's evidence lie in the class-defining structures or elsewhere?

Two kinds of evidence, depending on what the data set offers:

**With masks** (``masks/<dataset>``): the user names the *evidence* mask classes (what should
decide the class, e.g. ``carbide_network``) and the *suspect* ones (what should not, e.g. a
``databar``), per image label if wanted (:func:`mask_roles`; default for the synthetic source's
masks: evidence ``structure``, suspect ``shortcut``). Every score is a *balanced* accuracy
(mean recall over classes, chance 1/classes), so a majority-class guesser on imbalanced classes
does not pass for a learned model:

* *attribution mass*: per method, the share of relevance inside each mask class against the
  class's area share (:func:`xaiflow.aggregate.mask_mass`); a ratio mass/area above 1 means
  more relevance per pixel than a uniform map would give;
* *ablation* (causal): balanced accuracy on the explained samples with the evidence pixels
  replaced by the background level, and with the suspect region *moved* to its mirrored
  positions (flipped in x, y and both; the corners of other classes for a corner marker).
  Merely removing the suspect is reported but does not decide: a model trained on images that
  all carry a marker (even at random corners) fails on images without one, measured: a model
  trained with the marker at a random corner lost 0.33 accuracy when it was removed, and
  0.09 when it was moved;
* *content swap* (:func:`content_swap`): the suspect region's *content* pasted from an image of
  another class (seeded pairs balanced over class pairs), against content from a random image
  and noise: how often the prediction follows the donor's class (and the donor's prediction),
  against how often the unedited image's prediction already is that (paired, per pair) and
  against random content, with bootstrap intervals.
  It catches what moving cannot: a fixed data bar whose text or scale-bar length encodes the
  class;
* *metadata split*: balanced accuracy on samples with and without the shortcut when a
  ``has_shortcut`` coordinate says which (the synthetic source records it).

The verdict (:func:`decide_masks`) comes from the content swap, the moves, the evidence removal
and the metadata split; a model near chance that demonstrably follows the suspect region (a
shortcut random in the test split) is a shortcut, not "inconclusive". Attribution mass is
reported but does not decide: a bright marker attracts gradient relevance even in a model that
does not use it (measured: an untrained small CNN gave the marker 1.5-7x its area share).

Judged samples that the model was trained or validated on are counted (:func:`training_overlap`)
and named in the report's warnings.

**Without masks** (e.g. UHCS), the dependence on metadata that should not matter
(``by``: ``um_per_px`` by default, cut into ``bins``) on the ``split`` samples:

* per-bin accuracy against the bin's class mix (majority class and its share);
* a *scale-only baseline*: a shallow decision tree predicting the class from log10(``by``)
  alone, fit on the train split. When it does about as well as the CNN, class and scale are
  confounded and accuracy cannot tell structure from scale;
* Cramer's V between the bin and the true label, and between the bin and the prediction: a
  model whose predictions follow the bin more closely than the labels do leans on scale;
* per-bin relevance concentration (share of relevance in the top 10% pixels) per method;
* optionally a second model trained on images resampled to one physical pixel size
  (``target_um_per_px`` at ingest): if it keeps the accuracy, scale was not needed; if it
  loses much, the first model used it.

Thresholds (:class:`Thresholds`, all in accuracy or balanced-accuracy units unless noted) are
recorded in the report, so a verdict can be re-judged from its numbers.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import pandas as pd
import torch
import xarray as xr

from xaiflow import schema, store
from xaiflow.aggregate import PIXELS, QueryError, mask_mass, normalized
from xaiflow.errors import XaiflowError
from xaiflow.maskspec import (
    MaskSelection,
    MaskSpecError,
    has_mask,
    parse_mask_selection,
)
from xaiflow.models.catalog import ModelCatalog, ModelEntry
from xaiflow.predict import current_predictions
from xaiflow.saliency import METHOD, SaliencyQueryError, open_saliency, saliency_group
from xaiflow.scores import balanced_accuracy
from xaiflow.sources.synthetic import MASK_CLASSES as SYNTHETIC_MASK_CLASSES
from xaiflow.training import predict_logits

SHORTCUT, STRUCTURE, INCONCLUSIVE = "shortcut", "structure", "inconclusive"
#: the pixel size of the original image, recorded at ingest before any resampling
SOURCE_UM_PER_PX = "source_um_per_px"


class ShortcutError(XaiflowError):
    """The report cannot be made (unknown model or dataset, no saliency, no predictions...)."""


@dataclass(frozen=True)
class Thresholds:
    """Decision thresholds of the verdict (documented in the report)."""

    #: a model whose balanced accuracy is within this of chance (1/classes) has nothing to explain ->
    #: inconclusive, unless the content swap or the has_shortcut split show that it follows the suspect region
    above_chance: float = 0.15
    #: balanced accuracy lost when the evidence is removed or the suspect region moved (mirrored) that
    #: counts as reliance on it
    ablation_drop: float = 0.15
    #: below this loss of balanced accuracy the model does not need the region
    ablation_negligible: float = 0.05
    #: balanced accuracy with the shortcut minus without it that counts as reliance on it
    split_gap: float = 0.3
    #: content swap: the lower end of the 95% interval of a follow-donor rate minus the same rate of the
    #: unedited images on the same pairs must be at least this (and the rate must beat random content)
    follow_margin: float = 0.1
    #: content swap: balanced accuracy lost when the suspect region holds another class's content (the loss
    #: must also exceed the loss with a random image's content, 95% interval of the difference above 0)
    swap_collapse: float = 0.3
    #: content swap: pairs needed for a follow-donor rate to decide
    min_pairs: int = 10
    #: samples needed in each of the with/without groups for the split to count
    min_group: int = 5
    #: mass/area ratio above which a method is said to favour a region (reported, not decisive)
    mass_ratio: float = 2.0
    #: the CNN must beat the scale-only baseline by this much (balanced accuracy) to be called "structure"
    baseline_margin: float = 0.1
    #: Cramer's V(bin, prediction) above V(bin, label) by this much: predictions follow scale
    association_excess: float = 0.1
    #: balanced accuracy lost by the fixed-pixel-size model that counts as scale reliance
    compare_drop: float = 0.15
    #: at most this loss, the fixed-pixel-size model "keeps" the accuracy (needed for "structure" when confounded)
    compare_keep: float = 0.05


@dataclass
class ShortcutReport:
    """The verdict with the numbers and reasons behind it; ``to_dict``/``to_json`` serialize it."""

    model_id: str
    dataset: str
    kind: str  # "masks" or "metadata"
    verdict: str
    reasons: list[str]
    n_samples: int
    accuracy: float
    thresholds: dict[str, Any]
    balanced_accuracy: float = float("nan")
    #: balanced accuracy of a model that guesses (1/classes)
    chance: float = float("nan")
    #: the mask classes whose removal should hurt (``evidence``) and whose content should not matter (``suspect``)
    evidence: list[str] = field(default_factory=list)
    suspect: list[str] = field(default_factory=list)
    mask_mass: list[dict[str, Any]] = field(default_factory=list)
    ablation: dict[str, Any] = field(default_factory=dict)
    content_swap: dict[str, Any] = field(default_factory=dict)
    shortcut_split: dict[str, Any] = field(default_factory=dict)
    metadata: dict[str, Any] = field(default_factory=dict)
    compare: dict[str, Any] = field(default_factory=dict)
    #: judged samples the model was trained or validated on: split -> count
    training_overlap: dict[str, int] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return _jsonable(asdict(self))

    def to_json(self, indent: int = 2) -> str:
        return json.dumps(self.to_dict(), indent=indent)


def _jsonable(v: Any) -> Any:
    if isinstance(v, dict):
        return {str(k): _jsonable(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [_jsonable(x) for x in v]
    if isinstance(v, (np.floating, float)):
        return None if not np.isfinite(v) else float(v)
    if isinstance(v, np.integer):
        return int(v)
    return v


# ----------------------------------------------------------------------------- shared helpers


def trained_model(workspace: str | os.PathLike[str], model_id: str) -> ModelEntry:
    """The catalog entry of ``model_id`` (an id or unique prefix), which must record its training
    dataset; unknown model -> ShortcutError."""
    entry = ModelCatalog(workspace).get(model_id)
    if entry.dataset is None:
        raise ShortcutError(f"{entry.directory}: no training dataset recorded in its manifest (config.train.dataset)")
    return entry


def model_dataset(workspace: str | os.PathLike[str], model_id: str) -> str:
    """The dataset a model was trained on (from its manifest); unknown model -> ShortcutError."""
    return str(trained_model(workspace, model_id).dataset)


def predictions(workspace: str | os.PathLike[str], model_id: str, dataset: str,
                device: torch.device | str = "cpu") -> np.ndarray:
    """Predicted class index per sample of ``dataset``: the stored predictions group when it was
    made by this checkpoint from these images, else computed here on ``device`` (one forward pass
    per image)."""
    entry = ModelCatalog(workspace).get(model_id)
    group = current_predictions(workspace, entry, dataset)
    if group is not None:
        return np.asarray(store.open_group(workspace, group)["predicted"].values, np.int64)
    images = store.open_group(workspace, schema.group_path(schema.IMAGES, dataset))[schema.IMAGE]
    model = entry.load(device)
    with torch.no_grad():
        return np.concatenate([predict_logits(model, images[s:s + 64].values, torch.device(device)).argmax(1)
                               for s in range(0, images.shape[0], 64)]).astype(np.int64)


def cramers_v(a: np.ndarray, b: np.ndarray) -> float:
    """Cramer's V of two categorical arrays (0: independent, 1: one determines the other)."""
    ia, ib = np.unique(np.asarray(a).astype(str), return_inverse=True)[1], np.unique(np.asarray(b).astype(str),
                                                                                      return_inverse=True)[1]
    table = np.zeros((ia.max(initial=-1) + 1, ib.max(initial=-1) + 1))
    np.add.at(table, (ia, ib), 1)
    table = table[table.sum(1) > 0][:, table.sum(0) > 0]
    if min(table.shape) < 2:
        return 0.0
    n = table.sum()
    expected = table.sum(1, keepdims=True) * table.sum(0, keepdims=True) / n
    chi2 = float(((table - expected) ** 2 / expected).sum())
    return float(np.sqrt(chi2 / (n * (min(table.shape) - 1))))


def excess_interval(bins: np.ndarray, y: np.ndarray, p: np.ndarray, n_boot: int = 500,
                    level: float = 0.9) -> tuple[float, float]:
    """Bootstrap interval (over samples) of V(bin, prediction) - V(bin, label)."""
    rng = np.random.default_rng(0)
    d = []
    for _ in range(n_boot):
        i = rng.integers(0, len(y), len(y))
        d.append(cramers_v(bins[i], p[i]) - cramers_v(bins[i], y[i]))
    lo, hi = np.quantile(d, [(1 - level) / 2, (1 + level) / 2])
    return float(lo), float(hi)


def _explained(workspace: str, dataset: str, model_id: str) -> xr.Dataset:
    try:
        ds = open_saliency(workspace, dataset, model_id)
    except SaliencyQueryError as e:
        raise ShortcutError(str(e)) from None
    done = ds["done"].all(METHOD).values
    if not done.any():
        raise ShortcutError(f"{saliency_group(dataset, model_id)}: no sample has maps for every method yet")
    return ds.isel({schema.SAMPLE: np.flatnonzero(done)})


# ----------------------------------------------------------------------------- evidence and suspect mask classes


#: the default evidence and suspect mask classes (those of the synthetic source)
DEFAULT_EVIDENCE, DEFAULT_SUSPECT = "structure", "shortcut"
#: how a mask selection is given (see :func:`xaiflow.maskspec.parse_mask_selection`)
Selection = str | Sequence[str] | Mapping[str, str | Sequence[str]] | MaskSelection


def mask_roles(mask_classes: list[str], labels: Sequence[str], evidence: Selection | None,
               suspect: Selection | None, where: str) -> tuple[MaskSelection, MaskSelection]:
    """The ``evidence`` (what should decide the class) and ``suspect`` (what should not) mask
    selections, per image label if wanted (forms of :func:`~xaiflow.maskspec.parse_mask_selection`).

    Both left open: ``structure`` and ``shortcut`` for the synthetic source's mask classes, else an
    error listing the mask classes. Suspect alone left open: ``shortcut`` if there is such a class,
    else none (no content swap, e.g. expert masks of phases only); evidence alone: ``structure``,
    which must exist. Unknown classes, or one named both ways, are errors listing the mask classes."""
    named = f"name them with --evidence/--suspect (config `shortcut:` evidence/suspect); mask classes: {mask_classes}"
    if evidence is None and suspect is None and list(mask_classes) != list(SYNTHETIC_MASK_CLASSES):
        raise ShortcutError(f"{where}: which mask classes are the evidence and which the suspect? {named}")
    if evidence is None:
        if DEFAULT_EVIDENCE not in mask_classes:
            raise ShortcutError(f"{where}: no evidence mask class given and no {DEFAULT_EVIDENCE!r} class; {named}")
        evidence = DEFAULT_EVIDENCE
    if suspect is None:
        suspect = DEFAULT_SUSPECT if DEFAULT_SUSPECT in mask_classes else ()
    try:
        ev = parse_mask_selection(evidence, mask_classes, labels)
        su = parse_mask_selection(suspect, mask_classes, labels) if suspect else MaskSelection((), {})
    except MaskSpecError as e:
        raise ShortcutError(f"{where}: {e}") from None
    both = sorted(set(ev.all_classes()) & set(su.all_classes()))
    if both:
        raise ShortcutError(f"{where}: mask class(es) {both} named both evidence and suspect; {named}")
    return ev, su


# ----------------------------------------------------------------------------- with masks


#: mirrorings of an image that move a corner marker to each other corner
_MIRRORS = {"flip_x": (slice(None), slice(None, None, -1)), "flip_y": (slice(None, None, -1), slice(None)),
            "flip_xy": (slice(None, None, -1), slice(None, None, -1))}
#: at most this many images per model call and per read of images and masks...
BATCH = 64
#: ... and at most this many bytes of float32 images per read (large micrographs: fewer per batch)
BATCH_BYTES = 64 * 2**20


def _edited(x: np.ndarray, hole: np.ndarray, bg: np.ndarray, mirror: tuple | None) -> np.ndarray:
    """``x`` with the ``hole`` pixels filled with the mean over the ``bg`` pixels, and, with
    ``mirror``, those pixels pasted back at their mirrored position (the region moved)."""
    bg = bg & ~hole
    out = x.copy()
    out[hole] = x[bg].mean() if bg.any() else x[~hole].mean()
    if mirror is not None:
        moved = hole[mirror]
        out[moved] = x[mirror][moved]
    return out


class _Masks:
    """Batched reads of the judged samples' images and the evidence/suspect/background regions of their masks."""

    def __init__(self, images: xr.DataArray, masks: xr.DataArray, labels: Sequence[str], mask_classes: list[str],
                 evidence: MaskSelection, suspect: MaskSelection) -> None:
        self.images, self.masks, self.labels, self.classes = images, masks, np.asarray(labels, object), mask_classes
        self.evidence, self.suspect = evidence, suspect
        named = set(evidence.all_classes()) | set(suspect.all_classes())
        self.background = MaskSelection(tuple(c for c in mask_classes if c not in named), {})

    def read(self, idx: np.ndarray) -> tuple[np.ndarray, dict[str, np.ndarray]]:
        """Images (float32) and regions (``evidence``, ``suspect``, ``background``) of samples ``idx`` (any order)."""
        order, inverse = np.unique(idx, return_inverse=True)
        # read in this process: a small batch is not worth a round trip to a Dask cluster
        x = np.asarray(self.images.isel({schema.SAMPLE: order}).compute(scheduler="synchronous").values,
                       np.float32)[inverse]
        m = np.asarray(self.masks.isel({schema.SAMPLE: order}).compute(scheduler="synchronous").values)[inverse]
        lab = self.labels[idx]
        return x, {k: sel.regions(m, lab, self.classes) for k, sel in
                   (("evidence", self.evidence), ("suspect", self.suspect), ("background", self.background))}

    def suspect_present(self) -> np.ndarray:
        """(n,) bool: which samples have suspect pixels (only the masks are read)."""
        out = [np.zeros(0, bool)]
        for idx in self.batches():
            m = np.asarray(self.masks.isel({schema.SAMPLE: idx}).compute(scheduler="synchronous").values)
            out.append(self.suspect.regions(m, self.labels[idx], self.classes).reshape(len(idx), -1).any(1))
        return np.concatenate(out)

    def batches(self) -> Iterator[np.ndarray]:
        n = self.images.shape[0]
        step = self.batch_size
        return (np.arange(s, min(s + step, n)) for s in range(0, n, step))

    @property
    def batch_size(self) -> int:
        """Images per read: ``BATCH``, fewer when their float32 copies would pass ``BATCH_BYTES``."""
        pixels = int(np.prod(self.images.shape[1:]))
        return max(1, min(BATCH, BATCH_BYTES // (4 * pixels)))


def _predict(model: torch.nn.Module, x: np.ndarray, dtype: np.dtype, device: torch.device | str = "cpu") -> np.ndarray:
    """Predicted classes of float images stored as ``dtype`` (rounded and clipped to its range), by
    ``model`` on ``device`` (where the model is)."""
    if np.issubdtype(dtype, np.integer):
        info = np.iinfo(dtype)
        x = np.clip(np.rint(x), info.min, info.max)
    with torch.no_grad():
        return predict_logits(model, x.astype(dtype), torch.device(device)).argmax(1).astype(np.int64)


def _ablated_accuracy(model: torch.nn.Module, data: _Masks, labels: np.ndarray,
                      edits: dict[str, tuple[str, list[tuple | None]]],
                      device: torch.device | str = "cpu") -> dict[str, dict[str, Any]]:
    """Accuracy and balanced accuracy of the model (on ``device``) on the images and on each edit:
    ``name -> (region, mirrors)``; each mirror (or None: removal only) is one edited copy of every
    image, scores averaged."""
    out: dict[str, dict[str, Any]] = {}
    dtype = data.images.dtype
    for name, (region, mirrors) in {"original": ("", [None]), **edits}.items():
        accs, bals, first = [], [], None
        for mirror in mirrors:
            preds = []
            for idx in data.batches():
                x, r = data.read(idx)
                if region:
                    x = np.stack([_edited(x[i], r[region][i], r["background"][i], mirror) for i in range(len(x))])
                preds.append(_predict(model, x, dtype, device))
            p = np.concatenate(preds)
            first = p if first is None else first
            accs.append(float((p == labels).mean()))
            bals.append(balanced_accuracy(labels, p))
        out[name] = {"region": region, "copies": len(mirrors), "accuracy": float(np.mean(accs)),
                     "balanced_accuracy": float(np.mean(bals)), "predicted": first}
    return out


# ----------------------------------------------------------------------------- content swap


def swap_pairs(labels: np.ndarray, per_sample: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """(recipient, donor) sample indices: every sample is a recipient ``per_sample`` times, with a
    donor of a different class; a recipient class's slots (shuffled) cycle through the other
    classes, so every ordered class pair gets an equal share, the donor drawn uniformly within its
    class. Classes with a single class present give no pairs."""
    classes = np.unique(labels)
    members = {c: np.flatnonzero(labels == c) for c in classes}
    rec, don = [], []
    for c in classes:
        others = classes[classes != c]
        if not len(others):
            continue
        slots = rng.permutation(np.repeat(members[c], per_sample))
        donor_class = others[(rng.integers(len(others)) + np.arange(len(slots))) % len(others)]
        for d in others:
            at = np.flatnonzero(donor_class == d)
            rec.append(slots[at])
            don.append(rng.choice(members[d], len(at)))
    if not rec:
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    return np.concatenate(rec).astype(np.int64), np.concatenate(don).astype(np.int64)


def _interval(stat: Callable[[np.ndarray], np.ndarray], n: int, rng: np.random.Generator,
              n_boot: int) -> list[float]:
    """Seeded bootstrap 95% interval over ``n`` resampled pairs: ``stat`` maps a (draws, n) index
    matrix to one value per draw; 100 draws at a time bound the memory."""
    if n == 0:
        return [float("nan"), float("nan")]
    values = np.concatenate([stat(rng.integers(0, n, (min(100, n_boot - b), n)))
                             for b in range(0, n_boot, 100)]).astype(float)
    if not np.isfinite(values).any():
        return [float("nan"), float("nan")]
    lo, hi = np.nanquantile(values, [0.025, 0.975])
    return [float(lo), float(hi)]


def _balanced_rows(y: np.ndarray, q: np.ndarray) -> np.ndarray:
    """Balanced accuracy of each row of (draws, n) labels ``y`` and predictions ``q`` (mean recall
    over the classes present in the row, as :func:`xaiflow.scores.balanced_accuracy`)."""
    recalls = []
    for c in np.unique(y):
        of_c = y == c
        count = of_c.sum(1)
        hit = (of_c & (q == c)).sum(1)
        recalls.append(np.where(count > 0, hit / np.maximum(count, 1), np.nan))
    return np.nanmean(np.stack(recalls), axis=0)


def content_swap(model: torch.nn.Module, data: _Masks, labels: np.ndarray, original: np.ndarray, n_classes: int,
                 present: np.ndarray, *, names: Sequence[str] | None = None, per_sample: int = 2, seed: int = 0,
                 n_boot: int = 1000, max_pairs: int = 4000, device: torch.device | str = "cpu") -> dict[str, Any]:
    """Does the prediction follow the *content* of the suspect region?

    For each (recipient, donor) pair of :func:`swap_pairs` the recipient's suspect region (the union
    of the recipient's and the donor's, so a region at another position is moved too) is filled
    with the donor's pixels (``swap``); as references, the same region is filled from a random
    other image of any class (``random_image``, with that image's region in the union instead) and
    with Gaussian noise of the mean and std of the donor's pixels there (``noise``). Reported:
    balanced accuracy and accuracy against the recipients' labels for each condition, and the
    drop of balanced accuracy under the swap (``collapse``) beside the drop with random content
    (``reference_drop``), with a paired interval of their difference; the *follow-donor rate*
    (prediction after the swap = the donor's class) and the *follow-donor-prediction rate* (the
    swapped image gets the prediction the model gave the unedited donor: it detects a model that
    reads the region even where the region does not carry the labels' class, e.g. a shortcut
    random in the test split). Each rate is measured against the unedited images on the same
    pairs (``chance``: how often the recipient's own prediction already is the donor's class, or
    the donor's prediction), so a swap that changes no prediction has no excess whatever classes
    the judged samples cover; the excess is the per-pair difference, with a paired bootstrap
    interval. As a reference the same rate for ``random_image``, whose content owes nothing to
    the donor, with the paired interval of the swap's rate minus it. Intervals: seeded bootstrap
    over pairs, 95%. ``original``: the predictions on the unedited images; ``present``: which
    samples have suspect pixels (pairs whose region is empty in both images change nothing and
    are left out); ``names``: class names for the counts of class pairs (``n_classes`` of them);
    at most ``max_pairs`` pairs (a seeded subset) bound the time, and images are read and
    predicted (by ``model`` on ``device``) a batch of pairs at a time (:attr:`_Masks.batch_size`).
    """
    rng = np.random.default_rng(seed)
    rec, don = swap_pairs(labels, per_sample, rng)
    keep = present[rec] | present[don]
    rec, don = rec[keep], don[keep]
    if len(rec) > max_pairs:
        pick = np.sort(rng.choice(len(rec), max_pairs, replace=False))
        rec, don = rec[pick], don[pick]
    n = len(labels)
    src = (rec + rng.integers(1, n, len(rec))) % n if n > 1 else rec.copy()
    preds: dict[str, list[np.ndarray]] = {"swap": [], "random_image": [], "noise": []}
    dtype = data.images.dtype
    step = data.batch_size
    for s in range(0, len(rec), step):
        r, d, o = rec[s:s + step], don[s:s + step], src[s:s + step]
        x, regions = data.read(np.concatenate([r, d, o]))
        k = len(r)
        x_rec, xd, xo = x[:k], x[k:2 * k], x[2 * k:]
        region_d = regions["suspect"][:k] | regions["suspect"][k:2 * k]
        region_o = regions["suspect"][:k] | regions["suspect"][2 * k:]
        count = np.maximum(region_d.sum((1, 2)), 1)[:, None, None]
        mean = (xd * region_d).sum((1, 2), keepdims=True) / count
        std = np.sqrt((((xd - mean) ** 2) * region_d).sum((1, 2), keepdims=True) / count)
        noise = mean + std * rng.standard_normal(x_rec.shape).astype(np.float32)
        preds["swap"].append(_predict(model, np.where(region_d, xd, x_rec), dtype, device))
        preds["random_image"].append(_predict(model, np.where(region_o, xo, x_rec), dtype, device))
        preds["noise"].append(_predict(model, np.where(region_d, noise, x_rec), dtype, device))
    p = {k: np.concatenate(v) if v else np.zeros(0, np.int64) for k, v in preds.items()}
    p["original"] = original[rec]
    y, yd = labels[rec], labels[don]
    boot = np.random.default_rng([seed, 1])
    conditions = {}
    for name in ("original", "swap", "random_image", "noise"):
        q = p[name]
        conditions[name] = {"balanced_accuracy": balanced_accuracy(y, q) if len(y) else float("nan"),
                            "balanced_accuracy_ci": _interval(lambda i, q=q: _balanced_rows(y[i], q[i]),
                                                              len(y), boot, n_boot),
                            "accuracy": float((q == y).mean()) if len(y) else float("nan")}

    def follow(hit: np.ndarray, unedited: np.ndarray, reference: np.ndarray) -> dict[str, Any]:
        """Rate of ``hit`` with its interval, against the same event on the unedited images
        (``chance``) and on random content (``reference``): means and paired intervals of the differences."""
        n = len(hit)

        def mean(v: np.ndarray) -> float:
            return float(v.mean()) if len(v) else float("nan")

        def ci(v: np.ndarray) -> list[float]:
            return _interval(lambda i: v[i].mean(1), n, boot, n_boot)

        excess, over = hit.astype(float) - unedited, hit.astype(float) - reference
        return {"rate": mean(hit), "n": n, "ci": ci(hit), "chance": mean(unedited), "excess": mean(excess),
                "excess_ci": ci(excess), "reference": mean(reference), "reference_ci": ci(reference),
                "over_reference": mean(over), "over_reference_ci": ci(over)}

    # paired with the unedited predictions of the same kept pairs: a model whose prediction the swap does not
    # change has no excess, whatever the mix of donor classes (judged samples of some classes only, pairs left out)
    out_class = follow(p["swap"] == yd, p["original"] == yd, p["random_image"] == yd)
    pd_don = original[don]
    out_pred = follow(p["swap"] == pd_don, p["original"] == pd_don, p["random_image"] == pd_don)
    names = list(names) if names is not None else [str(i) for i in range(n_classes)]
    pairs: dict[str, int] = {}
    for a, b in zip(y, yd):
        key = f"{names[a]}->{names[b]}"
        pairs[key] = pairs.get(key, 0) + 1
    return {"n_pairs": len(rec), "per_sample": per_sample, "seed": seed, "n_boot": n_boot,
            "class_pairs": pairs, "conditions": conditions, "follow_donor": out_class,
            "follow_donor_prediction": out_pred,
            "collapse": conditions["original"]["balanced_accuracy"] - conditions["swap"]["balanced_accuracy"],
            "reference_drop": (conditions["original"]["balanced_accuracy"]
                               - conditions["random_image"]["balanced_accuracy"]),
            "collapse_over_reference_ci": _interval(
                lambda i: _balanced_rows(y[i], p["random_image"][i]) - _balanced_rows(y[i], p["swap"][i]),
                len(y), boot, n_boot)}


def _pct(v: float) -> str:
    return f"{100 * v:.0f}%"


def follows(f: Mapping[str, Any], th: Mapping[str, Any]) -> bool:
    """A follow-donor rate (of :func:`content_swap`) decides when it has at least ``min_pairs`` pairs,
    the 95% interval of its excess over the unedited images lies above ``follow_margin``, and that of
    its excess over random content above 0 (``th``: :class:`Thresholds` as a dict)."""
    return (f["n"] >= th["min_pairs"] and f["excess_ci"][0] >= th["follow_margin"]
            and f["over_reference_ci"][0] > 0)


def collapses(swap: Mapping[str, Any], th: Mapping[str, Any]) -> bool:
    """The swap's loss of balanced accuracy decides when it is at least ``swap_collapse`` and the 95%
    interval of its excess over the loss with random content lies above 0: a region that breaks the
    model under any pasted content is not read for its class."""
    return swap["collapse"] >= th["swap_collapse"] and swap["collapse_over_reference_ci"][0] > 0


def describe_follow(f: dict[str, Any], what: str) -> str:
    """e.g. ``the prediction follows the donor's class in 83% (95% CI 76-89%) of 120 swaps (unedited 4%...)``."""
    return (f"the prediction follows the donor's {what} in {_pct(f['rate'])} (95% CI {_pct(f['ci'][0])}-"
            f"{_pct(f['ci'][1])}) of {f['n']} swaps (unedited images {_pct(f['chance'])}, excess 95% CI "
            f"{100 * f['excess_ci'][0]:+.0f} to {100 * f['excess_ci'][1]:+.0f} points; with content from a random "
            f"image instead {_pct(f['reference'])})")


def decide_masks(original: dict[str, float], drops: dict[str, float], split: dict[str, Any],
                 swap: dict[str, Any], chance: float, th: Thresholds,
                 names: tuple[str, str] = ("structure", "shortcut")) -> tuple[str, list[str]]:
    """The verdict of the mask tests, on balanced accuracy (``original``: its accuracy and balanced
    accuracy; ``drops``: balanced accuracy lost per edit: ``structure`` (evidence removed),
    ``shortcut_moved`` (suspect mirrored); ``split``: the has_shortcut comparison; ``swap``: the
    content swap). "shortcut" when the swap's predictions follow the donor (:func:`follows`), the
    swap collapses balanced accuracy more than random content does (:func:`collapses`), the
    has_shortcut split shows a gap, or (for a model above chance) moving
    the suspect region costs accuracy: the near-chance rule does not hide a model that follows
    the suspect region where it is uninformative. Then near chance -> "inconclusive"; then
    "structure" when removing the evidence costs accuracy and the suspect region is not needed."""
    evidence, suspect = names
    bal = original["balanced_accuracy"]
    above = bal >= chance + th.above_chance
    signals: list[str] = []
    if swap.get("n_pairs"):
        limits = asdict(th)
        for key, what in (("follow_donor", "class"), ("follow_donor_prediction", "prediction")):
            if follows(swap[key], limits):
                signals.append(f"swapping the {suspect} content between images of different classes: "
                               + describe_follow(swap[key], what))
        if collapses(swap, limits):
            c = swap["conditions"]
            signals.append(f"with another class's {suspect} content, balanced accuracy falls from "
                           f"{c['original']['balanced_accuracy']:.2f} to {c['swap']['balanced_accuracy']:.2f} "
                           f"(drop {swap['collapse']:.2f} >= {th.swap_collapse}; with a random image's content "
                           f"{swap['reference_drop']:.2f})")
    gap = split.get("gap", float("nan")) if split.get("usable") else float("nan")
    if gap >= th.split_gap:
        signals.append(f"balanced accuracy {split['balanced_accuracy_with']:.2f} on images with the shortcut vs "
                       f"{split['balanced_accuracy_without']:.2f} without (gap {gap:.2f} >= {th.split_gap})")
    moved = drops.get("shortcut_moved", float("nan"))
    if above and moved >= th.ablation_drop:
        signals.append(f"moving the {suspect} region to its mirrored positions lowers balanced accuracy by "
                       f"{moved:.2f} (>= {th.ablation_drop})")
    if signals:
        return SHORTCUT, signals
    if not above:
        return INCONCLUSIVE, [(f"balanced accuracy {bal:.2f} (accuracy {original['accuracy']:.2f}) is within "
                              f"{th.above_chance} of chance ({chance:.2f}) and nothing shows that the model follows "
                              f"the {suspect} region: it has learned too little to say what it uses")]
    no_suspect = not swap.get("n_pairs") and not np.isfinite(moved)
    swap_drop = swap.get("collapse", float("nan"))
    quiet = no_suspect or ((not np.isfinite(moved) or moved < th.ablation_negligible)
                           and (not np.isfinite(swap_drop) or swap_drop < th.ablation_drop))
    ev_drop = drops.get("structure", float("nan"))
    if quiet and ev_drop >= th.ablation_drop:
        why = ("no suspect pixels in the masks" if no_suspect else
               f"the {suspect} region is not needed (balanced accuracy change when moved {moved:+.2f}, when its "
               f"content is swapped {swap_drop:+.2f})")
        return STRUCTURE, [(f"{why}; removing the {evidence} lowers balanced accuracy from {bal:.2f} by "
                           f"{ev_drop:.2f} (>= {th.ablation_drop})")]
    return INCONCLUSIVE, [(f"balanced accuracy lost without the {evidence} {ev_drop:.2f}, with the {suspect} moved "
                          f"{moved:.2f}, with its content swapped {swap_drop:.2f}: neither rule applies (thresholds "
                          f"{th.ablation_drop}, {th.ablation_negligible})")]


def _mask_report(workspace: str, dataset: str, entry: ModelEntry, ds: xr.Dataset, th: Thresholds,
                 evidence: Selection | None, suspect: Selection | None, pairs_per_sample: int,
                 seed: int, device: torch.device | str) -> tuple[ShortcutReport, list[str]]:
    """The mask report on the explained samples ``ds`` with a mask, and the ids of those judged samples."""
    masks = store.open_group(workspace, schema.group_path(schema.MASKS, dataset))
    mask_classes = [str(c) for c in masks.attrs[schema.ATTR_MASK_CLASSES]]
    idx = pd.Index(store.strings(masks[schema.SAMPLE].values)).get_indexer(store.strings(ds[schema.SAMPLE].values))
    if (idx < 0).any():
        raise ShortcutError(f"masks/{dataset}: no mask for {int((idx < 0).sum())} explained sample(s)")
    masks = masks.isel({schema.SAMPLE: idx})
    annotated = has_mask(masks)
    notes: list[str] = []
    if not annotated.any():
        raise ShortcutError(f"masks/{dataset}: none of the {len(annotated)} explained samples has a mask")
    if not annotated.all():
        notes.append(f"{int(annotated.sum())} of {len(annotated)} explained samples have a mask: the mask tests "
                     "use those")
        ds, masks = ds.isel({schema.SAMPLE: np.flatnonzero(annotated)}), masks.isel(
            {schema.SAMPLE: np.flatnonzero(annotated)})
    label_names = store.strings(ds[schema.LABEL].values)
    ev, su = mask_roles(mask_classes, label_names, evidence, suspect, f"masks/{dataset}")
    names = (ev.describe(), su.describe() if su.all_classes() else "suspect")
    mm = mask_mass(ds, masks.assign_coords({schema.SAMPLE: ds[schema.SAMPLE].values})).compute()
    mass_rows = []
    for m in store.strings(mm[METHOD].values):
        for k in mask_classes:
            area = mm["area"].sel(mask_class=k).values
            present = area > 0
            mass = mm["mass"].sel({METHOD: m, "mask_class": k}).values[present]
            share, a = (float(mass.mean()), float(area[present].mean())) if present.any() else (float("nan"), 0.0)
            mass_rows.append({"method": str(m), "mask_class": k, "relevance_share": share, "area_share": a,
                              "ratio": share / a if a > 0 else float("nan"), "n_samples": int(present.sum())})

    labels = np.asarray(ds[schema.LABEL_INDEX].values, np.int64)
    n_classes = len(ds.attrs.get(schema.ATTR_CLASSES, [])) or int(labels.max()) + 1
    chance = 1.0 / n_classes
    data = _Masks(ds["image"], masks[schema.MASK], label_names, mask_classes, ev, su)
    has_suspect = data.suspect_present()
    edits: dict[str, tuple[str, list[tuple | None]]] = {"structure": ("evidence", [None])}
    if has_suspect.any():
        edits["shortcut"] = ("suspect", [None])
        edits["shortcut_moved"] = ("suspect", list(_MIRRORS.values()))
    model = entry.load(device)
    abl = _ablated_accuracy(model, data, labels, edits, device)
    pred = abl["original"].pop("predicted")
    for v in abl.values():
        v.pop("predicted", None)
    original = abl["original"]
    drops = {k: original["balanced_accuracy"] - abl[k]["balanced_accuracy"] for k in edits}
    ablation = {**abl, "drop": drops, "accuracy_drop": {k: original["accuracy"] - abl[k]["accuracy"] for k in edits},
                "chance": chance}
    swap = content_swap(model, data, labels, pred, n_classes, has_suspect,
                        names=ds.attrs.get(schema.ATTR_CLASSES), per_sample=pairs_per_sample,
                        seed=seed, device=device) if has_suspect.any() else {}

    split: dict[str, Any] = {}
    if "has_shortcut" in ds.coords:
        flag = np.asarray(ds["has_shortcut"].values, float) > 0.5
        split = {"n_with": int(flag.sum()), "n_without": int((~flag).sum())}
        for name, sel in (("with", flag), ("without", ~flag)):
            split[f"accuracy_{name}"] = float((pred[sel] == labels[sel]).mean()) if sel.any() else float("nan")
            split[f"balanced_accuracy_{name}"] = balanced_accuracy(labels[sel], pred[sel])
        split["usable"] = split["n_with"] >= th.min_group and split["n_without"] >= th.min_group
        split["gap"] = split["balanced_accuracy_with"] - split["balanced_accuracy_without"]

    verdict, reasons = decide_masks(original, drops, split, swap, chance, th, names)
    if not has_suspect.any():
        reasons.append(f"no {names[1]} pixels in the masks of the judged samples: content swap not run")
    else:
        reasons.append(f"removing the {names[1]} pixels (reported, not decisive) lowers balanced accuracy by "
                       f"{drops['shortcut']:+.2f}: a model trained with a marker in every image may fail without "
                       "one even if the marker's content means nothing to it")
    if swap and not any(r.startswith(f"swapping the {names[1]}") for r in reasons):
        reasons.append(f"content swap (not decisive here): {describe_follow(swap['follow_donor'], 'class')}")
    ev_names, su_names = set(ev.all_classes()), set(su.all_classes())
    favour = [r["method"] for r in mass_rows if r["mask_class"] in su_names and r["ratio"] >= th.mass_ratio]
    on_structure = [r["method"] for r in mass_rows if r["mask_class"] in ev_names and r["ratio"] >= 1.0]
    methods = sorted({r["method"] for r in mass_rows})
    reasons.append(f"attribution mass (reported, not decisive): {len(on_structure)} of {len(methods)} methods give "
                   f"the {names[0]} at least their area share; "
                   + (f"{len(favour)} give the {names[1]} >= {th.mass_ratio}x its area share ({', '.join(favour)})"
                      if has_suspect.any() else f"no {names[1]} region"))
    return ShortcutReport(model_id=entry.model_id, dataset=dataset, kind="masks", verdict=verdict,
                          reasons=notes + reasons, n_samples=len(labels), accuracy=original["accuracy"],
                          balanced_accuracy=original["balanced_accuracy"], chance=chance, thresholds=asdict(th),
                          evidence=list(ev.all_classes()), suspect=list(su.all_classes()), mask_mass=mass_rows,
                          ablation=ablation, content_swap=swap,
                          shortcut_split=split), list(store.strings(ds[schema.SAMPLE].values))


# ----------------------------------------------------------------------------- without masks


def default_bins(values: np.ndarray) -> list[float]:
    """Half-decade edges covering the positive ``values`` (magnification spans decades)."""
    v = values[np.isfinite(values) & (values > 0)]
    if not len(v):
        raise ShortcutError("no positive values to bin")
    lo, hi = np.floor(np.log10(v.min()) * 2) / 2, np.ceil(np.log10(v.max()) * 2) / 2 + 1e-9
    return [float(10 ** e) for e in np.arange(lo, hi + 0.5, 0.5)]


def _scale_baseline(x: np.ndarray, y: np.ndarray, train: np.ndarray, test: np.ndarray) -> dict[str, Any]:
    from sklearn.tree import DecisionTreeClassifier

    ok = np.isfinite(x) & (x > 0)
    tr, te = train & ok, test & ok
    if tr.sum() < 2 or te.sum() < 1:
        return {"balanced_accuracy": float("nan"), "n_train": int(tr.sum()), "n_test": int(te.sum())}
    clf = DecisionTreeClassifier(max_depth=3, class_weight="balanced", random_state=0)
    clf.fit(np.log10(x[tr])[:, None], y[tr])
    p = clf.predict(np.log10(x[te])[:, None])
    return {"balanced_accuracy": balanced_accuracy(y[te], p), "accuracy": float((p == y[te]).mean()),
            "n_train": int(tr.sum()), "n_test": int(te.sum()), "model": "decision tree (depth 3) on log10 value"}


def _concentration_by_bin(ds: xr.Dataset, bins: np.ndarray, order: list[str]) -> list[dict[str, Any]]:
    """Per bin (in ``order``) and method: mean share of relevance in each map's top 10% pixels."""
    norm = normalized(ds["saliency"], "mass")
    q = norm.quantile(0.9, dim=list(PIXELS)).drop_vars("quantile")
    top = norm.where(norm >= q).sum(list(PIXELS)).compute()
    rows = []
    for b in [b for b in order if (bins == b).any()]:
        sel = bins == b
        for m in store.strings(top[METHOD].values):
            rows.append({"bin": str(b), "method": str(m), "n": int(sel.sum()),
                         "top10_share": float(top.sel({METHOD: m}).values[sel].mean())})
    return rows


def metadata_dependence(workspace: str | os.PathLike[str], model_id: str, dataset: str, by: str = schema.UM_PER_PX,
                        bins: list[float] | None = None, split: str = "test",
                        device: torch.device | str = "cpu") -> dict[str, Any]:
    """Accuracy against the metadata ``by`` (binned): per-bin accuracy and class mix, the
    scale-only baseline, Cramer's V of bin with label and with prediction (see the module doc);
    predictions not stored are computed on ``device``."""
    images = store.open_group(workspace, schema.group_path(schema.IMAGES, dataset))
    if by not in images.coords:
        raise ShortcutError(f"images/{dataset}: no coordinate {by!r}; coordinates: {sorted(map(str, images.coords))}")
    classes = [str(c) for c in images.attrs[schema.ATTR_CLASSES]]
    y = np.asarray(images[schema.LABEL_INDEX].values, np.int64)
    splits = store.strings(images[schema.SPLIT].values)
    x = np.asarray(images[by].values, float)
    ev = splits == split
    if not ev.any():
        raise ShortcutError(f"images/{dataset}: no sample in split {split!r}")
    pred = predictions(workspace, model_id, dataset, device)
    edges = bins or default_bins(x)
    cut = pd.cut(x, bins=edges, include_lowest=True)
    labels = np.array([str(c) if isinstance(c, pd.Interval) else "" for c in cut], object)
    rows = []
    for b in [str(c) for c in cut.categories]:
        sel = ev & (labels == b)
        if not sel.any():
            continue
        counts = pd.Series([classes[i] for i in y[sel]]).value_counts()
        rows.append({"bin": b, "n": int(sel.sum()), "accuracy": float((pred[sel] == y[sel]).mean()),
                     "majority_class": str(counts.index[0]), "majority_share": float(counts.iloc[0] / sel.sum()),
                     "classes": {str(k): int(v) for k, v in counts.items()}})
    binned = ev & (labels != "")
    return {"by": by, "bins": edges, "split": split, "n": int(ev.sum()), "n_classes": len(classes),
            "samples_outside_bins": int((ev & ~binned).sum()),  # the bins given leave them out of the tables
            "accuracy": float((pred[ev] == y[ev]).mean()), "balanced_accuracy": balanced_accuracy(y[ev], pred[ev]),
            "per_bin": rows, "scale_baseline": _scale_baseline(x, y, splits == "train", ev),
            "cramers_v_label": cramers_v(labels[binned], y[binned]),
            "cramers_v_predicted": cramers_v(labels[binned], pred[binned]),
            "cramers_v_excess_90ci": excess_interval(labels[binned], y[binned], pred[binned]),
            "_sample_bins": dict(zip(store.strings(images[schema.SAMPLE].values), labels))}


def _metadata_report(workspace: str, dataset: str, model_id: str, ds: xr.Dataset | None, th: Thresholds, by: str,
                     bins: list[float] | None, split: str, compare_model: str | None,
                     device: torch.device | str) -> ShortcutReport:
    meta = metadata_dependence(workspace, model_id, dataset, by, bins, split, device)
    sample_bins = meta.pop("_sample_bins")
    if ds is not None:
        ids = store.strings(ds[schema.SAMPLE].values)
        order = [str(b) for b in pd.cut([], bins=meta["bins"], include_lowest=True).categories]
        meta["attribution_by_bin"] = _concentration_by_bin(ds, np.array([sample_bins[i] for i in ids], object), order)
    compare: dict[str, Any] = {}
    if compare_model:
        cds = model_dataset(workspace, compare_model)
        other = metadata_dependence(workspace, compare_model, cds, by, meta["bins"], split, device)
        other.pop("_sample_bins")
        compare = {"model_id": compare_model, "dataset": cds, **other}
    bal, chance = meta["balanced_accuracy"], 1.0 / meta["n_classes"]
    base = meta["scale_baseline"]["balanced_accuracy"]
    v_lab, v_pred = meta["cramers_v_label"], meta["cramers_v_predicted"]
    reasons = [(f"{meta['split']} split, n={meta['n']}: balanced accuracy {bal:.2f} (chance {chance:.2f}); "
               f"scale-only baseline (class from log10 {by} alone) {base:.2f}"),
               f"Cramer's V of the {by} bin with the true label {v_lab:.2f}, with the prediction {v_pred:.2f}"]
    confounded = base >= chance + th.above_chance
    if confounded:
        reasons.append(f"class and {by} are confounded: the scale-only baseline is {base - chance:.2f} above chance")
    ci = meta["cramers_v_excess_90ci"]
    follows_scale = v_pred >= v_lab + th.association_excess and ci[0] > 0
    reasons.append(f"V(prediction) - V(label) = {v_pred - v_lab:+.2f}, bootstrap 90% interval "
                   f"[{ci[0]:+.2f}, {ci[1]:+.2f}]; counts as following scale when >= {th.association_excess} "
                   "and the interval excludes 0" + (": it does" if follows_scale else ": it does not"))
    compare_drop = float("nan")
    if compare:
        compare_drop = bal - compare["balanced_accuracy"]
        reasons.append(f"model {compare_model} on {compare['dataset']} (one physical pixel size): balanced accuracy "
                       f"{compare['balanced_accuracy']:.2f} on its {split} split (n={compare['n']}; "
                       f"its scale-only baseline {compare['scale_baseline']['balanced_accuracy']:.2f}); "
                       f"difference {compare_drop:+.2f} (note: a different image set if resampling skipped images)")
    if bal < chance + th.above_chance:
        verdict = INCONCLUSIVE
        reasons.insert(0, f"balanced accuracy {bal:.2f} is within {th.above_chance} of chance: nothing to explain")
    elif follows_scale or compare_drop >= th.compare_drop:
        verdict = SHORTCUT
        if compare_drop >= th.compare_drop:
            reasons.insert(0, f"resampling to one pixel size costs {compare_drop:.2f} balanced accuracy "
                              f"(>= {th.compare_drop}): the model used scale")
    elif bal >= base + th.baseline_margin and (not confounded or compare_drop <= th.compare_keep):
        verdict = STRUCTURE
        reasons.insert(0, f"the CNN beats the scale-only baseline by {bal - base:.2f} (>= {th.baseline_margin})"
                          + (" and keeps its accuracy at one pixel size" if compare else "")
                          + " and its predictions do not follow scale more than the labels do")
    else:
        verdict = INCONCLUSIVE
        if bal < base + th.baseline_margin:
            why = (f"the CNN ({bal:.2f}) does not beat the scale-only baseline ({base:.2f}) by {th.baseline_margin}: "
                   "accuracy cannot separate structure from scale")
        else:
            why = (f"class and {by} are confounded and the fixed-pixel-size model loses {compare_drop:.2f} "
                   f"(between {th.compare_keep} and {th.compare_drop})")
        reasons.insert(0, why + ("" if compare else "; train a model on images resampled to one pixel size "
                                                    "(geometry target_um_per_px) and pass it as compare model"))
    return ShortcutReport(model_id=model_id, dataset=dataset, kind="metadata", verdict=verdict, reasons=reasons,
                          n_samples=meta["n"], accuracy=meta["accuracy"], balanced_accuracy=bal, chance=chance,
                          thresholds=asdict(th), metadata=meta, compare=compare)


# ----------------------------------------------------------------------------- training-split overlap


def training_overlap(workspace: str, entry: ModelEntry, dataset: str, samples: Sequence[str]) -> dict[str, int]:
    """How many of ``samples`` of ``dataset`` the model was trained (``train``) or early-stopped
    (``val``) on: its training dataset and splits (re-made by fold when it was trained on a fold)
    come from its catalog entry. Empty for another dataset."""
    if dataset != entry.dataset:
        return {}
    images = store.open_group(workspace, schema.group_path(schema.IMAGES, dataset))
    split = store.strings(images[schema.SPLIT].values)
    tc = entry.train_config
    if tc.get("folds"):
        from xaiflow.training import fold_split

        split = fold_split(split, store.strings(images[schema.GROUP].values),
                           np.asarray(images[schema.LABEL_INDEX].values, np.int64), int(tc["folds"]),
                           int(tc.get("fold") or 0), int(tc.get("seed", 0)))
    pos = pd.Index(store.strings(images[schema.SAMPLE].values)).get_indexer(list(samples))
    judged = split[pos[pos >= 0]]
    return {name: int((judged == name).sum()) for name in ("train", "val") if (judged == name).any()}


def overlap_warning(overlap: dict[str, int], n: int, model_id: str) -> str | None:
    """One warning line naming the counts and splits, or None when there is no overlap."""
    if not overlap:
        return None
    where = " and ".join(f"{k} in its {'training' if s == 'train' else 'validation'} split"
                         for s, k in overlap.items())
    return (f"{where} of the {n} judged samples: model {model_id} has seen them while training, so numbers on them "
            "overstate how it does on new images (explain the test split only: `splits: [test]` in the config's "
            "`attribution:` section)")


# ----------------------------------------------------------------------------- entry point


def shortcut_report(workspace: str | os.PathLike[str], model_id: str, dataset: str | None = None, *,
                    compare_model: str | None = None, by: str | None = None, bins: list[float] | None = None,
                    split: str = "test", evidence: Selection | None = None, suspect: Selection | None = None,
                    pairs_per_sample: int = 2, seed: int = 0, thresholds: Thresholds | None = None,
                    device: torch.device | str = "cpu") -> ShortcutReport:
    """Shortcut verdict for ``model_id`` on ``dataset`` (default: its training dataset).

    With ``masks/<dataset>``: mask mass, ablation of the ``evidence`` mask classes, moves and a
    content swap of the ``suspect`` ones (:func:`mask_roles`; ``pairs_per_sample`` swaps per
    sample, ``seed``) and the ``has_shortcut`` split, over the samples with maps for every method.
    Without: metadata dependence on ``split`` (and ``compare_model``); ``by`` defaults to
    ``source_um_per_px`` (the original image's pixel size, the same for a model trained on
    resampled images) when recorded, else ``um_per_px``. Judged samples (those ``n_samples``
    counts) the model was trained or validated on are counted in ``training_overlap`` and named in
    ``warnings``. The model runs on ``device`` (e.g. ``"cuda"``; the config's device).
    """
    workspace = str(workspace)
    th = thresholds or Thresholds()
    entry = trained_model(workspace, model_id)  # unknown model -> clear error
    model_id, dataset = entry.model_id, dataset or str(entry.dataset)
    if not store.group_exists(workspace, schema.group_path(schema.IMAGES, dataset)):
        raise ShortcutError(f"{workspace}: no dataset {dataset!r} (groups: {', '.join(store.list_groups(workspace))})")
    has_masks = store.group_exists(workspace, schema.group_path(schema.MASKS, dataset))
    has_maps = store.group_exists(workspace, saliency_group(dataset, model_id))
    if by is None:
        coords = store.open_group(workspace, schema.group_path(schema.IMAGES, dataset)).coords
        by = SOURCE_UM_PER_PX if SOURCE_UM_PER_PX in coords else schema.UM_PER_PX
    if has_masks:
        if not has_maps:
            raise ShortcutError(f"no saliency for dataset {dataset!r} and model {model_id!r}: the mask report needs "
                                "maps; run `xaiflow attribute`")
        ds = _explained(workspace, dataset, model_id)
        rep, judged = _mask_report(workspace, dataset, entry, ds, th, evidence, suspect, pairs_per_sample, seed,
                                   device)
    else:
        try:
            ds = _explained(workspace, dataset, model_id) if has_maps else None
            rep = _metadata_report(workspace, dataset, model_id, ds, th, by, bins, split, compare_model, device)
        except QueryError as e:
            raise ShortcutError(str(e)) from None
        outside = rep.metadata.get("samples_outside_bins")
        if outside:
            rep.warnings.append(f"{outside} of the {rep.metadata['n']} {split} samples have {by} outside the bins "
                                f"{rep.metadata['bins']} (or no value): they are left out of the per-bin accuracy "
                                "and Cramer's V; widen the bins to include them")
        images = store.open_group(workspace, schema.group_path(schema.IMAGES, dataset))
        judged = store.strings(images[schema.SAMPLE].values)[store.strings(images[schema.SPLIT].values) == split]
    if not has_masks and (evidence or suspect):
        rep.warnings.append(f"no masks/{dataset}: the evidence and suspect mask classes given are not used (the "
                            "verdict without masks judges the dependence on metadata)")
    rep.training_overlap = training_overlap(workspace, entry, dataset, judged)
    warning = overlap_warning(rep.training_overlap, len(judged), model_id)
    if warning:
        rep.warnings.append(warning)
    return rep
