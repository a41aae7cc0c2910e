"""Figures written to disk (matplotlib, Agg): what a scientist looks at first."""

from __future__ import annotations

import os
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import xarray as xr  # noqa: E402

from xaiflow.saliency import METHOD  # noqa: E402


def normalize_map(m: np.ndarray, signed: bool) -> np.ndarray:
    """Scale one raw map for display: by its 99th percentile of |values| (robust to outliers)."""
    scale = np.nanpercentile(np.abs(m), 99) or 1.0
    out = m / scale
    return np.clip(out, -1, 1) if signed else np.clip(np.abs(out), 0, 1)


def saliency_grid(ds: xr.Dataset, samples: list[str], path: str | os.PathLike[str]) -> Path:
    """Grid: one row per sample (image, then each method's map over it), titled with labels.

    ``ds`` is :func:`xaiflow.saliency.open_saliency`'s dataset. Signed methods use a
    diverging colormap (red: evidence for the explained class, blue: against), unsigned
    ones a sequential one; each map is scaled by its own 99th percentile.
    """
    methods = [str(m) for m in ds[METHOD].values]
    classes = list(ds.attrs.get("classes", []))
    target_mode = ds.attrs.get("target", "")
    sub = ds.sel(sample=samples).compute()
    fig, axes = plt.subplots(len(samples), len(methods) + 1, figsize=(2.6 * (len(methods) + 1), 2.7 * len(samples)),
                             squeeze=False)
    for r, sid in enumerate(samples):
        row = sub.sel(sample=sid)
        img = row.image.values
        label = str(row.label.values)
        axes[r, 0].imshow(img, cmap="gray")
        um = float(row.um_per_px.values) if "um_per_px" in row.coords else float("nan")
        axes[r, 0].set_title(f"{sid}\ntrue: {label}" + (f"\n{um:.3g} um/px" if np.isfinite(um) else ""), fontsize=8)
        for c, m in enumerate(methods):
            ax = axes[r, c + 1]
            raw = row.saliency.sel({METHOD: m}).values
            t = int(row.target.sel({METHOD: m}).values)
            ax.imshow(img, cmap="gray")
            if not np.isfinite(raw).any():
                ax.set_title(f"{m}\nnot computed", fontsize=8)
                continue
            signed = bool(np.nanmin(raw) < 0)
            im = ax.imshow(normalize_map(raw, signed), cmap="RdBu_r" if signed else "inferno",
                           vmin=-1 if signed else 0, vmax=1, alpha=0.6)
            name = classes[t] if 0 <= t < len(classes) else "?"
            ax.set_title(f"{m}\nexplains {target_mode}: {name}", fontsize=8)
            bar = fig.colorbar(im, ax=ax, fraction=0.046, pad=0.02, ticks=[-1, 0, 1] if signed else [0, 1])
            bar.ax.tick_params(labelsize=6)
            bar.set_label("relevance / p99" if signed else "|relevance| / p99", fontsize=6)
    for ax in axes.flat:
        ax.set_xticks([])
        ax.set_yticks([])
    fig.suptitle(f"{ds.attrs.get('model_id', '')}: attribution maps", fontsize=10)
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
