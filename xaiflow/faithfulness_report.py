"""Faithfulness against chance: bootstrap intervals, a flag where a method is no better than random, ranks.

A faithfulness number (ROAD's LeRF-MoRF gap, region perturbation's AOPC, a deletion AUC)
means little alone: it depends on the model's confidence and on the image. Every such metric
stores a random-order reference beside it (``<key>_random...``: the same procedure with the
pixels or regions in random orders, on the same images). This module reads
``metrics/<dataset>/<model>`` and, for every scalar output that has such a reference:

* the mean over samples with a percentile-bootstrap 95% interval (:func:`bootstrap_mean`,
  resampling samples; seeded, so a report is reproducible), for each method and for the
  random order (per sample, the mean of the references stored with each method: they are
  the same images and seeds). Every number of a metric is taken over the same samples: those
  finished for every method that has any (:func:`common_samples`), so a method whose run
  stopped early is not compared on other images (intervals, ranks, the random row, the curves);
* a flag where a method is **no better than random**: the bootstrap interval of its mean
  per-image difference from the random order (paired: the same image, so what all images
  share cancels) does not lie entirely on the better side of 0. The unpaired intervals of
  the method and of the random order are shown too; they overlap more often, because the
  images differ more from each other than the orders do;
* a rank per metric where intervals separate: a method's rank is 1 + the number of methods
  whose interval lies entirely on the better side of its own, so methods whose intervals
  overlap share a rank.

The same intervals and ranks cover every other scalar metric with a direction
(:func:`references`, :func:`metric_summary`): a localization metric is compared, paired per
image, with its stored chance level (the region's share of the image) and flagged "≈ chance";
a metric with no reference (sparseness, entropy) gets its interval and rank, no flag.

:func:`faithfulness_section` gives the report's HTML (one method x metric table: one row per
method, one column per metric, each metric's reference once in its header; and a figure of every
curve with its band against the random-order band); :func:`faithfulness_summary` and
:func:`metric_summary` give the same numbers as rows.
"""

from __future__ import annotations

import base64
import html
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import xarray as xr
from matplotlib.figure import Figure

from xaiflow import schema, store
from xaiflow.figures import save_figure, wrap
from xaiflow.saliency import METHOD

RANDOM = "_random"
#: the kinds of reference a metric is compared with
RANDOM_ORDER, CHANCE = "random order", "chance"
#: bootstrap resamples of the mean (the interval's percentiles are stable to ~0.1 of its width)
N_BOOT = 2000
LEVEL = 0.95
FIGURE = "faithfulness_curves.png"
#: metric keys shown first (the report's defaults), by prefix
FIRST = ("road", "region_perturbation")


@dataclass(frozen=True)
class Interval:
    mean: float
    lo: float
    hi: float
    n: int


@dataclass(frozen=True)
class FaithfulnessRow:
    """One method's value of one metric, the random order's on the same samples, and their paired difference."""

    metric: str
    method: str
    higher_is_better: bool
    value: Interval
    random: Interval
    difference: Interval  # per image: value - random
    beats_random: bool | None  # None: the metric has no reference to beat
    rank: int
    reference: str = "random order"  # what ``random`` is: "random order", "chance" or "" (none)


