"""Figures written to disk: what a scientist looks at first.

Drawn with matplotlib's object API on the Agg canvas (no pyplot, no global backend change),
so the library can draw inside notebooks, Dask workers and Prefect tasks alike.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import xarray as xr
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from xaiflow.saliency import METHOD


def save_figure(fig: Figure, path: str | os.PathLike[str], dpi: int = 110) -> Path:
    """Write ``fig`` to ``path`` (parent folders created) and return the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    FigureCanvasAgg(fig)
    fig.savefig(path, dpi=dpi, bbox_inches="tight")
    return path


def normalize_map(m: np.ndarray, signed: bool) -> np.ndarray:
    """Scale one raw map for display: by its 99th percentile of |values| (robust to outliers)."""
    scale = np.nanpercentile(np.abs(m), 99) or 1.0
    out = m / scale
    return np.clip(out, -1, 1) if signed else np.clip(np.abs(out), 0, 1)


def saliency_grid(ds: xr.Dataset, samples: list[str], path: str | os.PathLike[str],
                  notes: dict[str, str] | None = None) -> Path:
    """Grid: one row per sample (image, then each method's map over it), titled with labels
    (and a sample's line of ``notes``, e.g. its predicted class).

    ``ds`` is :func:`xaiflow.saliency.open_saliency`'s dataset. Signed methods use a
    diverging colormap (red: evidence for the explained class, blue: against), unsigned
    ones a sequential one; each map is scaled by its own 99th percentile.
    """
    methods = [str(m) for m in ds[METHOD].values]
    classes = list(ds.attrs.get("classes", []))
    target_mode = ds.attrs.get("target", "")
    sub = ds.sel(sample=samples).compute()
    # one colour scale per method across the rows: signed if any shown map has negative values
    signed_methods = {m: bool(np.nanmin(sub.saliency.sel({METHOD: m}).values, initial=0.0) < 0) for m in methods}
    fig = Figure(figsize=(2.6 * (len(methods) + 1), 2.7 * len(samples)))
    axes = fig.subplots(len(samples), len(methods) + 1, squeeze=False)
    for r, sid in enumerate(samples):
        row = sub.sel(sample=sid)
        img = row.image.values
        label = str(row.label.values)
        axes[r, 0].imshow(img, cmap="gray")
        um = float(row.um_per_px.values) if "um_per_px" in row.coords else float("nan")
        note = f"\n{notes[sid]}" if notes and sid in notes else ""
        axes[r, 0].set_title(f"{sid}\ntrue: {label}{note}" + (f"\n{um:.3g} um/px" if np.isfinite(um) else ""),
                             fontsize=8)
        for c, m in enumerate(methods):
            ax = axes[r, c + 1]
            raw = row.saliency.sel({METHOD: m}).values
            t = int(row.target.sel({METHOD: m}).values)
            ax.imshow(img, cmap="gray")
            if not np.isfinite(raw).any():
                ax.set_title(f"{m}\nnot computed", fontsize=8)
                continue
            signed = signed_methods[m]
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
    return save_figure(fig, path)


def group_map_grid(maps: xr.DataArray, path: str | os.PathLike[str], title: str, *,
                   shared_scale: bool = False) -> Path:
    """Grid of mean normalized maps: one row per group (class, bin...), one column per method;
    with ``shared_scale`` one colour scale per method across the groups (:func:`group_map_figure`)."""
    return save_figure(group_map_figure(maps, title, shared_scale=shared_scale)[0], path)


def group_map_figure(maps: xr.DataArray, title: str, *,
                     shared_scale: bool = False) -> tuple[Figure, dict[tuple[str, str], tuple[float, float]]]:
    """The figure of :func:`group_map_grid` and the colour limits of each panel, keyed by (group, method).

    With ``shared_scale`` every group's panel of a method spans 0 to that method's largest value over
    the groups, so a brighter class is more relevance there, not a different scale; otherwise each
    panel spans its own range."""
    group_dim = maps.dims[0]
    groups = [str(g) for g in maps[group_dim].values]
    methods = [str(m) for m in maps[METHOD].values]
    top = {m: float(np.nanmax(maps.sel({METHOD: m}).values, initial=0.0)) or 1.0 for m in methods}
    fig = Figure(figsize=(2.6 * len(methods), 2.5 * len(groups)))
    axes = fig.subplots(len(groups), len(methods), squeeze=False)
    limits: dict[tuple[str, str], tuple[float, float]] = {}
    for r, g in enumerate(groups):
        for c, m in enumerate(methods):
            ax = axes[r, c]
            im = ax.imshow(maps.sel({group_dim: g, METHOD: m}).values, cmap="inferno",
                           **({"vmin": 0.0, "vmax": top[m]} if shared_scale else {}))
            limits[(g, m)] = tuple(float(v) for v in im.get_clim())
            bar = fig.colorbar(im, ax=ax, fraction=0.046, pad=0.02)
            bar.ax.tick_params(labelsize=6)
            n = int(maps["n_samples"].sel({group_dim: g})) if "n_samples" in maps.coords else None
            ax.set_title(f"{g}" + (f" (n={n})" if n is not None else "") + f"\n{m}", fontsize=8)
            ax.set_xticks([])
            ax.set_yticks([])
    scale = "; one colour scale per method across rows" if shared_scale else ""
    fig.suptitle(title + f"\n(mean share of relevance per pixel; each map sums to 1{scale})", fontsize=9)
    fig.tight_layout()
    return fig, limits


def matrix_figure(matrix: xr.DataArray, path: str | os.PathLike[str], title: str, vmin: float = -1,
                  vmax: float = 1) -> Path:
    """A labelled heatmap with the values written in the cells (method agreement, ...)."""
    rows, cols = [str(v) for v in matrix[matrix.dims[0]].values], [str(v) for v in matrix[matrix.dims[1]].values]
    fig = Figure(figsize=(1.0 + 0.7 * len(cols), 0.8 + 0.6 * len(rows)))
    ax = fig.subplots()
    im = ax.imshow(matrix.values, cmap="viridis", vmin=vmin, vmax=vmax)
    ax.set_xticks(range(len(cols)), cols, rotation=45, ha="right", fontsize=8)
    ax.set_yticks(range(len(rows)), rows, fontsize=8)
    for i in range(len(rows)):
        for j in range(len(cols)):
            v = float(matrix.values[i, j])
            light = np.isfinite(v) and (v - vmin) / ((vmax - vmin) or 1.0) > 0.6  # viridis turns yellow
            ax.text(j, i, f"{v:.2f}", ha="center", va="center", fontsize=7, color="k" if light else "w")
    fig.colorbar(im, ax=ax)
    ax.set_title(title, fontsize=9)
    fig.tight_layout()
    return save_figure(fig, path)
