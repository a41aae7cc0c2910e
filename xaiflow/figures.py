"""Figures written to disk: what a scientist looks at first.

Drawn with matplotlib's object API on the Agg canvas (no pyplot, no global backend change),
so the library can draw inside notebooks, Dask workers and Prefect tasks alike. Every micrograph
panel goes through :func:`micrograph`, which draws its :func:`scale_bar` where the pixel size is
known; long titles are wrapped to their panel's width (:func:`wrap`).
"""

from __future__ import annotations

import os
import textwrap
from pathlib import Path

import numpy as np
import xarray as xr
from matplotlib import patheffects
from matplotlib.axes import Axes
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.patches import Rectangle

from xaiflow import schema, store
from xaiflow.saliency import METHOD

#: the string id of a sample where the ``sample`` index is an integer position
SAMPLE_ID = getattr(schema, "SAMPLE_ID", "sample_id")
#: a scale bar is about this share of its panel's width
BAR_FRACTION = 0.2
_OUTLINE = [patheffects.withStroke(linewidth=2.5, foreground="black")]


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


def sample_names(ds: xr.Dataset) -> np.ndarray:
    """Each sample's id as text: the ``sample_id`` coordinate where the index is an integer, else the index."""
    return store.strings(ds[SAMPLE_ID if SAMPLE_ID in ds.coords else schema.SAMPLE].values)


def sample_positions(ds: xr.Dataset, ids: list[str]) -> list[int]:
    """The positions of the samples named ``ids`` (:func:`sample_names`) in ``ds``."""
    index = {str(s): i for i, s in enumerate(sample_names(ds))}
    return [index[str(s)] for s in ids]


def pixel_size(ds: xr.Dataset, position: int | None = None) -> float:
    """The pixel size in um of one sample (``position``), or the one shared by every sample of ``ds``;
    NaN where unknown (no ``um_per_px``) or not shared."""
    if schema.UM_PER_PX not in ds.coords:
        return float("nan")
    values = np.atleast_1d(np.asarray(ds[schema.UM_PER_PX].values, np.float64))
    values = values[[position]] if position is not None else values
    finite = values[np.isfinite(values) & (values > 0)]
    return float(finite[0]) if len(finite) == len(values) and len(finite) and np.allclose(finite, finite[0]) \
        else float("nan")


def nice_length(target: float) -> float:
    """The round length (1, 2 or 5 times a power of ten) nearest to ``target`` on a log scale."""
    exponent = np.floor(np.log10(target))
    candidates = [m * 10.0 ** e for e in (exponent - 1, exponent, exponent + 1) for m in (1, 2, 5)]
    return float(min(candidates, key=lambda c: abs(np.log(c / target))))


def length_label(um: float) -> str:
    """``500 nm``, ``20 µm``, ``2 mm``."""
    if um < 1:
        return f"{um * 1000:g} nm"
    return f"{um / 1000:g} mm" if um >= 1000 else f"{um:g} µm"


def _corner(image: np.ndarray | None, box: tuple[float, float]) -> tuple[bool, bool]:
    """(bottom, right) of the image corner where a ``box`` (width, height in px) is darkest, so a white bar
    never sits on a bright feature such as a burned-in data bar; bottom right when no image is given."""
    if image is None:
        return True, True
    values = np.asarray(image, np.float64)
    values = values if values.ndim == 2 else values.mean(axis=0)
    h, w = values.shape
    bw, bh = int(np.ceil(box[0])), int(np.ceil(box[1]))
    spans = {True: slice(max(h - bh, 0), h), False: slice(0, bh)}, {True: slice(max(w - bw, 0), w), False: slice(0, bw)}
    corners = [(b, r) for b in (True, False) for r in (True, False)]  # preference: bottom right first
    return min(corners, key=lambda c: float(np.nanmean(values[spans[0][c[0]], spans[1][c[1]]])))


