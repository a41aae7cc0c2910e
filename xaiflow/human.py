"""Humans and the model side by side: do experts agree, do they reach the model's class, and do the
attribution maps point where the experts painted?

Three questions, one study per (dataset, model):

1. **Inter-annotator agreement** (:func:`annotator_agreement`): per pair of annotators, Cohen's
   kappa on the classes they assigned and the IoU/Dice of their painted regions (mean over the
   samples both annotated); Fleiss' kappa over the samples every annotator rated.
2. **Human class vs model and truth** (:func:`class_agreement`): per annotator and pooled, the
   confusion matrix, accuracy and Cohen's kappa of the human class against the model's predicted
   class, and against the true label (how hard the images are for people).
3. **Maps vs human regions** (:func:`map_region_values`): per attribution method, annotator and
   sample, four measures of how well the map points at the painted region:

   * ``pointing_game``: the map's maximum is inside the region (Zhang et al. 2018; tied maxima
     share the hit); chance: the region's area share;
   * ``relevance_mass``: the share of the positive relevance inside the region (Arras et al.
     2022); chance: the area share;
   * ``rank_correlation``: Spearman's rho between the map and the region indicator (0 outside,
     1 inside), i.e. the point-biserial correlation of the map's pixel ranks; chance: 0;
   * ``auc``: the ROC AUC of the map as a pixel detector of the region (Mann-Whitney: the chance
     that a random region pixel scores above a random outside pixel, ties count half); chance: 0.5.

   Each is summarized per (annotator, method) by its mean over samples with a seeded bootstrap
   95% interval (resampling samples), the chance level beside it (the mean area share of the same
   samples for the first two), the mean per-sample excess over chance (value - chance, paired: the
   area share differs from image to image) with its interval from the same resamples, and two
   flags: ``beats_chance`` (the excess interval lies above 0) and ``excludes_chance`` (it does not
   contain 0; below chance counts too).

Human regions come from ``annotations/<dataset>`` (:mod:`xaiflow.annotations`) or from imported
segmentation masks (:func:`regions_from_masks`, annotator id ``masks``, with
:func:`xaiflow.maskspec.parse_mask_selection` choosing the mask classes per image class). Results
are stored as ``human/<dataset>/<model>``: ``value(sample, annotator, xai_method, metric)``,
``chance(sample, annotator, metric)`` and the summary tables as JSON attrs.

Regions, maps and predictions are matched by sample id, never by position: the regions are put in
the order of ``images/<dataset>`` and the maps looked up by id. Memory is bounded whatever the
image size and ``n_boot``: samples are scored a block at a time (:data:`BLOCK_BYTES`), and
bootstrap resamples are drawn a block at a time (:data:`BOOT_BYTES`).
"""

from __future__ import annotations

import datetime as dt
import itertools
import json
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import dask.array as da
import numpy as np
import pandas as pd
import xarray as xr
from scipy.stats import rankdata

import xaiflow
from xaiflow import schema, store
from xaiflow.annotations import (
    ANNOTATED_AT,
    ANNOTATED_CLASS,
    ANNOTATOR,
    REGION,
    AnnotationError,
    annotation_group,
    check_current,
    open_annotations,
)
from xaiflow.errors import XaiflowError
from xaiflow.locks import group_lock
from xaiflow.metrics.localization import pointing_game, relevance_mass_accuracy

HUMAN = "human"  # group kind
METRIC = "metric"
MASKS_ANNOTATOR = "masks"
MAP_METRICS = ("pointing_game", "relevance_mass", "rank_correlation", "auc")
#: chance level of the metrics whose chance does not depend on the region (the others: its area share)
FIXED_CHANCE = {"rank_correlation": 0.0, "auc": 0.5}
#: the study's settings kept in its provenance (and in :attr:`HumanStudy.settings`)
SETTINGS = ("absolute", "n_boot", "seed", "level", "from_masks", "use_masks", "mask_selection", "methods",
            "checkpoint_sha256", "latest_annotation")
#: bytes of maps, regions and working arrays held at once: the study scores this many bytes' worth of
#: samples at a time (one sample at least), so full-size micrographs do not fill the memory
BLOCK_BYTES = 256 * 2**20
#: working bytes per pixel while one map is scored against the regions (float64 copy, ranks, centred ranks,
#: the region indicator and products)
WORK_BYTES_PER_PIXEL = 64
#: bytes of bootstrap resample counts held at once (whatever ``n_boot`` and the number of samples)
BOOT_BYTES = 8 * 2**20


class HumanError(XaiflowError):
    """The human-vs-model study cannot run (no annotations or masks, no maps, unknown model...)."""


def human_group(dataset: str, model_id: str) -> str:
    return schema.group_path(HUMAN, dataset, model_id)


