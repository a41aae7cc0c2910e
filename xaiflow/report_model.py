"""The report's "Model" section and its misclassified examples: how well the model does before what it looks at.

* :func:`model_html`: accuracy and balanced accuracy per split against the majority-class baseline,
  precision/recall per class, the confusion matrices of val and test (:func:`confusion_figure`) and the
  training curves (:func:`history_figure`), all from the checkpoint's ``metrics.json`` and ``history.json``
  (:class:`~xaiflow.models.catalog.ModelEntry`).
* :func:`misclassified_html`: a few explained samples the model got wrong, with their true and predicted
  class and every method's map (:func:`xaiflow.figures.saliency_grid`): where a scientist sees what the
  model looked at when it erred.

Each part that lacks its data (a model trained before the history was stored, predictions not stored,
no misclassified sample) becomes a sentence saying so; nothing here fails the report.
"""

from __future__ import annotations

import html
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import xarray as xr
from matplotlib.figure import Figure

from xaiflow import schema, store
from xaiflow.errors import XaiflowError
from xaiflow.figures import saliency_grid, sample_names, save_figure
from xaiflow.models.catalog import ModelCatalog
from xaiflow.saliency import METHOD

#: a function turning a written PNG into the report's HTML for it (the report's ``_img``)
Embed = Callable[[Path, str], str]


def confusion_figure(metrics: dict[str, Any], path: Path, splits: tuple[str, ...] = ("val", "test")) -> Path | None:
    """Confusion matrices (true class x predicted class, counts in the cells, colour: share of the
    true class) of each of ``splits`` found in ``metrics``; None when none has one."""
    classes = [str(c) for c in metrics.get("classes", [])]
    found = [(s, np.asarray(metrics[s]["confusion"], float)) for s in splits
             if isinstance(metrics.get(s), dict) and metrics[s].get("confusion") is not None]
    found = [(s, m) for s, m in found if m.ndim == 2 and m.shape == (len(classes), len(classes)) and m.size]
    if not found:
        return None
    k = len(classes)
    fig = Figure(figsize=(1.2 + (1.4 + 0.55 * k) * len(found), 1.4 + 0.5 * k))
    axes = fig.subplots(1, len(found), squeeze=False)[0]
    for ax, (split, counts) in zip(axes, found, strict=True):
        rows = counts.sum(1, keepdims=True)
        share = np.divide(counts, rows, out=np.zeros_like(counts), where=rows > 0)
        im = ax.imshow(share, cmap="Blues", vmin=0, vmax=1)
        for i in range(k):
            for j in range(k):
                ax.text(j, i, f"{int(counts[i, j])}", ha="center", va="center", fontsize=8,
                        color="w" if share[i, j] > 0.6 else "k")
        ax.set_xticks(range(k), classes, rotation=45, ha="right", fontsize=8)
        ax.set_yticks(range(k), classes, fontsize=8)
        ax.set_xlabel("predicted class", fontsize=8)
        ax.set_ylabel("true class", fontsize=8)
        bal = _num(metrics[split].get("balanced_accuracy"))
        ax.set_title(f"{split} split (n={int(counts.sum())})"
                     + (f"\nbalanced accuracy {bal:.2f}" if np.isfinite(bal) else ""), fontsize=9)
        bar = fig.colorbar(im, ax=ax, fraction=0.046, pad=0.03)
        bar.set_label("share of the true class", fontsize=7)
        bar.ax.tick_params(labelsize=6)
    fig.tight_layout()
    return save_figure(fig, path)


