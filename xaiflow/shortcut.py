"""Shortcut report: does a model's evidence lie in the class-defining structures or elsewhere?

Two kinds of evidence, depending on what the data set offers:

**With masks** (``masks/<dataset>``, e.g. the synthetic source: 0 matrix, 1 structure, 2 shortcut):

* *attribution mass*: per method, the share of relevance inside each mask class against the
  class's area share (:func:`xaiflow.aggregate.mask_mass`); a ratio mass/area above 1 means
  more relevance per pixel than a uniform map would give;
* *ablation* (causal): the model's accuracy on the explained samples with the structure pixels
  replaced by the image's matrix level, and with the shortcut region *moved* to its mirrored
  positions (flipped in x, y and both; the corners of other classes for a corner marker). A
  model that reads the shortcut follows it and loses accuracy, whatever its maps show. Merely
  removing the shortcut is reported but does not decide: a model trained on images that all
  carry a marker (even at random corners) fails on images without one, measured: a model
  trained with the marker at a random corner lost 0.33 accuracy when it was removed, and
  0.09 when it was moved;
* *metadata split*: accuracy on samples with and without the shortcut when a ``has_shortcut``
  coordinate says which (the synthetic source records it).

The verdict comes from the ablation and the metadata split. Attribution mass is reported but
does not decide: a bright marker attracts gradient relevance even in a model that does not use
it (measured: an untrained small CNN gave the marker 1.5-7x its area share).

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
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import pandas as pd
import torch
import xarray as xr

from xaiflow import schema, store
from xaiflow.aggregate import PIXELS, QueryError, mask_mass, normalized
from xaiflow.errors import XaiflowError
from xaiflow.models.catalog import ModelCatalog, ModelEntry
from xaiflow.predict import current_predictions
from xaiflow.scores import balanced_accuracy
from xaiflow.saliency import METHOD, SaliencyQueryError, open_saliency, saliency_group
from xaiflow.training import predict_logits

SHORTCUT, STRUCTURE, INCONCLUSIVE = "shortcut", "structure", "inconclusive"
#: the pixel size of the original image, recorded at ingest before any resampling
SOURCE_UM_PER_PX = "source_um_per_px"


class ShortcutError(XaiflowError):
    """The report cannot be made (unknown model or dataset, no saliency, no predictions...)."""


@dataclass(frozen=True)
class Thresholds:
    """Decision thresholds of the verdict (documented in the report)."""

    #: a model within this of chance (1/classes) has nothing to explain -> inconclusive
    above_chance: float = 0.15
    #: accuracy lost when the shortcut region is moved (mirrored) that counts as reliance on it
    ablation_drop: float = 0.15
    #: below this loss the model does not need the region
    ablation_negligible: float = 0.05
    #: accuracy with the shortcut minus without it that counts as reliance on it
    split_gap: float = 0.3
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
    mask_mass: list[dict[str, Any]] = field(default_factory=list)
    ablation: dict[str, Any] = field(default_factory=dict)
    shortcut_split: dict[str, Any] = field(default_factory=dict)
    metadata: dict[str, Any] = field(default_factory=dict)
    compare: dict[str, Any] = field(default_factory=dict)

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


def predictions(workspace: str | os.PathLike[str], model_id: str, dataset: str) -> np.ndarray:
    """Predicted class index per sample of ``dataset``: the stored predictions group when it was
    made by this checkpoint from these images, else computed here (one forward pass per image)."""
    entry = ModelCatalog(workspace).get(model_id)
    group = current_predictions(workspace, entry, dataset)
    if group is not None:
        return np.asarray(store.open_group(workspace, group)["predicted"].values, np.int64)
    images = store.open_group(workspace, schema.group_path(schema.IMAGES, dataset))[schema.IMAGE]
    model = entry.load()
    with torch.no_grad():
        return np.concatenate([predict_logits(model, images[s:s + 64].values, torch.device("cpu")).argmax(1)
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


# ----------------------------------------------------------------------------- with masks


#: mirrorings of an image that move a corner marker to each other corner
_MIRRORS = {"flip_x": (slice(None), slice(None, None, -1)), "flip_y": (slice(None, None, -1), slice(None)),
            "flip_xy": (slice(None, None, -1), slice(None, None, -1))}


def _edited(x: np.ndarray, m: np.ndarray, classes: list[int], background: list[int], mirror: tuple | None) -> np.ndarray:
    """``x`` with the ``classes`` pixels filled with the mean over ``background`` pixels, and, with
    ``mirror``, those pixels pasted back at their mirrored position (the region moved)."""
    hole = np.isin(m, classes)
    bg = np.isin(m, background) & ~hole
    out = x.copy()
    out[hole] = x[bg].mean() if bg.any() else x[~hole].mean()
    if mirror is not None:
        moved = hole[mirror]
        out[moved] = x[mirror][moved]
    return out


def _ablated_accuracy(workspace: str, model_id: str, images: xr.DataArray, masks: np.ndarray, labels: np.ndarray,
                      edits: dict[str, tuple[list[int], list[tuple | None]]],
                      background: list[int]) -> dict[str, dict[str, Any]]:
    """Accuracy of the model on the images and on each edit: ``name -> (mask classes, mirrors)``;
    each mirror (or None: removal only) is one edited copy of every image, accuracies averaged."""
    model = ModelCatalog(workspace).get(model_id).load()
    out: dict[str, dict[str, Any]] = {}
    for name, (classes, mirrors) in {"original": ([], [None]), **edits}.items():
        accs, bals, first = [], [], None
        for mirror in mirrors:
            preds = []
            for s in range(0, images.shape[0], 64):
                x = images[s:s + 64].values.astype(np.float32)
                m = masks[s:s + 64]
                x = np.stack([_edited(x[i], m[i], classes, background, mirror) for i in range(len(x))])
                with torch.no_grad():
                    preds.append(predict_logits(model, x.astype(images.dtype), torch.device("cpu")).argmax(1))
            p = np.concatenate(preds)
            first = p if first is None else first
            accs.append(float((p == labels).mean()))
            bals.append(balanced_accuracy(labels, p))
        out[name] = {"classes": classes, "copies": len(mirrors), "accuracy": float(np.mean(accs)),
                     "balanced_accuracy": float(np.mean(bals)), "predicted": first}
    return out


def _mask_report(workspace: str, dataset: str, model_id: str, ds: xr.Dataset, th: Thresholds,
                 structure: list[str], shortcut: list[str]) -> ShortcutReport:
    masks = store.open_group(workspace, schema.group_path(schema.MASKS, dataset))
    mask_classes = [str(c) for c in masks.attrs[schema.ATTR_MASK_CLASSES]]
    unknown = sorted(set(structure + shortcut) - set(mask_classes))
    if unknown:
        raise ShortcutError(f"masks/{dataset}: mask class(es) {unknown} unknown; mask classes: {mask_classes}")
    idx = pd.Index(store.strings(masks[schema.SAMPLE].values)).get_indexer(store.strings(ds[schema.SAMPLE].values))
    if (idx < 0).any():
        raise ShortcutError(f"masks/{dataset}: no mask for {int((idx < 0).sum())} explained sample(s)")
    masks = masks.isel({schema.SAMPLE: idx})
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
    index = {k: i for i, k in enumerate(mask_classes)}
    background = [i for k, i in index.items() if k not in structure + shortcut]
    sc = [index[k] for k in shortcut]
    edits = {"structure": ([index[k] for k in structure], [None])}
    has_shortcut_pixels = bool(np.isin(masks[schema.MASK].values, sc).any())
    if has_shortcut_pixels:
        edits["shortcut"] = (sc, [None])
        edits["shortcut_moved"] = (sc, list(_MIRRORS.values()))
    abl = _ablated_accuracy(workspace, model_id, ds["image"], masks[schema.MASK].values, labels, edits, background)
    pred = abl["original"].pop("predicted")
    for v in abl.values():
        v.pop("predicted", None)
    acc = abl["original"]["accuracy"]
    chance = 1.0 / len(ds.attrs.get(schema.ATTR_CLASSES, [])) if ds.attrs.get(schema.ATTR_CLASSES) else 0.0
    drops = {k: acc - abl[k]["accuracy"] for k in edits}
    ablation = {**abl, "drop": drops, "chance": chance}

    split: dict[str, Any] = {}
    if "has_shortcut" in ds.coords:
        flag = np.asarray(ds["has_shortcut"].values, float) > 0.5
        split = {"n_with": int(flag.sum()), "n_without": int((~flag).sum()),
                 "accuracy_with": float((pred[flag] == labels[flag]).mean()) if flag.any() else float("nan"),
                 "accuracy_without": float((pred[~flag] == labels[~flag]).mean()) if (~flag).any() else float("nan")}
        split["usable"] = split["n_with"] >= th.min_group and split["n_without"] >= th.min_group
        split["gap"] = split["accuracy_with"] - split["accuracy_without"]

    reasons: list[str] = []
    if acc < chance + th.above_chance:
        verdict = INCONCLUSIVE
        reasons.append(f"accuracy {acc:.2f} on the {len(labels)} explained samples is within {th.above_chance} of "
                       f"chance ({chance:.2f}): the model has learned too little to say what it uses")
    else:
        shortcut_drop = drops.get("shortcut_moved", float("nan"))
        gap = split.get("gap", float("nan")) if split.get("usable") else float("nan")
        if shortcut_drop >= th.ablation_drop or gap >= th.split_gap:
            verdict = SHORTCUT
            if shortcut_drop >= th.ablation_drop:
                reasons.append(f"moving the shortcut to the mirrored corners lowers accuracy from {acc:.2f} to "
                               f"{abl['shortcut_moved']['accuracy']:.2f} (drop {shortcut_drop:.2f} >= "
                               f"{th.ablation_drop})")
            if gap >= th.split_gap:
                reasons.append(f"accuracy {split['accuracy_with']:.2f} with the shortcut vs "
                               f"{split['accuracy_without']:.2f} without (gap {gap:.2f} >= {th.split_gap})")
        elif (not has_shortcut_pixels or shortcut_drop < th.ablation_negligible) and \
                drops["structure"] >= th.ablation_drop and not gap >= th.split_gap:
            verdict = STRUCTURE
            reasons.append(("no shortcut pixels in the masks" if not has_shortcut_pixels else
                            f"moving the shortcut to the mirrored corners lowers accuracy by {shortcut_drop:+.2f} "
                            f"(< {th.ablation_negligible})") +
                           f"; removing the structures lowers it from {acc:.2f} to "
                           f"{abl['structure']['accuracy']:.2f} (drop {drops['structure']:.2f} >= {th.ablation_drop})")
        else:
            verdict = INCONCLUSIVE
            reasons.append(f"accuracy drop without the structures {drops['structure']:.2f}, with the shortcut "
                           f"moved {shortcut_drop:.2f}: neither rule applies (thresholds {th.ablation_drop}, "
                           f"{th.ablation_negligible})")
    if has_shortcut_pixels:
        reasons.append(f"removing the shortcut pixels (reported, not decisive) lowers accuracy by "
                       f"{drops['shortcut']:+.2f}: a model trained with a marker in every image may fail without "
                       "one even if the marker's position means nothing to it")
    favour = [r["method"] for r in mass_rows if r["mask_class"] in shortcut and r["ratio"] >= th.mass_ratio]
    on_structure = [r["method"] for r in mass_rows if r["mask_class"] in structure and r["ratio"] >= 1.0]
    methods = sorted({r["method"] for r in mass_rows})
    reasons.append(f"attribution mass (reported, not decisive): {len(on_structure)} of {len(methods)} methods give "
                   f"the structures at least their area share; "
                   + (f"{len(favour)} give the shortcut >= {th.mass_ratio}x its area share ({', '.join(favour)})"
                      if has_shortcut_pixels else "no shortcut region"))
    return ShortcutReport(model_id=model_id, dataset=dataset, kind="masks", verdict=verdict, reasons=reasons,
                          n_samples=len(labels), accuracy=acc, thresholds=asdict(th), mask_mass=mass_rows,
                          ablation=ablation, shortcut_split=split)


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
                        bins: list[float] | None = None, split: str = "test") -> dict[str, Any]:
    """Accuracy against the metadata ``by`` (binned): per-bin accuracy and class mix, the
    scale-only baseline, Cramer's V of bin with label and with prediction (see the module doc)."""
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
    pred = predictions(workspace, model_id, dataset)
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
            "accuracy": float((pred[ev] == y[ev]).mean()), "balanced_accuracy": balanced_accuracy(y[ev], pred[ev]),
            "per_bin": rows, "scale_baseline": _scale_baseline(x, y, splits == "train", ev),
            "cramers_v_label": cramers_v(labels[binned], y[binned]),
            "cramers_v_predicted": cramers_v(labels[binned], pred[binned]),
            "cramers_v_excess_90ci": excess_interval(labels[binned], y[binned], pred[binned]),
            "_sample_bins": dict(zip(store.strings(images[schema.SAMPLE].values), labels))}