# ----------------------------------------------------------------------------- agreement on classes


def _confusion(a: Sequence[str], b: Sequence[str], classes: Sequence[str]) -> np.ndarray:
    index = {c: i for i, c in enumerate(classes)}
    table = np.zeros((len(classes), len(classes)), np.int64)
    for x, y in zip(a, b):
        table[index[x], index[y]] += 1
    return table


def cohen_kappa(a: Sequence[str], b: Sequence[str], classes: Sequence[str] | None = None) -> float:
    """Cohen's kappa of two raters' classes, ``(p_o - p_e) / (1 - p_e)``; NaN without samples, 1.0 when
    both always give the same single class (nothing to disagree on: p_e = 1 and p_o = 1)."""
    a, b = [str(x) for x in a], [str(x) for x in b]
    if not a:
        return float("nan")
    table = _confusion(a, b, sorted(set(classes or ()) | set(a) | set(b))).astype(np.float64)
    n = table.sum()
    p_o = np.trace(table) / n
    p_e = float((table.sum(0) * table.sum(1)).sum() / n ** 2)
    if p_e == 1.0:
        return 1.0 if p_o == 1.0 else float("nan")
    return float((p_o - p_e) / (1 - p_e))


def fleiss_kappa(ratings: np.ndarray) -> float:
    """Fleiss' kappa of (n_samples, n_raters) class labels, every sample rated by every rater."""
    ratings = np.asarray(ratings).astype(str)
    n, r = ratings.shape
    if n == 0 or r < 2:
        return float("nan")
    cats = np.unique(ratings)
    counts = (ratings[:, :, None] == cats[None, None, :]).sum(axis=1).astype(np.float64)  # (n, k)
    p_i = ((counts ** 2).sum(axis=1) - r) / (r * (r - 1))
    p_bar = p_i.mean()
    p_j = counts.sum(axis=0) / (n * r)
    p_e = float((p_j ** 2).sum())
    if p_e == 1.0:
        return 1.0 if p_bar == 1.0 else float("nan")
    return float((p_bar - p_e) / (1 - p_e))


