"""Figures of the studies, drawn with matplotlib's object API on the Agg canvas (no pyplot, no
global backend change): a classification bar chart with the pooled confusion matrix, the
generalization heatmaps, and the accuracy-against-k curves with their spread over folds."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import xarray as xr
from matplotlib.figure import Figure
from matplotlib.patches import Rectangle

from xaiflow.figures import save_figure


def classification_figure(ds: xr.Dataset, path: Path) -> Path:
    """Bars: balanced accuracy (mean +- std over folds) per feature set and classifier, chance
    dashed; right: the pooled out-of-fold confusion matrix of the best pair, rows normalized."""
    sets, clfs = [str(v) for v in ds.feature_set.values], [str(v) for v in ds.classifier.values]
    classes = [str(c) for c in ds.true_class.values]
    fig = Figure(figsize=(6 + 0.9 * len(sets) + 0.5 * len(classes), 5), layout="constrained")
    left, right = fig.subplots(1, 2, width_ratios=[1.2 + 0.3 * len(sets), 1 + 0.15 * len(classes)])
    width = 0.8 / len(clfs)
    x = np.arange(len(sets))
    for j, clf in enumerate(clfs):
        left.bar(x + (j - (len(clfs) - 1) / 2) * width, ds["mean"].sel(classifier=clf).values, width,
                 yerr=ds["std"].sel(classifier=clf).values, capsize=3, label=clf.replace("_", " "))
    left.axhline(ds.attrs["chance"], color="k", ls="--", lw=1, label="chance")
    left.set_xticks(x, sets, rotation=20, ha="right")
    left.set_ylim(0, 1.18)
    left.set_yticks(np.linspace(0, 1, 6))
    left.set_ylabel("balanced accuracy (specimen-grouped CV)")
    left.set_title(f"{ds.attrs['dataset']}: {ds.attrs['n_splits']} folds, {ds.attrs['n_specimens']} specimens")
    left.legend(fontsize=8, loc="upper center", ncols=len(clfs) + 1, frameon=False)

    best = ds["mean"].argmax(...)
    sel = ds.isel(feature_set=int(best["feature_set"]), classifier=int(best["classifier"]))
    cm = sel.confusion.values.astype(float)
    norm = cm / np.maximum(cm.sum(axis=1, keepdims=True), 1)
    im = right.imshow(norm, vmin=0, vmax=1, cmap="Blues")
    for (i, j), n in np.ndenumerate(cm.astype(int)):
        right.text(j, i, str(n), ha="center", va="center", fontsize=8, color="white" if norm[i, j] > 0.5 else "black")
    right.set_xticks(range(len(classes)), classes, rotation=35, ha="right", fontsize=8)
    right.set_yticks(range(len(classes)), classes, fontsize=8)
    right.set_xlabel("predicted class")
    right.set_ylabel("true class")
    right.set_title(f"{sel.feature_set.item()} / {sel.classifier.item()} (pooled out-of-fold)", fontsize=9)
    fig.colorbar(im, ax=right, label="recall (row-normalized)", shrink=0.8)
    return save_figure(fig, path, dpi=150)


def generalization_figure(ds: xr.Dataset, path: Path) -> Path:
    """One heatmap per model: rows = training domain, columns = test domain, mean +- std annotated,
    the in-domain diagonal outlined, one shared colorbar."""
    models = [str(m) for m in ds.model.values]
    domains = [str(d) for d in ds.train_domain.values]
    n = len(models)
    cols = min(3, n)
    rows = int(np.ceil(n / cols))
    side = 1.2 + 1.1 * len(domains)
    fig = Figure(figsize=(cols * side + 1.2, rows * side + 0.6), layout="constrained")
    axes = np.atleast_1d(fig.subplots(rows, cols, squeeze=False)).ravel()
    im = None
    for ax, model in zip(axes, models):
        mean = ds["mean"].sel(model=model).values
        std = ds["std"].sel(model=model).values
        im = ax.imshow(np.ma.masked_invalid(mean), vmin=0, vmax=1, cmap="viridis")
        for (i, j), v in np.ndenumerate(mean):
            text = "n/a" if not np.isfinite(v) else f"{v:.2f}\n±{std[i, j]:.2f}"
            ax.text(j, i, text, ha="center", va="center", fontsize=8, color="white" if v < 0.6 else "black")
            if i == j:
                ax.add_patch(Rectangle((j - 0.46, i - 0.46), 0.92, 0.92, fill=False, ec="red", lw=2))
        ax.set_xticks(range(len(domains)), domains, rotation=30, ha="right", fontsize=8)
        ax.set_yticks(range(len(domains)), domains, fontsize=8)
        ax.set_xlabel("test domain")
        ax.set_ylabel("train domain")
        ax.set_title(model, fontsize=9)
    for ax in axes[n:]:
        ax.set_visible(False)
    fig.colorbar(im, ax=axes[:n].tolist(), label="balanced accuracy (held-out specimens)", shrink=0.8)
    fig.suptitle(f"Generalization across domains (red: in-domain grouped CV; chance {ds.attrs['chance']:.2f}; "
                 f"classes: {', '.join(ds.attrs['classes'])})", fontsize=9)
    return save_figure(fig, path, dpi=150)


def reduction_figure(ds: xr.Dataset, path: Path) -> Path:
    """Per feature set: balanced accuracy against the number of features kept, one line per method
    with a band of +- 1 std over folds, the full-feature accuracy and the target line, k marked."""
    sets = [str(s) for s in ds.feature_set.values]
    fig = Figure(figsize=(5.2 * len(sets), 4.2), layout="constrained")
    axes = np.atleast_1d(fig.subplots(1, len(sets), squeeze=False)).ravel()
    target = ds.attrs["target"]
    for ax, fs in zip(axes, sets):
        full = float(ds.full_mean.sel(feature_set=fs))
        for j, m in enumerate(ds.reduction.values):
            mean = ds["mean"].sel(feature_set=fs, reduction=m)
            std = ds["std"].sel(feature_set=fs, reduction=m)
            ok = np.isfinite(mean.values)
            k = ds.k.values[ok]
            (line,) = ax.plot(k, mean.values[ok], marker="o", ms=3, label=str(m).replace("_", " "))
            ax.fill_between(k, (mean - std).values[ok], (mean + std).values[ok], color=line.get_color(), alpha=0.2)
            kt = float(ds.k_target.sel(feature_set=fs, reduction=m))
            if np.isfinite(kt):
                ax.axvline(kt, color=line.get_color(), ls=":", lw=1)
                ax.annotate(f"k{round(100 * target)}={int(kt)}", (kt, float(mean.sel(k=int(kt)))),
                            textcoords="offset points", xytext=(4, -12 - 10 * j), fontsize=8, color=line.get_color())
        ax.axhline(full, color="k", lw=1, label=f"all {int(ds.n_features.sel(feature_set=fs))} features")
        ax.axhline(target * full, color="k", ls="--", lw=1, label=f"{target:.0%} of all")
        ax.axhline(ds.attrs["chance"], color="gray", ls=":", lw=1, label="chance")
        ax.set_xscale("log")
        ax.set_ylim(0, 1.05)
        ax.set_xlabel("number of features kept (k)")
        ax.set_ylabel(f"balanced accuracy ({ds.attrs['classifier'].replace('_', ' ')}, grouped CV)")
        ax.set_title(f"{ds.attrs['dataset']}: {fs}")
        ax.legend(fontsize=8, loc="lower right")
    return save_figure(fig, path, dpi=150)