def _metadata_report(workspace: str, dataset: str, model_id: str, ds: xr.Dataset | None, th: Thresholds, by: str,
                     bins: list[float] | None, split: str, compare_model: str | None) -> ShortcutReport:
    meta = metadata_dependence(workspace, model_id, dataset, by, bins, split)
    sample_bins = meta.pop("_sample_bins")
    if ds is not None:
        ids = store.strings(ds[schema.SAMPLE].values)
        order = [str(b) for b in pd.cut([], bins=meta["bins"], include_lowest=True).categories]
        meta["attribution_by_bin"] = _concentration_by_bin(ds, np.array([sample_bins[i] for i in ids], object), order)
    compare: dict[str, Any] = {}
    if compare_model:
        cds = model_dataset(workspace, compare_model)
        other = metadata_dependence(workspace, compare_model, cds, by, meta["bins"], split)
        other.pop("_sample_bins")
        compare = {"model_id": compare_model, "dataset": cds, **other}
    bal, chance = meta["balanced_accuracy"], 1.0 / meta["n_classes"]
    base = meta["scale_baseline"]["balanced_accuracy"]
    v_lab, v_pred = meta["cramers_v_label"], meta["cramers_v_predicted"]
    reasons = [f"{meta['split']} split, n={meta['n']}: balanced accuracy {bal:.2f} (chance {chance:.2f}); "
               f"scale-only baseline (class from log10 {by} alone) {base:.2f}",
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
                          n_samples=meta["n"], accuracy=meta["accuracy"], thresholds=asdict(th), metadata=meta,
                          compare=compare)


# ----------------------------------------------------------------------------- entry point


def shortcut_report(workspace: str | os.PathLike[str], model_id: str, dataset: str | None = None, *,
                    compare_model: str | None = None, by: str | None = None, bins: list[float] | None = None,
                    split: str = "test", structure: tuple[str, ...] = ("structure",),
                    shortcut: tuple[str, ...] = ("shortcut",), thresholds: Thresholds | None = None) -> ShortcutReport:
    """Shortcut verdict for ``model_id`` on ``dataset`` (default: its training dataset).

    With ``masks/<dataset>``: mask mass, ablation and the ``has_shortcut`` split over the samples
    with maps for every method. Without: metadata dependence on ``split`` (and ``compare_model``);
    ``by`` defaults to ``source_um_per_px`` (the original image's pixel size, the same for a model
    trained on resampled images) when recorded, else ``um_per_px``.
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
        return _mask_report(workspace, dataset, model_id, _explained(workspace, dataset, model_id), th,
                            list(structure), list(shortcut))
    try:
        ds = _explained(workspace, dataset, model_id) if has_maps else None
        return _metadata_report(workspace, dataset, model_id, ds, th, by, bins, split, compare_model)
    except QueryError as e:
        raise ShortcutError(str(e)) from None