def history_figure(history: list[dict[str, Any]], path: Path, best_epoch: int | None = None) -> Path | None:
    """Training loss and validation (balanced) accuracy per epoch, the kept epoch marked; None without epochs."""
    rows = [r for r in history if isinstance(r, dict) and "epoch" in r]
    if not rows:
        return None
    epochs = [int(r["epoch"]) for r in rows]
    fig = Figure(figsize=(8.0, 3.0))
    loss_ax, acc_ax = fig.subplots(1, 2)
    for key, label in (("train_loss", "train"), ("val_loss", "val")):
        if any(key in r for r in rows):
            loss_ax.plot(epochs, [r.get(key, np.nan) for r in rows], "o-", ms=3, label=label)
    loss_ax.set_ylabel("cross-entropy loss")
    for key, label in (("val_balanced_accuracy", "val balanced accuracy"), ("val_accuracy", "val accuracy")):
        if any(key in r for r in rows):
            acc_ax.plot(epochs, [r.get(key, np.nan) for r in rows], "o-", ms=3, label=label)
    acc_ax.set_ylim(0, 1.05)
    acc_ax.set_ylabel("fraction correct")
    for ax in (loss_ax, acc_ax):
        ax.set_xlabel("epoch")
        if best_epoch:
            ax.axvline(best_epoch, color="gray", ls="--", lw=1, label=f"kept (epoch {best_epoch})")
        ax.legend(fontsize=7)
        ax.grid(alpha=0.3)
    fig.suptitle("training curves", fontsize=9)
    fig.tight_layout()
    return save_figure(fig, path)


def _num(v: Any) -> float:
    """A stored number, NaN where it is undefined (e.g. the precision of a class never predicted: null)."""
    try:
        return float(v)
    except (TypeError, ValueError):
        return float("nan")


def _split_rows(metrics: dict[str, Any]) -> list[dict[str, Any]]:
    rows = []
    for split in schema.SPLITS:
        m = metrics.get(split)
        if isinstance(m, dict) and "accuracy" in m:
            base = m.get("majority_baseline", {})
            rows.append({"split": split, "n": m.get("n"), "accuracy": _num(m["accuracy"]),
                         "balanced accuracy": _num(m.get("balanced_accuracy")),
                         "majority-class baseline": _num(base.get("balanced_accuracy"))})
    return rows


def _class_rows(metrics: dict[str, Any], split: str) -> list[dict[str, Any]]:
    per_class = (metrics.get(split) or {}).get("per_class") or {}
    return [{"class": c, "precision": _num(v.get("precision")), "recall": _num(v.get("recall")),
             "support": v.get("support")} for c, v in per_class.items()]


def model_html(workspace: str, model_id: str, folder: Path, table: Callable[..., str], embed: Embed) -> str:
    """The "Model" section (see the module docstring); ``table`` and ``embed`` are the report's HTML helpers."""
    try:
        entry = ModelCatalog(workspace).get(model_id)
        metrics = entry.metrics
    except (XaiflowError, OSError, ValueError) as e:
        return f"<p>The model's evaluation metrics cannot be read: {html.escape(str(e))}.</p>"
    parts = [(f"<p class='note'>{html.escape(entry.arch)}, trained on {html.escape(str(entry.dataset))} for "
             f"{metrics.get('epochs_run', '?')} epochs (kept: epoch {metrics.get('best_epoch', '?')}, the best "
             "validation balanced accuracy) on "
             f"{html.escape(str(metrics.get('device', '?')))}. The majority-class baseline is what always answering "
             "the most frequent class scores.</p>")]
    rows = _split_rows(metrics)
    parts.append(table(rows) if rows else "<p>No evaluation per split stored with this model.</p>")
    test = "test" if _class_rows(metrics, "test") else "val"
    if _class_rows(metrics, test):
        parts += [(f"<p>Per class on the {test} split (precision: share of the predictions of a class that are "
                  "right; recall: share of the class found):</p>"), table(_class_rows(metrics, test))]
    confusion = confusion_figure(metrics, folder / "confusion.png")
    parts.append(embed(confusion, "confusion matrices") if confusion else
                 "<p>No confusion matrix stored with this model (trained by an older xaiflow).</p>")
    try:
        history = entry.history()
    except (OSError, ValueError):
        history = []
    curves = history_figure(history, folder / "training_curves.png", metrics.get("best_epoch"))
    parts.append(embed(curves, "training curves") if curves else
                 "<p>No training history stored with this model (trained before it was kept): no training "
                 "curves.</p>")
    return "".join(parts)


