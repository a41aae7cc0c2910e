"""Per-image pages of the report: one micrograph looked at closely.

For every sample the report shows (one example per class, the misclassified examples; at most
:data:`MAX_PAGES`), :func:`write_sample_pages` writes ``samples/<name>.html`` beside
``report.html`` (``<name>``: :func:`page_name`, a file name safe on every system) with:

* the micrograph at full resolution (each stored pixel shown as a k x k block, k >= 1) with its
  scale bar (:func:`xaiflow.figures.scale_bar`);
* every method's map over it, on the same colour scale as the report's grids (signed or not per
  method, each map scaled by its 99th percentile);
* the true class, the prediction and the class probabilities (stored predictions of this
  checkpoint, ``xaiflow predict``), the metadata in physical units (pixel size, magnification,
  detector, specimen, split...);
* the image's own metric values from ``metrics/<dataset>/<model>`` beside their reference (the
  random order or chance level of the same image).

The figures are PNG files in ``samples/`` (linked, not embedded, so the folder grows by a few
hundred kB per page and ``report.html`` not at all). :func:`samples_table` is the report's table
of the shown samples, each row linking to its page; each page links back to its row.
"""

from __future__ import annotations

import hashlib
import html
import re
from pathlib import Path
from typing import Any

import numpy as np
import xarray as xr
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from xaiflow import schema, store
from xaiflow.faithfulness_report import references
from xaiflow.figures import (
    SAMPLE_ID,
    map_overlay,
    micrograph,
    pixel_size,
    sample_names,
    sample_positions,
    save_figure,
    wrap,
)
from xaiflow.report_units import UNITS
from xaiflow.saliency import METHOD

SAMPLES_DIR = "samples"
#: at most this many per-image pages per report (bounded work and folder size)
MAX_PAGES = 40
#: the micrograph is drawn at least this many screen pixels wide (small images are enlarged, never shrunk)
MIN_WIDTH = 384
#: sample coordinates shown on a page: name -> what it is (units from :data:`xaiflow.report_units.UNITS`)
META = {"group": "specimen (group)", "split": "split", "detector": "detector", "source": "source file",
        "tile_y0": "tile offset y (px)", "tile_x0": "tile offset x (px)"}
#: shown first and last on a page
FIRST = ("um_per_px", "source_um_per_px", "magnification", "detector", "group", "split")
LAST = ("tile_y0", "tile_x0", "source")
_HIDDEN = {schema.SAMPLE, SAMPLE_ID, schema.LABEL, schema.LABEL_INDEX, schema.TILE_H, schema.TILE_W, "y", "x"}

_CSS = """body{font-family:sans-serif;max-width:1400px;margin:auto;padding:1em;color:#222}
table{border-collapse:collapse;margin:.5em 0;font-size:13px}td,th{border:1px solid #ccc;padding:3px 7px;text-align:right}
th{background:#f3f3f3}td:first-child,th:first-child{text-align:left}img{max-width:100%;border:1px solid #eee}
.note{color:#555;font-size:13px}.wrong{color:#b00020;font-weight:bold}
.top{display:flex;gap:2em;align-items:flex-start;flex-wrap:wrap}.facts td{text-align:left}"""


def page_name(sample_id: str) -> str:
    """A file name for ``sample_id``: letters, digits, ``.-_`` only (at most 80 of them), with a short
    hash of the id appended whenever anything was replaced, so two ids never share a page."""
    clean = re.sub(r"[^A-Za-z0-9._-]+", "_", str(sample_id)).strip("._-")[:80] or "sample"
    if clean == str(sample_id):
        return clean
    return f"{clean}-{hashlib.sha1(str(sample_id).encode()).hexdigest()[:8]}"


def page_href(sample_id: str) -> str:
    """The page of ``sample_id`` relative to ``report.html``."""
    return f"{SAMPLES_DIR}/{page_name(sample_id)}.html"


def anchor(sample_id: str) -> str:
    """The id of ``sample_id``'s row in the report (the page's link back)."""
    return f"sample-{page_name(sample_id)}"


def _class(classes: list[str], index: Any) -> str:
    i = int(index) if index is not None and np.isfinite(float(index)) else -1
    return classes[i] if 0 <= i < len(classes) else "?"


def samples_table(ds: xr.Dataset, ids: list[str], predicted: np.ndarray | None,
                  probabilities: np.ndarray | None, anchored: set[str]) -> str:
    """The report's rows of the samples ``ids`` (true, predicted class and its probability, split, pixel
    size), each linking to its page; the first row of a sample (not in ``anchored``, which is updated)
    carries the anchor its page links back to."""
    classes = [str(c) for c in ds.attrs.get(schema.ATTR_CLASSES, [])]
    positions = sample_positions(ds, ids)
    splits = store.strings(ds[schema.SPLIT].values) if schema.SPLIT in ds.coords else None
    rows = []
    for sid, i in zip(ids, positions, strict=True):
        row_id = "" if sid in anchored else f" id='{anchor(sid)}'"
        anchored.add(sid)
        pred = _class(classes, predicted[i]) if predicted is not None else "?"
        p = f"{probabilities[i].max():.2f}" if probabilities is not None else "–"
        um = pixel_size(ds, i)
        rows.append(f"<tr{row_id}><td><a href='{html.escape(page_href(sid))}'>{html.escape(sid)}</a></td>"
                    f"<td>{html.escape(str(ds[schema.LABEL].values[i]))}</td><td>{html.escape(pred)}</td><td>{p}</td>"
                    f"<td>{html.escape(str(splits[i])) if splits is not None else '–'}</td>"
                    f"<td>{f'{um:.3g} µm/px' if np.isfinite(um) else '–'}</td></tr>")
    return ("<table><tr><th>image (opens its page)</th><th>true class</th><th>predicted class</th>"
            "<th>probability of the prediction</th><th>split</th><th>pixel size</th></tr>" + "".join(rows)
            + "</table>")