def scale_bar(ax: Axes, um_per_px: float, width_px: int, height_px: int,
              image: np.ndarray | None = None) -> tuple[float, float] | None:
    """Draw a scale bar on an image panel ``ax`` (pixel coordinates, origin top left) of ``width_px`` x
    ``height_px`` pixels: a round length (:func:`nice_length`) about :data:`BAR_FRACTION` of the width,
    white with a black outline and its label above it, readable on any micrograph; in the darkest corner
    of ``image`` (bottom right without it). Returns ``(length in um, length in pixels)``, or None when the
    pixel size is unknown (nothing drawn)."""
    if not (np.isfinite(um_per_px) and um_per_px > 0 and width_px > 0):
        return None
    um = nice_length(BAR_FRACTION * width_px * um_per_px)
    px = um / um_per_px
    margin, thick = 0.05 * width_px, max(1.5, 0.018 * height_px)
    label = 0.09 * height_px  # room for the label above the bar
    bottom, right = _corner(image, (px + 2 * margin, thick + label + 2 * margin))
    x0 = width_px - margin - px - 0.5 if right else margin - 0.5
    y0 = height_px - margin - thick - 0.5 if bottom else margin + label - 0.5
    ax.add_patch(Rectangle((x0, y0), px, thick, facecolor="white", edgecolor="black", linewidth=1.0, zorder=5))
    ax.text(x0 + px / 2, y0 - 0.3 * thick, length_label(um), color="white", ha="center", va="bottom",
            fontsize=7, fontweight="bold", path_effects=_OUTLINE, zorder=6)
    return um, px


def micrograph(ax: Axes, image: np.ndarray, um_per_px: float) -> tuple[float, float] | None:
    """An image panel: the micrograph in grey, no ticks, with its :func:`scale_bar` (where um/px is known)."""
    ax.imshow(image, cmap="gray", interpolation="nearest")
    ax.set_xticks([])
    ax.set_yticks([])
    return scale_bar(ax, um_per_px, image.shape[-1], image.shape[-2], image)


def wrap(text: str, width_in: float, fontsize: float) -> str:
    """``text`` with every line wrapped to fit ``width_in`` inches at ``fontsize`` points (about 0.6 em a
    character), so neighbouring titles do not overlap."""
    chars = max(8, int(width_in * 72 / (0.6 * fontsize)))
    return "\n".join(textwrap.fill(line, chars, break_long_words=True, break_on_hyphens=True) or line
                     for line in text.split("\n"))


def signed_methods(ds: xr.Dataset) -> dict[str, bool]:
    """Method -> whether its maps are shown signed (any negative value among ``ds``'s maps), so every view
    of a method (the report's grids, the per-image pages) uses one colour scale."""
    return {str(m): bool(np.nanmin(np.asarray(ds.saliency.sel({METHOD: m}).values), initial=0.0) < 0)
            for m in ds[METHOD].values}


def map_overlay(fig: Figure, ax: Axes, image: np.ndarray, raw: np.ndarray, signed: bool) -> None:
    """One method's map over the image, scaled by its 99th percentile (:func:`normalize_map`), with its
    colour bar: red/blue for signed maps (for/against the explained class), inferno for |maps|."""
    ax.imshow(image, cmap="gray", interpolation="nearest")
    im = ax.imshow(normalize_map(raw, signed), cmap="RdBu_r" if signed else "inferno", vmin=-1 if signed else 0,
                   vmax=1, alpha=0.6, interpolation="nearest")
    bar = fig.colorbar(im, ax=ax, fraction=0.046, pad=0.02, ticks=[-1, 0, 1] if signed else [0, 1])
    bar.ax.tick_params(labelsize=6)
    bar.set_label("relevance / p99" if signed else "|relevance| / p99", fontsize=6)
    ax.set_xticks([])
    ax.set_yticks([])


def saliency_grid(ds: xr.Dataset, samples: list[str], path: str | os.PathLike[str],
                  notes: dict[str, str] | None = None, signed: dict[str, bool] | None = None) -> Path:
    """:func:`saliency_figure` written to ``path``."""
    return save_figure(saliency_figure(ds, samples, notes, signed), path)