def iou_dice(a: np.ndarray, b: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-sample IoU and Dice of two (n, y, x) regions; NaN where both are empty."""
    a = np.asarray(a, bool).reshape(len(a), -1)
    b = np.asarray(b, bool).reshape(len(b), -1)
    inter, union = (a & b).sum(axis=1), (a | b).sum(axis=1)
    total = a.sum(axis=1) + b.sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return (np.where(union > 0, inter / union, np.nan), np.where(total > 0, 2 * inter / total, np.nan))


def block_rows(bytes_per_sample: int) -> int:
    """How many samples of ``bytes_per_sample`` fit in :data:`BLOCK_BYTES` (at least one)."""
    return max(1, BLOCK_BYTES // max(int(bytes_per_sample), 1))


def _done(annotations: xr.Dataset) -> np.ndarray:
    return np.asarray(annotations[schema.DONE].values, bool)


def _names(annotations: xr.Dataset) -> list[str]:
    return store.strings(annotations[ANNOTATOR].values).tolist()


def annotator_agreement(annotations: xr.Dataset) -> pd.DataFrame:
    """One row per annotator pair: annotator_a, annotator_b, n_samples (both annotated), cohen_kappa (on
    the assigned classes), iou and dice (of the painted regions, mean over those samples). Fleiss' kappa
    over the samples every annotator rated is in ``attrs`` (``fleiss_kappa``, ``fleiss_n_samples``,
    ``fleiss_note``: why it is NaN when it is)."""
    names, done = _names(annotations), _done(annotations)
    classes = store.strings(annotations[ANNOTATED_CLASS].values)
    has_class = classes != ""
    rows = []
    for i, j in itertools.combinations(range(len(names)), 2):
        both = np.flatnonzero(done[:, i] & done[:, j])
        rated = both[has_class[both, i] & has_class[both, j]]
        row = {"annotator_a": names[i], "annotator_b": names[j], "n_samples": len(both),
               "cohen_kappa": cohen_kappa(classes[rated, i], classes[rated, j], annotations.attrs.get("classes")),
               "iou": float("nan"), "dice": float("nan")}
        if len(both):
            region = annotations[REGION]
            iou, dice = np.full(len(both), np.nan), np.full(len(both), np.nan)
            per_block = block_rows(8 * region.sizes[schema.Y] * region.sizes[schema.X])  # 2 regions, their bools
            for start in range(0, len(both), per_block):  # bounded memory: a block of samples at a time
                block = both[start:start + per_block]
                a = np.asarray(region.isel({schema.SAMPLE: block, ANNOTATOR: i}).values)
                b = np.asarray(region.isel({schema.SAMPLE: block, ANNOTATOR: j}).values)
                iou[start:start + len(block)], dice[start:start + len(block)] = iou_dice(a, b)
            row["iou"] = float(np.nanmean(iou)) if np.isfinite(iou).any() else float("nan")
            row["dice"] = float(np.nanmean(dice)) if np.isfinite(dice).any() else float("nan")
        rows.append(row)
    df = pd.DataFrame(rows, columns=["annotator_a", "annotator_b", "n_samples", "cohen_kappa", "iou", "dice"])
    rated_by_all = (done & has_class).all(axis=1) if names else np.zeros(len(done), bool)
    if len(names) < 2:
        kappa, note = float("nan"), f"needs at least 2 annotators ({len(names)} so far)"
    elif not rated_by_all.any():
        kappa, note = float("nan"), f"no sample was rated by all {len(names)} annotators"
    else:
        kappa, note = fleiss_kappa(classes[rated_by_all]), ""
    df.attrs.update(fleiss_kappa=kappa, fleiss_n_samples=int(rated_by_all.sum()), fleiss_note=note)
    return df


def class_agreement(reference: Sequence[str], human: Sequence[str], classes: Sequence[str]) -> dict[str, Any]:
    """Confusion matrix (rows: reference, columns: human), accuracy and Cohen's kappa of two label lists."""
    reference, human = [str(x) for x in reference], [str(x) for x in human]
    classes = list(dict.fromkeys([*classes, *sorted(set(reference) | set(human))]))
    n = len(human)
    return {"n_samples": n, "accuracy": float(np.mean(np.array(reference) == np.array(human))) if n else float("nan"),
            "cohen_kappa": cohen_kappa(reference, human, classes),
            "confusion": _confusion(reference, human, classes).tolist(), "classes": classes}


def human_vs(annotations: xr.Dataset, reference: np.ndarray, against: str) -> list[dict[str, Any]]:
    """Per annotator and pooled ("all"): the human class against ``reference`` (a class name per sample of
    ``annotations``, '' where there is none: the model's prediction or the true label); annotators without
    classes (imported masks) are left out."""
    classes = [str(c) for c in annotations.attrs.get("classes", [])]
    names, done = _names(annotations), _done(annotations)
    given = store.strings(annotations[ANNOTATED_CLASS].values)
    reference = np.asarray(reference).astype(str)
    rows, pooled_ref, pooled_human = [], [], []
    for j, name in enumerate(names):
        keep = done[:, j] & (given[:, j] != "") & (reference != "")  # '': no reference for the sample
        if not keep.any():
            continue
        rows.append({"annotator": name, "against": against, **class_agreement(reference[keep], given[keep, j], classes)})
        pooled_ref += reference[keep].tolist()
        pooled_human += given[keep, j].tolist()
    if len(rows) > 1:
        rows.append({"annotator": "all", "against": against, **class_agreement(pooled_ref, pooled_human, classes)})
    return rows


# ----------------------------------------------------------------------------- maps against regions


def rank_correlation(maps: np.ndarray, regions: np.ndarray) -> np.ndarray:
    """Spearman's rho of each map with its region indicator, (B, H, W) x2 -> (B,); NaN for an empty or full
    region or a constant map."""
    return _rho(_ranks(maps), _inside(regions))


def detection_auc(maps: np.ndarray, regions: np.ndarray) -> np.ndarray:
    """ROC AUC of each map as a detector of its region's pixels (Mann-Whitney U / (n_in * n_out), ties
    half), (B, H, W) x2 -> (B,); NaN for an empty or full region."""
    return _auc(_ranks(maps), _inside(regions))


def _inside(regions: np.ndarray) -> np.ndarray:
    return np.asarray(regions, bool).reshape(len(regions), -1)


def _ranks(maps: np.ndarray) -> np.ndarray:
    """(B, H, W) maps -> (B, H*W) pixel ranks (ties: average rank), the part both rank measures share."""
    flat = np.asarray(maps, np.float64).reshape(len(maps), -1)
    return rankdata(flat, axis=1, method="average")


def _rho(ranks: np.ndarray, inside: np.ndarray) -> np.ndarray:
    r = ranks - ranks.mean(axis=1, keepdims=True)
    m = inside - inside.mean(axis=1, keepdims=True)
    with np.errstate(invalid="ignore", divide="ignore"):
        return (r * m).sum(axis=1) / np.sqrt((r ** 2).sum(axis=1) * (m ** 2).sum(axis=1))


def _auc(ranks: np.ndarray, inside: np.ndarray) -> np.ndarray:
    n_in = inside.sum(axis=1).astype(np.float64)
    n_out = inside.shape[1] - n_in
    u = (ranks * inside).sum(axis=1) - n_in * (n_in + 1) / 2
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where((n_in > 0) & (n_out > 0), u / (n_in * n_out), np.nan)


def map_region_values(maps: np.ndarray, regions: np.ndarray, absolute: bool = False) -> np.ndarray:
    """(B, H, W) maps and regions -> (B, len(MAP_METRICS)) values (see the module docstring); NaN where the
    region is empty."""
    maps = _scored(maps, absolute)
    return _region_values(maps, _ranks(maps), regions)


def _scored(maps: np.ndarray, absolute: bool) -> np.ndarray:
    """The maps as they are scored: |map| with ``absolute``, NaN as 0."""
    return np.nan_to_num(np.abs(maps) if absolute else np.asarray(maps), nan=0.0)


def _region_values(maps: np.ndarray, ranks: np.ndarray, regions: np.ndarray) -> np.ndarray:
    """:func:`map_region_values` of scored maps whose pixel ranks are computed already (once per map,
    whatever the number of annotators)."""
    regions = np.asarray(regions, bool)
    inside = _inside(regions)
    return np.stack([pointing_game(maps, regions), relevance_mass_accuracy(maps, regions),
                     _rho(ranks, inside), _auc(ranks, inside)], axis=1)


def chance_levels(regions: np.ndarray) -> np.ndarray:
    """(B, H, W) regions -> (B, len(MAP_METRICS)) chance levels: area share, area share, 0, 0.5."""
    area = np.asarray(regions, bool).reshape(len(regions), -1).mean(axis=1)
    area = np.where(area > 0, area, np.nan)
    return np.stack([area, area, *(np.where(np.isfinite(area), FIXED_CHANCE[m], np.nan)
                                   for m in MAP_METRICS[2:])], axis=1)


def bootstrap_summary(values: np.ndarray, chance: np.ndarray, *, n_boot: int = 1000, seed: int = 0,
                      level: float = 0.95) -> dict[str, Any]:
    """Mean of ``values`` over samples with a bootstrap percentile interval (resampling samples, seeded), the
    mean chance level of the same samples, and the mean per-sample excess ``values - chance`` with its
    interval from the same resamples (``excess``, ``excess_low``, ``excess_high``). The comparison with
    chance is paired because the chance level differs from sample to sample (the region's area share):
    ``beats_chance`` when the excess interval lies above 0, ``excludes_chance`` when it does not contain 0.

    Resamples are drawn as multinomial counts, :data:`BOOT_BYTES` of them at a time: memory does not
    grow with ``n_boot``."""
    keep = np.isfinite(values) & np.isfinite(chance)
    v, c = np.asarray(values, np.float64)[keep], np.asarray(chance, np.float64)[keep]
    out = {"n_samples": int(keep.sum()), "value": float("nan"), "ci_low": float("nan"), "ci_high": float("nan"),
           "chance": float("nan"), "excess": float("nan"), "excess_low": float("nan"), "excess_high": float("nan"),
           "beats_chance": False, "excludes_chance": False}
    n = len(v)
    if not n:
        return out
    paired = np.stack([v, v - c], axis=1)  # (n, 2): the value and its excess over chance, resampled together
    rng = np.random.default_rng(seed)
    per_block = max(1, BOOT_BYTES // (8 * n))
    boot = np.concatenate([rng.multinomial(n, np.full(n, 1.0 / n), size=min(per_block, n_boot - start)) @ paired / n
                           for start in range(0, n_boot, per_block)])
    tail = (1 - level) / 2 * 100
    (lo, excess_lo), (hi, excess_hi) = np.percentile(boot, [tail, 100 - tail], axis=0)
    out.update(value=float(v.mean()), ci_low=float(lo), ci_high=float(hi), chance=float(c.mean()),
               excess=float(paired[:, 1].mean()), excess_low=float(excess_lo), excess_high=float(excess_hi),
               beats_chance=bool(excess_lo > 0), excludes_chance=bool(excess_lo > 0 or excess_hi < 0))
    return out


# ----------------------------------------------------------------------------- human regions


def regions_from_masks(workspace: str | os.PathLike[str], dataset: str, selection: Any = None) -> xr.Dataset:
    """Imported segmentation masks (``masks/<dataset>``) as human regions, in the layout of
    ``annotations/<dataset>`` with one annotator, ``masks``: ``region`` from the mask classes
    ``selection`` picks per image class (:func:`xaiflow.maskspec.parse_mask_selection`: a class name,
    ``a+b``, ``label=class,...,*=class`` or a mapping; None: every class but the first), ``done`` where
    the image has a mask, and no assigned class (masks say where, not which class)."""
    from xaiflow.maskspec import has_mask, parse_mask_selection

    group = schema.group_path(schema.MASKS, dataset)
    if not store.group_exists(workspace, group):
        raise HumanError(f"{workspace}: dataset {dataset!r} has no masks ({group} does not exist); ingest masks "
                         "with the dataset (a mask folder in its config)")
    masks = store.open_group(workspace, group)
    mask_classes = [str(c) for c in masks.attrs[schema.ATTR_MASK_CLASSES]]
    labels = store.strings(masks[schema.LABEL].values)
    chosen = parse_mask_selection(selection, mask_classes, sorted(set(labels.tolist())))
    flags = has_mask(masks)
    n = masks.sizes[schema.SAMPLE]
    mask = masks[schema.MASK].data  # lazy: a region is computed per mask chunk when it is read
    per_sample = (mask.chunks[0],)

    def select(block: np.ndarray, block_labels: np.ndarray, block_flags: np.ndarray) -> np.ndarray:
        return chosen.regions(block, block_labels[:, 0, 0], mask_classes, block_flags[:, 0, 0]).astype(np.uint8)

    regions = da.map_blocks(select, mask, da.from_array(labels.astype(object), chunks=per_sample)[:, None, None],
                            da.from_array(flags, chunks=per_sample)[:, None, None], dtype=np.uint8)[:, None]
    cell = (schema.SAMPLE, ANNOTATOR)
    images = store.open_group(workspace, schema.group_path(schema.IMAGES, dataset))
    return xr.Dataset(
        {REGION: ((*cell, schema.Y, schema.X), regions),
         ANNOTATED_CLASS: (cell, np.full((n, 1), "", dtype=object)),
         schema.DONE: (cell, flags[:, None])},
        coords={schema.SAMPLE: masks[schema.SAMPLE].values, schema.LABEL: (schema.SAMPLE, labels),
                ANNOTATOR: [MASKS_ANNOTATOR]},
        attrs={"classes": [str(c) for c in images.attrs[schema.ATTR_CLASSES]],
               "mask_selection": chosen.describe(), "source": group},
    )


def human_regions(workspace: str | os.PathLike[str], dataset: str, from_masks: Any = None,
                  use_masks: bool = False) -> xr.Dataset:
    """The regions the study compares with: the annotations, plus the imported masks (annotator ``masks``)
    when ``use_masks`` (``from_masks`` selects their classes); an error saying how to make either.

    The samples are those of ``images/<dataset>``, in its order (matched by sample id); annotations made
    for other images (re-ingested since) are refused (:func:`xaiflow.annotations.check_current`)."""
    images = store.open_group(workspace, schema.group_path(schema.IMAGES, dataset))
    ids = store.strings(images[schema.SAMPLE].values)
    parts = []
    if store.group_exists(workspace, annotation_group(dataset)):
        check_current(workspace, dataset, images)
        ann = open_annotations(workspace, dataset)
        parts.append(_in_order(xr.Dataset({REGION: ann[REGION], ANNOTATED_CLASS: ann[ANNOTATED_CLASS],
                                           schema.DONE: ann[schema.DONE]},
                                          coords={schema.LABEL: ann[schema.LABEL]},
                                          attrs={"classes": ann.attrs["classes"]}), ids, annotation_group(dataset)))
    if use_masks:
        parts.append(_in_order(regions_from_masks(workspace, dataset, from_masks), ids,
                               schema.group_path(schema.MASKS, dataset)))
    if not parts:
        raise HumanError(f"{workspace}: no human regions for dataset {dataset!r}: annotate images with `xaiflow "
                         f"annotate -w {workspace} -d {dataset} --annotator NAME`, or compare with imported masks "
                         "(--from-masks CLASSES)")
    if len(parts) == 1:
        return parts[0]
    merged = xr.concat(parts, dim=ANNOTATOR, coords="minimal", compat="override", join="override")  # same order
    merged[ANNOTATED_CLASS] = merged[ANNOTATED_CLASS].astype(object)
    return merged.assign_attrs(classes=parts[0].attrs["classes"], mask_selection=parts[1].attrs["mask_selection"])


def _in_order(regions: xr.Dataset, ids: np.ndarray, source: str) -> xr.Dataset:
    """``regions`` with the samples ``ids`` (those of the images), in that order, matched by sample id."""
    at = pd.Index(store.strings(regions[schema.SAMPLE].values)).get_indexer(ids)
    if (at < 0).any() or regions.sizes[schema.SAMPLE] != len(ids):
        raise HumanError(f"{source} does not hold the samples of the images ({int((at < 0).sum())} image(s) "
                         "missing); ingest the dataset again")
    return regions.isel({schema.SAMPLE: at})


# ----------------------------------------------------------------------------- the study


@dataclass
class HumanStudy:
    """The study's result: tables (lists of dicts) and where they were stored."""

    dataset: str
    model_id: str
    group: str | None
    annotators: list[str]
    methods: list[str]
    n_samples: int
    agreement: list[dict[str, Any]]
    fleiss: dict[str, Any]
    vs_model: list[dict[str, Any]]
    vs_truth: list[dict[str, Any]]
    maps: list[dict[str, Any]]
    settings: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return json.loads(json.dumps(self.__dict__, default=_jsonable))


def _jsonable(v: Any) -> Any:
    if isinstance(v, np.generic):
        return v.item()
    if isinstance(v, np.ndarray):
        return v.tolist()
    raise TypeError(f"not JSON-able: {type(v)}")


def _clean(v: Any) -> Any:
    """NaN as None, numpy scalars as Python (for JSON attrs)."""
    if isinstance(v, dict):
        return {k: _clean(x) for k, x in v.items()}
    if isinstance(v, list):
        return [_clean(x) for x in v]
    if isinstance(v, np.generic):
        v = v.item()
    if isinstance(v, float) and not np.isfinite(v):
        return None
    return v


def _model_predictions(workspace: str, model_id: str, dataset: str) -> np.ndarray:
    from xaiflow.shortcut import predictions

    return np.asarray(predictions(workspace, model_id, dataset))


def _predicted_classes(workspace: str, model_id: str, dataset: str, classes: list[str], ids: np.ndarray) -> np.ndarray:
    """The model's predicted class name of each sample ``ids`` (matched by id with the images the predictions
    follow); '' for a sample the images do not have."""
    images = store.open_group(workspace, schema.group_path(schema.IMAGES, dataset))
    image_ids = store.strings(images[schema.SAMPLE].values)
    names = np.asarray(classes, dtype=object)[_model_predictions(workspace, model_id, dataset)]
    at = pd.Index(image_ids).get_indexer(ids)
    return np.where(at >= 0, names[np.maximum(at, 0)], "")


def run_study(workspace: str | os.PathLike[str], dataset: str | None = None, model: str | None = None, *,
              methods: list[str] | None = None, from_masks: Any = None, use_masks: bool = False,
              absolute: bool = False, n_boot: int = 1000, seed: int = 0, write: bool = True) -> HumanStudy:
    """Run the study of ``model`` on ``dataset`` (see the module docstring); stores ``human/<dataset>/<model>``
    unless ``write`` is False. ``use_masks`` adds imported masks as annotator ``masks`` (``from_masks``:
    the mask classes, per image class if wanted)."""
    from xaiflow.models.catalog import ModelCatalog
    from xaiflow.saliency import METHOD, SaliencyQueryError, open_saliency

    workspace = str(workspace)
    if not 10 <= n_boot <= 100_000:
        raise HumanError(f"n_boot {n_boot} must be between 10 and 100000")
    entry = ModelCatalog(workspace).resolve(model, dataset=dataset)
    dataset = dataset or entry.dataset
    try:
        regions = human_regions(workspace, dataset, from_masks, use_masks or from_masks is not None)
    except AnnotationError as e:
        raise HumanError(str(e)) from None
    try:
        sal = open_saliency(workspace, dataset, entry.model_id, methods, with_images=False)
    except SaliencyQueryError as e:
        raise HumanError(str(e)) from None
    names, method_names = _names(regions), [str(m) for m in sal[METHOD].values]
    classes = [str(c) for c in regions.attrs["classes"]]
    done = _done(regions)
    ids = store.strings(regions[schema.SAMPLE].values)  # the images' samples, in their order
    at = pd.Index(store.strings(sal[schema.SAMPLE].values)).get_indexer(ids)  # maps of each sample, by id
    mapped = np.asarray(sal["done"].values, bool).all(axis=1)
    has_maps = (at >= 0) & mapped[np.maximum(at, 0)] if len(mapped) else np.zeros(len(ids), bool)
    chosen = np.flatnonzero(done.any(axis=1) & has_maps)
    if not len(chosen):
        raise HumanError(f"no sample of {dataset!r} has both a human region and maps of every method "
                         f"({int(done.any(axis=1).sum())} annotated, {int(mapped.sum())} with maps of "
                         f"{', '.join(method_names)}); run `xaiflow attribute` on the annotated images")
    values = np.full((len(chosen), len(names), len(method_names), len(MAP_METRICS)), np.nan, np.float32)
    chance = np.full((len(chosen), len(names), len(MAP_METRICS)), np.nan, np.float32)
    pixels = sal.sizes[schema.Y] * sal.sizes[schema.X]
    rows_per_block = block_rows(pixels * (4 * len(method_names) + len(names) + WORK_BYTES_PER_PIXEL))
    for start in range(0, len(chosen), rows_per_block):
        rows = chosen[start:start + rows_per_block]
        block = slice(start, start + len(rows))
        region = np.asarray(regions[REGION].isel({schema.SAMPLE: rows}).values, bool)  # (b, a, y, x)
        maps = np.asarray(sal["saliency"].isel({schema.SAMPLE: at[rows]}).values, np.float32)  # (b, m, y, x)
        ok = done[rows]
        for j in range(len(names)):
            chance[block, j] = np.where(ok[:, j, None], chance_levels(region[:, j]), np.nan)
        for k in range(len(method_names)):
            scored = _scored(maps[:, k], absolute)
            ranks = _ranks(scored)  # once per map, shared by every annotator
            for j in range(len(names)):
                values[block, j, k] = np.where(ok[:, j, None], _region_values(scored, ranks, region[:, j]), np.nan)
            del scored, ranks
    summary = [{"annotator": a, "xai_method": m, "metric": metric,
                **bootstrap_summary(values[:, j, k, q], chance[:, j, q], n_boot=n_boot, seed=seed)}
               for j, a in enumerate(names) for k, m in enumerate(method_names) for q, metric in enumerate(MAP_METRICS)]
    agreement = annotator_agreement(regions)
    labels = store.strings(regions[schema.LABEL].values)
    predicted = _predicted_classes(workspace, entry.model_id, dataset, classes, ids)
    settings = {"absolute": absolute, "n_boot": n_boot, "seed": seed, "level": 0.95,
                "from_masks": from_masks if isinstance(from_masks, str | None) else json.dumps(from_masks),
                "use_masks": MASKS_ANNOTATOR in names, "mask_selection": regions.attrs.get("mask_selection"),
                "methods": method_names, "checkpoint_sha256": entry.sha256,
                "latest_annotation": latest_annotation(workspace, dataset)}
    study = HumanStudy(
        dataset=dataset, model_id=entry.model_id, group=None, annotators=names, methods=method_names,
        n_samples=len(chosen), agreement=_clean(agreement.to_dict("records")),
        fleiss={k.removeprefix("fleiss_"): _clean(v) for k, v in agreement.attrs.items()},
        vs_model=_clean(human_vs(regions, predicted, "model")), vs_truth=_clean(human_vs(regions, labels, "truth")),
        maps=_clean(summary), settings=_clean(settings))
    if write:
        study.group = _store(workspace, study, regions, chosen, values, chance)
    return study


def _store(workspace: str, study: HumanStudy, regions: xr.Dataset, chosen: np.ndarray, values: np.ndarray,
           chance: np.ndarray) -> str:
    """Write ``human/<dataset>/<model>`` (small: the annotated samples only), replacing an earlier study."""
    from xaiflow.saliency import METHOD

    group = human_group(study.dataset, study.model_id)
    sample_coords = {k: (schema.SAMPLE, np.asarray(store.strings(regions[k].values)[chosen], dtype=object))
                     for k in (schema.SAMPLE, schema.LABEL) if k in regions.coords}
    ds = xr.Dataset(
        {"value": ((schema.SAMPLE, ANNOTATOR, METHOD, METRIC), values),
         "chance": ((schema.SAMPLE, ANNOTATOR, METRIC), chance)},
        coords={**sample_coords, ANNOTATOR: np.array(study.annotators, object),
                METHOD: np.array(study.methods, object), METRIC: np.array(MAP_METRICS, object)},
        attrs={schema.ATTR_SCHEMA_VERSION: schema.SCHEMA_VERSION, schema.ATTR_STATUS: schema.STATUS_INCOMPLETE,
               schema.ATTR_PROVENANCE: {**study.settings, "model_id": study.model_id,
                                        "xaiflow_version": xaiflow.__version__,
                                        "created": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")},
               "agreement": json.dumps(study.agreement), "fleiss": json.dumps(study.fleiss),
               "vs_model": json.dumps(study.vs_model), "vs_truth": json.dumps(study.vs_truth),
               "maps": json.dumps(study.maps)},
    )
    ds["value"].attrs.update(long_name="agreement of the map with the human region")
    ds["chance"].attrs.update(long_name="chance level of the metric for the region (area share, 0 or 0.5)")
    with group_lock(workspace, group, "human-vs-model study"):
        store.write_group(workspace, group, ds)
        store.set_attrs(workspace, group, **{schema.ATTR_STATUS: schema.STATUS_COMPLETE})
    return group


def open_study(workspace: str | os.PathLike[str], dataset: str, model_id: str) -> HumanStudy:
    """The stored study's tables (as :func:`run_study` returned them)."""
    group = human_group(dataset, model_id)
    if not store.group_exists(workspace, group):
        raise HumanError(f"{workspace}: no human-vs-model study of {model_id} on {dataset} ({group}); run "
                         f"`xaiflow human -w {workspace} -d {dataset} -m {model_id}`")
    ds = store.open_group(workspace, group)
    from xaiflow.saliency import METHOD

    prov = dict(ds.attrs[schema.ATTR_PROVENANCE])
    return HumanStudy(dataset=dataset, model_id=model_id, group=group,
                      annotators=store.strings(ds[ANNOTATOR].values).tolist(),
                      methods=store.strings(ds[METHOD].values).tolist(), n_samples=int(ds.sizes[schema.SAMPLE]),
                      **{k: json.loads(ds.attrs[k]) for k in ("agreement", "fleiss", "vs_model", "vs_truth", "maps")},
                      settings={k: prov[k] for k in SETTINGS if k in prov})


def latest_annotation(workspace: str | os.PathLike[str], dataset: str) -> str:
    """The time of the newest stored submission in ``annotations/<dataset>`` ('' when there is none)."""
    if not store.group_exists(workspace, annotation_group(dataset)):
        return ""
    ann = open_annotations(workspace, dataset)
    times = store.strings(ann[ANNOTATED_AT].values)[_done(ann)]
    return max(times.tolist(), default="")


def current_study(workspace: str | os.PathLike[str], dataset: str, model_id: str) -> HumanStudy:
    """The stored study when it still describes the annotations (no submission since) and the model's
    checkpoint; else the study run again with the stored settings (and stored)."""
    from xaiflow.models.catalog import ModelCatalog

    stored = open_study(workspace, dataset, model_id)
    s = stored.settings
    if (s.get("latest_annotation") == latest_annotation(workspace, dataset)
            and s.get("checkpoint_sha256") == ModelCatalog(str(workspace)).get(model_id).sha256):
        return stored
    from_masks = s.get("from_masks")
    if isinstance(from_masks, str) and from_masks[:1] in "{[":  # a mapping or list, kept as JSON
        from_masks = json.loads(from_masks)
    return run_study(workspace, dataset, model_id, methods=s.get("methods"), use_masks=bool(s.get("use_masks")),
                     from_masks=from_masks, absolute=bool(s.get("absolute")), n_boot=int(s.get("n_boot", 1000)),
                     seed=int(s.get("seed", 0)))


# ----------------------------------------------------------------------------- presentation


def printed_tables(study: HumanStudy) -> list[tuple[str, list[dict[str, Any]], list[str]]]:
    """(title, rows, columns) of each table, for the CLI, the flow's artifacts and the report."""
    fleiss = study.fleiss
    kappa = fleiss.get("kappa")
    said = (f"Fleiss' kappa {kappa:.3f} over {fleiss.get('n_samples')} samples rated by all" if kappa is not None
            else f"Fleiss' kappa: n/a ({fleiss.get('note')})")
    maps = [{**r, "ci_95": _interval(r), "excess_ci_95": _interval(r, "excess_"),
             "beats chance": "yes" if r["beats_chance"] else "no"} for r in study.maps]
    return [
        (f"annotator agreement ({said})", study.agreement,
         ["annotator_a", "annotator_b", "n_samples", "cohen_kappa", "iou", "dice"]),
        ("human class vs the model's prediction", study.vs_model, ["annotator", "n_samples", "accuracy", "cohen_kappa"]),
        ("human class vs the true label", study.vs_truth, ["annotator", "n_samples", "accuracy", "cohen_kappa"]),
        (f"maps vs human regions of {study.model_id} (mean over samples, bootstrap 95% interval, chance level)",
         maps, ["annotator", "xai_method", "metric", "n_samples", "value", "ci_95", "chance", "excess", "excess_ci_95",
                "beats chance"]),
    ]


def _interval(row: dict[str, Any], prefix: str = "ci_") -> str:
    lo, hi = row.get(f"{prefix}low"), row.get(f"{prefix}high")
    return "" if lo is None or hi is None else f"[{lo:.3f}, {hi:.3f}]"


def conclusions(study: HumanStudy) -> list[str]:
    """Plain sentences: per method, on how many measures its maps point at the human regions beyond chance."""
    lines = []
    for method in study.methods:
        rows = [r for r in study.maps if r["xai_method"] == method and r["n_samples"]]
        if not rows:
            continue
        beat = sorted({r["metric"] for r in rows if r["beats_chance"]})
        total = len({r["metric"] for r in rows})
        if beat:
            lines.append(f"{method}: points at the human regions beyond chance on {len(beat)} of {total} measures "
                         f"({', '.join(beat)}).")
        else:
            lines.append(f"{method}: not distinguishable from chance on any measure: its maps do not point where "
                         "the humans painted.")
    pooled = [r for r in study.vs_model if r["annotator"] == "all"] or study.vs_model
    if pooled and pooled[-1]["n_samples"]:
        r = pooled[-1]
        lines.append(f"Human class vs the model: the humans ({r['annotator']}) chose the model's class in "
                     f"{r['accuracy']:.0%} of {r['n_samples']} images (Cohen's kappa {r['cohen_kappa']:.2f}).")
    return lines