def stored_predictions(workspace: str, ds: xr.Dataset, model_id: str,
                       dataset: str) -> tuple[np.ndarray | None, np.ndarray | None]:
    """The predicted class index and the class probabilities ``(sample, class)`` of each explained sample.

    The predicted class is the explained class when the maps explain the prediction, else the stored
    predictions of this checkpoint; the probabilities come from the stored predictions. Either is None
    when unknown (no predictions stored for this checkpoint, or not for every sample)."""
    from xaiflow.predict import current_predictions

    predicted = (np.asarray(ds["target"].isel({METHOD: 0}).values, np.int64) if ds.attrs.get("target") == "predicted"
                 else None)
    try:
        group = current_predictions(workspace, ModelCatalog(workspace).get(model_id), dataset)
    except (XaiflowError, OSError, KeyError):
        group = None
    if group is None:
        return predicted, None
    pred = store.open_group(workspace, group)
    index = {s: i for i, s in enumerate(sample_names(pred).tolist())}
    ids = sample_names(ds).tolist()
    if not all(s in index for s in ids):
        return predicted, None
    rows = [index[s] for s in ids]
    if predicted is None:
        predicted = np.asarray(pred["predicted"].values, np.int64)[rows]
    probabilities = np.asarray(pred["probabilities"].values, np.float64)[rows] if "probabilities" in pred else None
    return predicted, probabilities


def pick_misclassified(ds: xr.Dataset, predicted: np.ndarray, n: int) -> list[str]:
    """Up to ``n`` misclassified samples: test split first, one per true class before a second of any."""
    ids = sample_names(ds)
    labels = np.asarray(ds[schema.LABEL_INDEX].values, np.int64)
    split = store.strings(ds[schema.SPLIT].values) if schema.SPLIT in ds.coords else np.full(len(ids), "")
    wrong = np.array(sorted(np.flatnonzero(labels != predicted), key=lambda i: (split[i] != "test", i)), np.int64)
    rank = [int((labels[wrong[:k]] == labels[i]).sum()) for k, i in enumerate(wrong)]  # n-th of its class
    order = [i for _, i in sorted(zip(rank, wrong, strict=True), key=lambda t: t[0])]  # stable: test first
    return [str(ids[i]) for i in order[:n]]


def misclassified_html(workspace: str, ds: xr.Dataset, model_id: str, predicted: np.ndarray | None,
                       picked: list[str], folder: Path, embed: Embed, signed: dict[str, bool] | None = None) -> str:
    """The misclassified examples ``picked`` (:func:`pick_misclassified`; see the module docstring), or a
    sentence why there are none; ``signed``: each method's colour scale (:func:`xaiflow.figures.signed_methods`)."""
    if predicted is None:
        return ("<p>The model's predictions for the explained samples are not stored (the maps explain the "
                f"true class): run <code>xaiflow predict -w {html.escape(workspace)} -m {html.escape(model_id)}"
                "</code> to see misclassified examples here.</p>")
    if not picked:
        return f"<p>None of the {ds.sizes[schema.SAMPLE]} explained samples is misclassified.</p>"
    classes = [str(c) for c in ds.attrs.get(schema.ATTR_CLASSES, [])]
    ids = sample_names(ds).tolist()
    notes = {s: "predicted: " + (classes[p] if 0 <= (p := int(predicted[ids.index(s)])) < len(classes) else "?")
             for s in picked}
    explains = ("the (wrong) predicted class" if ds.attrs.get("target") == "predicted"
                else "the class named above it")
    n_wrong = int((np.asarray(ds[schema.LABEL_INDEX].values) != predicted).sum())
    path = saliency_grid(ds, picked, folder / "misclassified.png", notes=notes, signed=signed)
    return (f"<p class='note'>{n_wrong} of the {ds.sizes[schema.SAMPLE]} explained samples are misclassified; "
            f"{len(picked)} shown (test split first, one per true class first): the image with its true and "
            f"predicted class, then each method's map of {explains}: what the model looked at when it erred.</p>"
            + embed(path, "misclassified"))