def bootstrap_mean(values: np.ndarray, n_boot: int = N_BOOT, level: float = LEVEL, seed: int = 0,
                   block: int = 100) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Mean over the first axis of ``values`` ``(n, ...)`` and its percentile-bootstrap interval.

    Resamples are drawn as multinomial counts ``block`` at a time, so memory is
    ``block * n`` counts whatever ``n_boot``. Returns ``(mean, lo, hi)``, each of shape
    ``values.shape[1:]``; NaN when ``values`` is empty.
    """
    values = np.asarray(values, dtype=np.float64)
    n = len(values)
    if n == 0:
        nan = np.full(values.shape[1:], np.nan)
        return nan, nan, nan
    flat = values.reshape(n, -1)
    rng = np.random.default_rng(seed)
    means = []
    for start in range(0, n_boot, block):
        counts = rng.multinomial(n, np.full(n, 1.0 / n), size=min(block, n_boot - start))
        means.append(counts @ flat / n)
    boot = np.concatenate(means)
    tail = (1 - level) / 2 * 100
    lo, hi = np.percentile(boot, [tail, 100 - tail], axis=0)
    shape = values.shape[1:]
    return flat.mean(axis=0).reshape(shape), lo.reshape(shape), hi.reshape(shape)


def _open(workspace: str | os.PathLike[str], dataset: str, model_id: str) -> xr.Dataset | None:
    group = schema.group_path(schema.METRICS, dataset, model_id)
    if not store.group_exists(workspace, group):
        return None
    return store.open_group(workspace, group, check_complete=False)


def reference_pairs(outputs: dict[str, dict[str, Any]]) -> dict[str, str]:
    """Stored output -> its random-order reference (``road_morf`` -> ``road_random_morf``,
    ``deletion_curve`` -> ``deletion_random_curve``), for every output that has one; the
    headlines (output name = key) first, ROAD and region perturbation before the others."""
    def order(name: str) -> tuple[int, int]:
        key = str(outputs[name].get("key", ""))
        return (name != key, next((i for i, k in enumerate(FIRST) if key.startswith(k)), len(FIRST)))

    pairs = {}
    for name, meta in outputs.items():
        key = str(meta.get("key", ""))
        suffix = name[len(key):] if key and name.startswith(key) else None
        if suffix is None or suffix.startswith(RANDOM):
            continue
        reference = key + RANDOM + suffix
        if reference in outputs:
            pairs[name] = reference
    return {name: pairs[name] for name in sorted(pairs, key=order)}


def _better(a: Interval, b: Interval, higher: bool) -> bool:
    """``a``'s interval lies entirely on the better side of ``b``'s."""
    return a.lo > b.hi if higher else a.hi < b.lo


def _interval(v: np.ndarray) -> Interval:
    mean, lo, hi = bootstrap_mean(v)
    return Interval(float(mean), float(lo), float(hi), len(v))


def common_samples(finite: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """From ``finite`` ``(sample, method)`` (a method's value and reference are there): the methods
    with any sample, and the samples finished for every one of them (both boolean masks)."""
    scored = finite.any(axis=0)
    return finite[:, scored].all(axis=1) if scored.any() else np.zeros(len(finite), bool), scored


def _scalars(ds: xr.Dataset, name: str, reference: str) -> tuple[np.ndarray, np.ndarray]:
    """Values of ``name`` and of its reference ``(sample, method)``, NaN where not done."""
    scalars = [str(m) for m in store.strings(ds["metric"].values)]
    done, value = np.asarray(ds["done"].values, bool), np.asarray(ds["value"].values, np.float64)
    ki, kr = scalars.index(name), scalars.index(reference)
    return np.where(done[:, :, ki], value[:, :, ki], np.nan), np.where(done[:, :, kr], value[:, :, kr], np.nan)


def references(outputs: dict[str, dict[str, Any]]) -> dict[str, tuple[str | None, str]]:
    """Every scalar output with a direction (``higher_is_better`` set) -> ``(reference, kind)``: its
    random-order reference (:func:`reference_pairs`, kind ``"random order"``) first, then the metrics
    with a stored chance level (a localization metric's region share, kind ``"chance"``), then the
    others, which have no reference (``(None, "")``: sparseness, entropy...)."""
    found: dict[str, tuple[str | None, str]] = {n: (r, RANDOM_ORDER) for n, r in reference_pairs(outputs).items()}
    for name, meta in outputs.items():
        if name in found or meta.get("higher_is_better") is None or meta.get("dim"):
            continue
        chance = meta.get("chance")
        found[name] = (chance, CHANCE) if chance in outputs else (None, "")
    return {n: found[n] for n in sorted(found, key=lambda n: [RANDOM_ORDER, CHANCE, ""].index(found[n][1]))}


def faithfulness_summary(workspace: str | os.PathLike[str], dataset: str, model_id: str,
                         ds: xr.Dataset | None = None) -> list[FaithfulnessRow]:
    """Every method x every scalar with a random-order reference (module docstring); [] if none."""
    return [r for r in metric_summary(workspace, dataset, model_id, ds) if r.reference == RANDOM_ORDER]


def metric_summary(workspace: str | os.PathLike[str], dataset: str, model_id: str,
                   ds: xr.Dataset | None = None) -> list[FaithfulnessRow]:
    """Every method x every scalar metric with a direction (:func:`references`): the mean with its
    bootstrap interval, and against its random order or chance level (paired per image) where it has
    one (``beats_random`` None where it has none); [] if no metrics."""
    ds = _open(workspace, dataset, model_id) if ds is None else ds
    if ds is None:
        return []
    outputs = dict(ds.attrs.get("outputs", {}))
    scalars = [str(m) for m in store.strings(ds["metric"].values)]
    methods = [str(m) for m in store.strings(ds[METHOD].values)]
    rows: list[FaithfulnessRow] = []
    for name, (reference, kind) in references(outputs).items():
        higher = outputs[name].get("higher_is_better")
        if name not in scalars or (reference is not None and reference not in scalars) or higher is None:
            continue
        v_all, r_all = _scalars(ds, name, reference or name)
        if reference is None:
            r_all = np.zeros_like(v_all)
        common, scored = common_samples(np.isfinite(v_all) & np.isfinite(r_all))
        if not common.any():
            continue
        per_method = {}
        for mi in np.flatnonzero(scored):
            v, r = v_all[common, mi], r_all[common, mi]
            none = Interval(np.nan, np.nan, np.nan, len(v))
            per_method[methods[mi]] = ((_interval(v), _interval(r), _interval(v - r)) if reference
                                       else (_interval(v), none, none))
        flags = ranks_and_flags({m: (value, diff) for m, (value, _, diff) in per_method.items()}, bool(higher))
        for method, (rank, beats) in flags.items():
            value, random, diff = per_method[method]
            rows.append(FaithfulnessRow(name, method, bool(higher), value, random, diff,
                                        beats if reference else None, rank, kind))
    return rows


def ranks_and_flags(intervals: dict[str, tuple[Interval, Interval]], higher: bool) -> dict[str, tuple[int, bool]]:
    """Method -> (rank, beats random) from each method's ``(value, difference from random)``
    intervals: the rank is 1 + the methods whose value interval lies entirely on the better
    side; a method beats random when its difference interval lies entirely on the better side of 0."""
    zero = Interval(0.0, 0.0, 0.0, 0)
    return {method: (1 + sum(_better(other, value, higher) for m, (other, _) in intervals.items() if m != method),
                     _better(diff, zero, higher))
            for method, (value, diff) in intervals.items()}


def _random_row(ds: xr.Dataset, name: str, reference: str) -> Interval:
    """The random order's interval over the samples the methods' rows use (:func:`common_samples`),
    per sample the mean of the references stored with each method."""
    v, r = _scalars(ds, name, reference)
    common, scored = common_samples(np.isfinite(v) & np.isfinite(r))
    return _interval(r[common][:, scored].mean(axis=1)) if common.any() else Interval(np.nan, np.nan, np.nan, 0)


def curves_figure(ds: xr.Dataset, path: Path) -> Path | None:
    """One panel per curve with a random-order reference: each method's mean curve with its
    bootstrap 95% band over samples, against the random order's band (grey), all over the samples
    finished for every method (:func:`common_samples`); None if no curve."""
    outputs = dict(ds.attrs.get("outputs", {}))
    pairs = {n: r for n, r in reference_pairs(outputs).items() if n in ds.data_vars and r in ds.data_vars}
    if not pairs:
        return None
    methods = [str(m) for m in store.strings(ds[METHOD].values)]
    ncols = min(3, len(pairs))
    nrows = -(-len(pairs) // ncols)
    fig = Figure(figsize=(3.4 * ncols + 1.8, 3.0 * nrows + 0.4))
    grid = fig.subplots(nrows, ncols, squeeze=False)
    axes = grid.ravel()[:len(pairs)]
    for ax in grid.ravel()[len(pairs):]:
        ax.set_visible(False)
    colors = [f"C{i % 10}" for i in range(len(methods))]
    for ax, (name, reference) in zip(axes, pairs.items()):
        dim = outputs[name]["dim"]
        x = np.asarray(ds[dim].values, float)
        curves = np.asarray(ds[name].values, np.float64)  # (sample, method, K)
        randoms = np.asarray(ds[reference].values, np.float64)
        common, scored = common_samples(np.isfinite(curves).all(axis=2) & np.isfinite(randoms).all(axis=2))
        if common.any():
            mean, lo, hi = bootstrap_mean(randoms[common][:, scored].mean(axis=1))
            ax.fill_between(x, lo, hi, color="0.6", alpha=0.35, lw=0)
            ax.plot(x, mean, color="0.3", ls="--", lw=1.2, label="random order")
        for mi, method in enumerate(methods):
            if common.any() and scored[mi]:
                mean, lo, hi = bootstrap_mean(curves[common, mi])
                ax.fill_between(x, lo, hi, color=colors[mi], alpha=0.2, lw=0)
                ax.plot(x, mean, color=colors[mi], lw=1.4, label=method)
        ax.set_title(wrap(f"{name}\n{outputs[name].get('description', '')}".strip(), 3.2, 8), fontsize=8)
        ax.set_xlabel("fraction removed" if "insertion" not in name else "fraction inserted", fontsize=8)
        ax.set_ylabel("probability of the explained class", fontsize=8)
        ax.tick_params(labelsize=7)
    grid[0, -1].legend(*axes[0].get_legend_handles_labels(), fontsize=7, loc="upper left", bbox_to_anchor=(1.02, 1.0))
    fig.suptitle("mean curve over samples with bootstrap 95% band; grey: random order", fontsize=9)
    fig.tight_layout()
    return save_figure(fig, path)


def _cell(iv: Interval, signed: bool = False) -> str:
    if not np.isfinite(iv.mean):
        return "–"
    sign = "+" if signed else ""
    return f"{iv.mean:{sign}.3f} [{iv.lo:{sign}.3f}, {iv.hi:{sign}.3f}]"


def _html_table(rows: list[FaithfulnessRow], randoms: dict[str, Interval], outputs: dict[str, Any]) -> str:
    """One row per method, one column per metric; each metric's reference (random order or chance) once,
    in its header; a cell flagged "≈ random"/"≈ chance" where the method does not beat it."""
    metrics = list(dict.fromkeys(r.metric for r in rows))
    methods = list(dict.fromkeys(r.method for r in rows))
    by = {(r.metric, r.method): r for r in rows}
    first = {m: next(r for r in rows if r.metric == m) for m in metrics}
    head = "<th>method</th>"
    for m in metrics:
        kind = first[m].reference
        reference = (f"<br><small>{kind} <i>{_cell(randoms[m])}</i></small>" if kind
                     else "<br><small>no reference</small>")
        what = html.escape(str(outputs.get(m, {}).get("description", "")), quote=True)
        head += f"<th title='{what}'>{html.escape(m)} {'↑' if first[m].higher_is_better else '↓'}{reference}</th>"
    body = []
    for method in methods:
        cells = []
        for metric in metrics:
            r = by.get((metric, method))
            if r is None:
                cells.append("<td>–</td>")
                continue
            short = r.reference.split(" ")[0]  # "random", "chance"
            against = (f"<br><small>vs {short} {_cell(r.difference, True)}"
                       + ("" if r.beats_random else f" <b>≈ {short}</b>") + "</small>") if r.reference else ""
            if r.beats_random is False:
                cells.append(f"<td class='chance' style='color:#999'>#{r.rank} {_cell(r.value)}{against}</td>")
            else:
                cells.append(f"<td><b>#{r.rank}</b> {_cell(r.value)}{against}</td>")
        body.append(f"<tr><td>{html.escape(method)}</td>{''.join(cells)}</tr>")
    n = max(r.value.n for r in rows)
    described = "".join(f"<li><b>{html.escape(m)}</b>: {html.escape(str(outputs[m]['description']))}</li>"
                        for m in metrics if outputs.get(m, {}).get("description"))
    return (f"<table class='metrics'><tr>{head}</tr>{''.join(body)}</table>"
            f"<p class='note'>Mean over images [bootstrap 95% interval], n ≤ {n} (per metric, the images "
            "scored for every method); ↑/↓: higher/lower is better. #k: rank among the methods (1 + the methods "
            "whose interval lies entirely on the better side; overlapping intervals share a rank). Under each "
            "metric its reference on the same images: the same procedure in <i>random orders</i> (faithfulness), "
            "or the <i>chance</i> level of a map that knows nothing (the region's share of the image). “vs”: the "
            "mean per-image difference from it [bootstrap 95% interval]. Grey, “≈ random”/“≈ chance”: that "
            "interval does not lie entirely on the better side of 0: no evidence that the method beats chance. "
            "Metrics with no reference (how concentrated a map is) are not flagged.</p>"
            + (f"<details><summary>what each metric measures</summary><ul class='note'>{described}</ul></details>"
               if described else ""))


def _embed(path: Path, alt: str) -> str:
    data = base64.b64encode(path.read_bytes()).decode()
    return f"<p><img alt='{html.escape(alt)}' src='data:image/png;base64,{data}'></p>"


_INTRO = ("<p class='note'>Every metric for every method, each against its chance reference. Faithfulness: does "
          "removing what a map calls important change the model's decision? <b>road</b> (Rong et al. 2022): pixels "
          "removed most (MoRF) or least (LeRF) relevant first and filled by noisy linear imputation from their "
          "neighbours, so the image stays close to the data the model knows; the headline is the LeRF-MoRF gap of "
          "mean probabilities. <b>region_perturbation</b> (Samek et al. 2017): superpixels removed most relevant "
          "first; AOPC, the mean probability lost. Localization (<b>pointing_game</b>, "
          "<b>relevance_mass_accuracy</b>): does the map point into the expert's mask? Complexity "
          "(<b>sparseness</b>, <b>entropy</b>): how concentrated a map is.</p>")


_BANDS = ("<p class='note'>The bands spread over images; the table's “vs random” pairs each image with its own "
          "random orders, which is why a method can beat chance while the bands overlap.</p>")


def faithfulness_section(workspace: str | os.PathLike[str], dataset: str, model_id: str,
                         folder: Path) -> tuple[str, set[str]]:
    """The report's method x metric part (the table of every metric against its reference, the curves
    figure written into ``folder``) and the stored metric names it covers (references and chance levels
    included); ``("", set())`` when no metric was computed."""
    ds = _open(workspace, dataset, model_id)
    if ds is None:
        return "", set()
    rows = metric_summary(workspace, dataset, model_id, ds)
    if not rows:
        return "", set()
    outputs = dict(ds.attrs.get("outputs", {}))
    refs = references(outputs)
    shown = {r.metric for r in rows}
    randoms = {m: _random_row(ds, m, refs[m][0]) if refs[m][0] else Interval(np.nan, np.nan, np.nan, 0)
               for m in shown}
    parts = ["<h3>Method x metric</h3>", _INTRO, _html_table(rows, randoms, outputs)]
    figure = curves_figure(ds.load(), folder / FIGURE)
    if figure is not None:
        parts += ["<h3>Faithfulness curves against random orders</h3>", _embed(figure, "faithfulness curves"),
                  _BANDS]
    return "".join(parts), shown | {refs[m][0] for m in shown if refs[m][0]}