def micrograph_figure(image: np.ndarray, um_per_px: float, path: Path) -> tuple[Path, int]:
    """The micrograph alone at full resolution (each pixel a k x k block, k the smallest whole factor
    making it at least :data:`MIN_WIDTH` wide) with its scale bar; returns the path and k."""
    height, width = image.shape[-2:]
    k = max(1, -(-MIN_WIDTH // width))
    dpi = 100
    fig = Figure(figsize=(width * k / dpi, height * k / dpi), dpi=dpi)
    ax = fig.add_axes((0, 0, 1, 1))
    micrograph(ax, image, um_per_px)
    ax.set_axis_off()
    path.parent.mkdir(parents=True, exist_ok=True)
    FigureCanvasAgg(fig)
    fig.savefig(path, dpi=dpi)  # exact size: no tight bounding box
    return path, k


def maps_figure(row: xr.Dataset, methods: list[str], signed: dict[str, bool], classes: list[str],
                target_mode: str, path: Path) -> Path:
    """Every method's map over the micrograph, one panel each, on the report's colour scale per method."""
    image = np.asarray(row["image"].values)
    width = 3.2
    fig = Figure(figsize=(width * len(methods), width + 0.5))
    axes = fig.subplots(1, len(methods), squeeze=False)[0]
    for ax, m in zip(axes, methods, strict=True):
        raw = np.asarray(row["saliency"].sel({METHOD: m}).values)
        if not np.isfinite(raw).any():
            micrograph(ax, image, float("nan"))
            ax.set_title(f"{m}\nnot computed", fontsize=9)
            continue
        map_overlay(fig, ax, image, raw, signed.get(m, bool(np.nanmin(raw) < 0)))
        explained = _class(classes, row["target"].sel({METHOD: m}).values)
        ax.set_title(wrap(f"{m}\nexplains {target_mode}: {explained}", width * 0.85, 9), fontsize=9)
    fig.tight_layout()
    return save_figure(fig, path, dpi=90)


def _metadata_rows(row: xr.Dataset) -> list[tuple[str, str]]:
    """``(what, value with unit)`` of every per-sample coordinate of one sample: the physical ones first
    (:data:`FIRST`), the offsets and the source last."""
    rows = []
    names = [str(n) for n in row.coords]
    order = [n for n in FIRST if n in names] + [n for n in names if n not in FIRST and n not in LAST] \
        + [n for n in LAST if n in names]
    for name in order:
        coord = row.coords[name]
        if name in _HIDDEN or coord.ndim != 0:
            continue
        value = coord.values.item() if hasattr(coord.values, "item") else coord.values
        what, unit = UNITS.get(str(name), (META.get(str(name), str(name).replace("_", " ")), ""))
        if isinstance(value, float):
            text = "–" if not np.isfinite(value) else f"{value:.4g}" + (f" {unit}" if unit else "")
        else:
            text = str(value) + (f" {unit}" if unit and str(value) else "")
        rows.append((what, text))
    return rows


def _metrics_html(metrics: xr.Dataset | None, position: int | None) -> str:
    """This image's stored metric values (one row per method), each beside its reference on the same image."""
    if metrics is None or position is None:
        return "<p>No metric values stored for this image (<code>xaiflow evaluate</code>).</p>"
    outputs = dict(metrics.attrs.get("outputs", {}))
    names = [str(m) for m in store.strings(metrics["metric"].values)]
    refs = {n: r for n, r in references(outputs).items() if n in names}
    if not refs:
        return "<p>No metric values stored for this image.</p>"
    one = metrics.isel({schema.SAMPLE: position})
    value = np.where(np.asarray(one["done"].values, bool), np.asarray(one["value"].values, np.float64), np.nan)
    head, shared = "", {}
    for name, (reference, kind) in refs.items():
        ref = value[:, names.index(reference)] if reference in names else np.full(len(value), np.nan)
        finite = ref[np.isfinite(ref)]
        if len(finite) and np.allclose(finite, finite[0]):  # one reference for every method: said once
            shared[name] = f"<br><small>{kind} {finite[0]:.3f}</small>"
        head += (f"<th>{html.escape(name)} {'↑' if outputs[name].get('higher_is_better') else '↓'}"
                 f"{shared.get(name, '')}</th>")
    body = []
    for mi, method in enumerate(store.strings(metrics[METHOD].values)):
        cells = []
        for name, (reference, kind) in refs.items():
            v = value[mi, names.index(name)]
            cell = "–" if not np.isfinite(v) else f"{v:.3f}"
            if name not in shared and reference in names and np.isfinite(r := value[mi, names.index(reference)]):
                cell += f"<br><small>{kind} {r:.3f}</small>"
            cells.append(f"<td>{cell}</td>")
        body.append(f"<tr><td>{html.escape(str(method))}</td>{''.join(cells)}</tr>")
    return (f"<table><tr><th>method</th>{head}</tr>{''.join(body)}</table><p class='note'>Values for this image "
            "only (the report's table gives means over images with intervals); under a metric's name (or a value), "
            "its reference on this image: the same procedure in random orders, or the chance level (the region's share of the "
            "image). ↑/↓: higher/lower is better.</p>")


def _open_metrics(workspace: str, dataset: str, model_id: str) -> xr.Dataset | None:
    group = schema.group_path(schema.METRICS, dataset, model_id)
    return store.open_group(workspace, group, check_complete=False) if store.group_exists(workspace, group) else None


def write_sample_pages(workspace: str, ds: xr.Dataset, ids: list[str], folder: Path, *, dataset: str,
                       model_id: str, predicted: np.ndarray | None, probabilities: np.ndarray | None,
                       signed: dict[str, bool]) -> list[Path]:
    """The pages of the samples ``ids`` (the first :data:`MAX_PAGES`) in ``folder/samples`` (module
    docstring); ``predicted``/``probabilities`` are aligned with ``ds`` (None: not stored)."""
    ids = list(dict.fromkeys(ids))[:MAX_PAGES]
    out = folder / SAMPLES_DIR
    out.mkdir(parents=True, exist_ok=True)
    methods = [str(m) for m in ds[METHOD].values]
    classes = [str(c) for c in ds.attrs.get(schema.ATTR_CLASSES, [])]
    metrics = _open_metrics(workspace, dataset, model_id)
    metric_index = ({s: i for i, s in enumerate(sample_names(metrics).tolist())} if metrics is not None else {})
    written = []
    for sid, i in zip(ids, sample_positions(ds, ids), strict=True):
        name = page_name(sid)
        row = ds.isel({schema.SAMPLE: i}).compute()
        image = np.asarray(row["image"].values)
        um = pixel_size(ds, i)
        _, k = micrograph_figure(image, um, out / f"{name}.png")
        maps_figure(row, methods, signed, classes, str(ds.attrs.get("target", "")), out / f"{name}_maps.png")
        true = str(row[schema.LABEL].values)
        pred = _class(classes, predicted[i]) if predicted is not None else None
        facts = [("true class", html.escape(true)),
                 ("predicted class", "not stored (<code>xaiflow predict</code>)" if pred is None else
                  (f"<span class='wrong'>{html.escape(pred)} (wrong)</span>" if pred != true else html.escape(pred)))]
        facts += [(html.escape(w), html.escape(t)) for w, t in _metadata_rows(row)]
        if probabilities is not None:
            order = np.argsort(-probabilities[i])
            probs = ("<table><tr><th>class</th><th>probability</th></tr>"
                     + "".join(f"<tr><td>{html.escape(classes[c] if c < len(classes) else str(c))}</td>"
                               f"<td>{probabilities[i][c]:.3f}</td></tr>" for c in order) + "</table>")
        else:
            probs = (f"<p>Not stored for this checkpoint: <code>xaiflow predict -w {html.escape(workspace)} -m "
                     f"{html.escape(model_id)}</code>.</p>")
        height, width = image.shape[-2:]
        bar = (f"; pixel size {um:.3g} µm, scale bar in the darkest corner" if np.isfinite(um)
               else "; no scale bar: the pixel size is unknown")
        page = (f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(sid)}: {html.escape(model_id)}"
                f"</title><style>{_CSS}</style></head><body>"
                f"<p><a href='../report.html#{anchor(sid)}'>&larr; back to the report</a></p>"
                f"<h1>{html.escape(sid)}</h1><p class='note'>model {html.escape(model_id)}, dataset "
                f"{html.escape(dataset)}</p><div class='top'><div><img alt='micrograph' src='{name}.png'>"
                f"<p class='note'>Full resolution: {width} x {height} stored pixels, each shown as {k} x {k} screen "
                f"pixels{html.escape(bar)}.</p></div><div><table class='facts'>"
                + "".join(f"<tr><th>{w}</th><td>{t}</td></tr>" for w, t in facts) + "</table>"
                f"<h3>Class probabilities</h3>{probs}</div></div>"
                "<h2>Attribution maps</h2><p class='note'>Each method's map over the micrograph, on the same colour "
                "scale as the report: scaled by its 99th percentile; red/blue for signed methods (for/against the "
                f"explained class).</p><p><img alt='maps' src='{name}_maps.png'></p>"
                "<h2>Metric values of this image</h2>"
                + _metrics_html(metrics, metric_index.get(sid))
                + "</body></html>")
        path = out / f"{name}.html"
        path.write_text(page)
        written.append(path)
    return written