def saliency_figure(ds: xr.Dataset, samples: list[str], notes: dict[str, str] | None = None,
                    signed: dict[str, bool] | None = None) -> Figure:
    """Grid: one row per sample (the micrograph with its scale bar, then each method's map over it),
    titled with labels (and a sample's line of ``notes``, e.g. its predicted class).

    ``ds`` is :func:`xaiflow.saliency.open_saliency`'s dataset, ``samples`` ids (:func:`sample_names`).
    Signed methods (``signed``, default :func:`signed_methods` of the shown samples) use a diverging
    colormap (red: evidence for the explained class, blue: against), unsigned ones a sequential one;
    each map is scaled by its own 99th percentile.
    """
    methods = [str(m) for m in ds[METHOD].values]
    classes = list(ds.attrs.get("classes", []))
    target_mode = ds.attrs.get("target", "")
    sub = ds.isel({schema.SAMPLE: sample_positions(ds, samples)}).compute()
    signed = signed or signed_methods(sub)
    width = 2.6
    fig = Figure(figsize=(width * (len(methods) + 1), 2.9 * len(samples)))
    axes = fig.subplots(len(samples), len(methods) + 1, squeeze=False)
    for r, sid in enumerate(samples):
        row = sub.isel({schema.SAMPLE: r})
        img = row.image.values
        um = pixel_size(sub, r)
        note = f"\n{notes[sid]}" if notes and sid in notes else ""
        micrograph(axes[r, 0], img, um)
        axes[r, 0].set_title(wrap(f"{sid}\ntrue: {row.label.values}{note}"
                                  + (f"\n{um:.3g} µm/px" if np.isfinite(um) else ""), width, 8), fontsize=8)
        for c, m in enumerate(methods):
            ax = axes[r, c + 1]
            raw = row.saliency.sel({METHOD: m}).values
            if not np.isfinite(raw).any():
                ax.imshow(img, cmap="gray")
                ax.set_title(f"{m}\nnot computed", fontsize=8)
                ax.set_xticks([])
                ax.set_yticks([])
                continue
            map_overlay(fig, ax, img, raw, signed[m])
            t = int(row.target.sel({METHOD: m}).values)
            name = classes[t] if 0 <= t < len(classes) else "?"
            ax.set_title(wrap(f"{m}\nexplains {target_mode}: {name}", width * 0.8, 8), fontsize=8)
    fig.suptitle(f"{ds.attrs.get('model_id', '')}: attribution maps", fontsize=10)
    fig.tight_layout()
    return fig


def group_map_grid(maps: xr.DataArray, path: str | os.PathLike[str], title: str, *,
                   shared_scale: bool = False) -> Path:
    """Grid of mean normalized maps: one row per group (class, bin...), one column per method;
    with ``shared_scale`` one colour scale per method across the groups (:func:`group_map_figure`)."""
    return save_figure(group_map_figure(maps, title, shared_scale=shared_scale)[0], path)


def group_map_figure(maps: xr.DataArray, title: str, *,
                     shared_scale: bool = False) -> tuple[Figure, dict[tuple[str, str], tuple[float, float]]]:
    """The figure of :func:`group_map_grid` and the colour limits of each panel, keyed by (group, method).

    Values are shown in multiples of a uniform map's share per pixel (1 = uniform, 3 = three times
    the relevance of an average pixel), so the colour bars read without exponents. With
    ``shared_scale`` every group's panel of a method spans 0 to that method's largest value over
    the groups, so a brighter class is more relevance there, not a different scale; otherwise each
    panel spans its own range."""
    group_dim = maps.dims[0]
    groups = [str(g) for g in maps[group_dim].values]
    methods = [str(m) for m in maps[METHOD].values]
    maps = maps * int(np.prod(maps.shape[-2:]))  # share per pixel -> times a uniform map's share (1 = uniform)
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
            bar.set_label("x uniform", fontsize=6)
            n = int(maps["n_samples"].sel({group_dim: g})) if "n_samples" in maps.coords else None
            ax.set_title(wrap(f"{g}" + (f" (n={n})" if n is not None else "") + f"\n{m}", 2.2, 8), fontsize=8)
            ax.set_xticks([])
            ax.set_yticks([])
    scale = "; one colour scale per method across rows" if shared_scale else ""
    fig.suptitle(wrap(title + f"\n(mean relevance per pixel, each map normalized to sum 1, in multiples of a "
                      f"uniform map's: 1 = uniform{scale})",
                      2.6 * len(methods), 9), fontsize=9)
    fig.tight_layout()
    return fig, limits


def matrix_figure(matrix: xr.DataArray, path: str | os.PathLike[str], title: str, vmin: float = -1,
                  vmax: float = 1) -> Path:
    """A labelled heatmap with the values written in the cells (method agreement, ...)."""
    rows, cols = [str(v) for v in matrix[matrix.dims[0]].values], [str(v) for v in matrix[matrix.dims[1]].values]
    width = 1.0 + 0.7 * len(cols)
    fig = Figure(figsize=(width, 0.8 + 0.6 * len(rows)))
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
    ax.set_title(wrap(title, max(width, 3.0), 9), fontsize=9)
    fig.tight_layout()
    return save_figure(fig, path)
