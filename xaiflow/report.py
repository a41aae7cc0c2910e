"""The HTML report of a model: what it looks at, how trustworthy the maps are, and the shortcut verdict.

:func:`write_report` writes one folder: ``report.html`` (self-contained: every figure is
embedded as a base64 PNG, so the file can be mailed or attached alone, unless the page would
exceed a few MB: then its largest figures are linked, :mod:`xaiflow.report_embed`), the same
figures as PNG files beside it, ``shortcut.json`` (the verdict with its numbers), and one page
per shown image in ``samples/`` (:mod:`xaiflow.report_samples`). Sections:

1. the plain-language conclusion first (:mod:`xaiflow.conclusion`) and warnings (e.g. judged
   images the model was trained on), then the model and its data (methods, samples with maps);
   "Model": accuracy beside balanced accuracy (one sentence says why both), per split, confusion
   matrices and training curves (:mod:`xaiflow.report_model`);
2. the shortcut verdict (:mod:`xaiflow.shortcut`) with its reasons, numbers and thresholds
   (ablation, content swap with its intervals and chance levels, has_shortcut split);
3. example overlays: one explained sample per class, every method's map over the image, and a few
   misclassified samples with their true and predicted class; every micrograph with a scale bar
   (:func:`xaiflow.figures.scale_bar`), every shown image a row linking to its own page;
4. class-mean maps (mass-normalized, one colour scale per method), and per metadata bin (in
   physical units, :mod:`xaiflow.report_units`) where the data has no masks;
5. one method x metric table of every metric from ``metrics/<dataset>/<model>`` with bootstrap
   intervals, ranks and a "no better than random/chance" flag against its random-order reference
   or chance level, the faithfulness curves against the random order's band
   (:mod:`xaiflow.faithfulness_report`), and the spread over images (collapsed); or a notice that
   metrics were not computed;
6. method agreement (Spearman rank correlation and top-10% overlap of |maps|);
7. mask agreement: relevance share per mask class against its area share.
"""

from __future__ import annotations

import base64
import html
import json
import os
from pathlib import Path
from typing import Any

import numpy as np
import xarray as xr
from matplotlib.figure import Figure

from xaiflow import schema, store
from xaiflow.aggregate import QueryError, group_maps, method_agreement
from xaiflow.conclusion import conclusion
from xaiflow.errors import XaiflowError
from xaiflow.faithfulness_report import faithfulness_section
from xaiflow.figures import (
    group_map_grid,
    matrix_figure,
    saliency_grid,
    sample_names,
    sample_positions,
    save_figure,
    signed_methods,
    wrap,
)
from xaiflow.human_report import human_html
from xaiflow.models.catalog import ModelCatalog
from xaiflow.report_embed import EMBED_LIMIT, fit_page, linked_note
from xaiflow.report_model import (
    misclassified_html,
    model_html,
    pick_misclassified,
    stored_predictions,
)
from xaiflow.report_samples import MAX_PAGES, samples_table, write_sample_pages
from xaiflow.report_units import bin_label, quantity, with_bin_labels
from xaiflow.saliency import METHOD, SaliencyQueryError, open_saliency, saliency_group
from xaiflow.shortcut import (
    ShortcutError,
    ShortcutReport,
    model_dataset,
    shortcut_report,
)

REPORT_FILE = "report.html"
#: the one sentence that says why two accuracies are shown
ACCURACY_NOTE = ("Accuracy is the share of images classified correctly; balanced accuracy is the mean of the "
                 "per-class recalls, so a class that has many images cannot inflate it (with unequal classes, a "
                 "model that mostly answers the largest class has high accuracy but balanced accuracy near "
                 "chance, 1 / number of classes).")


class ReportError(XaiflowError):
    """The report cannot be written (unknown model, no saliency, unknown method...)."""


def default_out(workspace: str | os.PathLike[str], model_id: str) -> Path:
    """``<workspace>.reports/<model_id>`` beside the store (folders inside it would join the Zarr hierarchy)."""
    return Path(store.local_sibling(workspace, ".reports")) / model_id


# ----------------------------------------------------------------------------- numbers


def metric_table(workspace: str | os.PathLike[str], dataset: str, model_id: str) -> list[dict[str, Any]] | None:
    """Per method and metric: mean, std, median, 10% and 90% quantiles, n (done and finite
    values over samples); for a localization metric also ``chance`` (the mean area share of its
    region over the same samples) and ``mask_classes`` (the region), its stored chance levels
    taking no row of their own; None when no metrics were computed for these maps."""
    group = schema.group_path(schema.METRICS, dataset, model_id)
    if not store.group_exists(workspace, group):
        return None
    ds = store.open_group(workspace, group, check_complete=False)
    values = np.where(np.asarray(ds["done"].values, bool), np.asarray(ds["value"].values, np.float64), np.nan)
    outputs = ds.attrs.get("outputs", {})
    names = store.strings(ds["metric"].values).tolist()
    rows = []
    for mi, method in enumerate(store.strings(ds[METHOD].values)):
        for ki, metric in enumerate(names):
            if outputs.get(str(metric), {}).get("chance_of"):
                continue
            v = values[:, mi, ki]
            level = outputs.get(str(metric), {}).get("chance")
            if level in names:
                share = values[:, mi, names.index(level)][np.isfinite(v)]
                extra = {"chance": float(np.nanmean(share)) if np.isfinite(share).any() else np.nan,
                         "mask_classes": outputs[str(metric)].get("mask_classes", "")}
            else:
                extra = {}
            v = v[np.isfinite(v)]
            q = np.quantile(v, [0.1, 0.5, 0.9]) if len(v) else [np.nan] * 3
            rows.append({"method": str(method), "metric": str(metric), "n": len(v),
                         "mean": float(v.mean()) if len(v) else np.nan,
                         "std": float(v.std(ddof=1)) if len(v) > 1 else np.nan,
                         "p10": float(q[0]), "median": float(q[1]), "p90": float(q[2]),
                         "higher_is_better": outputs.get(str(metric), {}).get("higher_is_better"), **extra})
    return rows


def _examples(ds: xr.Dataset, n: int) -> list[str]:
    """Up to ``n`` explained samples, one per class first (in class order), then the next ones."""
    ids = sample_names(ds)
    labels = store.strings(ds[schema.LABEL].values)
    picked: list[str] = []
    for c in dict.fromkeys(ds.attrs.get(schema.ATTR_CLASSES, [])):
        hit = np.flatnonzero(labels == c)
        if len(hit) and len(picked) < n:
            picked.append(str(ids[hit[0]]))
    picked += [str(i) for i in ids if str(i) not in picked][: n - len(picked)]
    return picked


# ----------------------------------------------------------------------------- figures


def bin_accuracy_figure(meta: dict[str, Any], path: Path, compare: dict[str, Any] | None = None) -> Path:
    """Per-bin accuracy beside the bin's majority-class share (what always guessing it would score)."""
    rows = meta["per_bin"]
    fig = Figure(figsize=(1.6 + 1.1 * len(rows), 3.6))
    ax = fig.subplots()
    x = np.arange(len(rows))
    ax.bar(x - 0.2, [r["accuracy"] for r in rows], 0.4, label="model accuracy", color="tab:blue")
    ax.bar(x + 0.2, [r["majority_share"] for r in rows], 0.4, label="majority-class share", color="tab:gray")
    if compare:
        acc = {r["bin"]: r["accuracy"] for r in compare["per_bin"]}
        ax.plot(x, [acc.get(r["bin"], np.nan) for r in rows], "o", color="tab:orange",
                label=f"{compare['model_id']} (one pixel size)")
    for i, r in enumerate(rows):
        ax.text(i, 1.02, f"n={r['n']}\n" + r["majority_class"].replace("+", "+\n"), ha="center", va="bottom",
                fontsize=6)
    ax.set_xticks(x, [bin_label(r["bin"], meta["by"], meta["bins"]) for r in rows], rotation=30, ha="right",
                  fontsize=7)
    ax.set_ylim(0, 1.25)
    ax.set_xlabel(quantity(meta["by"]))
    ax.set_ylabel("fraction")
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    ax.set_title(wrap(f"accuracy per {quantity(meta['by'])} bin ({meta['split']} split) vs class mix",
                      1.0 + 1.1 * len(rows), 9), fontsize=9)
    fig.tight_layout()
    return save_figure(fig, path)


def _ratio_matrix(rows: list[dict[str, Any]]) -> xr.DataArray:
    methods = list(dict.fromkeys(r["method"] for r in rows))
    classes = list(dict.fromkeys(r["mask_class"] for r in rows))
    values = np.full((len(methods), len(classes)), np.nan)
    for r in rows:
        values[methods.index(r["method"]), classes.index(r["mask_class"])] = r["ratio"]
    return xr.DataArray(values, dims=(METHOD, "mask_class"), coords={METHOD: methods, "mask_class": classes})


# ----------------------------------------------------------------------------- HTML


_CSS = """body{font-family:sans-serif;max-width:1400px;margin:auto;padding:1em;color:#222}
table{border-collapse:collapse;margin:.5em 0;font-size:13px}td,th{border:1px solid #ccc;padding:3px 7px;text-align:right}
th{background:#f3f3f3}td:first-child,th:first-child{text-align:left}img{max-width:100%;border:1px solid #eee}
.verdict{font-size:1.3em;font-weight:bold;padding:.3em .6em;border-radius:4px;display:inline-block}
.shortcut{background:#f8d0d0}.structure{background:#d0f0d0}.inconclusive{background:#f0ecc8}
.note{color:#555;font-size:13px}.conclusion{font-size:1.1em;max-width:60em}
.warning{background:#fff3cd;padding:.3em .6em;border-left:4px solid #e0a800}
tr:target{background:#fff3cd}"""


#: table columns whose stored name would read as code
_HEADERS = {"n_with": "n with shortcut", "n_without": "n without", "has_shortcut": "has shortcut",
            "relevance_share": "share of relevance", "area_share": "share of area",
            "ratio": "relevance / area", "n_samples": "n", "majority_class": "majority class",
            "majority_share": "majority-class share", "p_adjusted": "p (Holm-adjusted)",
            "cav_accuracy": "CAV accuracy", "tcav": "TCAV score", "mask_class": "mask class",
            "expected_entropy": "expected entropy (aleatoric)", "mutual_information": "mutual information (epistemic)",
            "entropy_correct": "entropy if correct", "entropy_wrong": "entropy if wrong"}


def _header(column: str) -> str:
    """A column's heading in words: ``majority_share`` -> ``majority-class share``; a per-method column
    (``ratio_grad_cam``) keeps the method's name."""
    if column.startswith("ratio_"):
        return f"relevance / area: {column[len('ratio_'):]}"
    return _HEADERS.get(column, column.replace("_", " "))


def _fmt(v: Any) -> str:
    if isinstance(v, float):
        return "–" if not np.isfinite(v) else f"{v:.3f}"
    if isinstance(v, dict):
        return ", ".join(f"{k}: {x}" for k, x in v.items())
    return html.escape("" if v is None else str(v))


def _table(rows: list[dict[str, Any]], columns: list[str] | None = None) -> str:
    if not rows:
        return "<p class='note'>(no rows)</p>"
    columns = columns or list(rows[0])
    head = "".join(f"<th>{html.escape(_header(c))}</th>" for c in columns)
    body = "".join("<tr>" + "".join(f"<td>{_fmt(r.get(c))}</td>" for c in columns) + "</tr>" for r in rows)
    return f"<table><tr>{head}</tr>{body}</table>"


def _prediction_notes(ds: xr.Dataset, ids: list[str], predicted: np.ndarray | None) -> dict[str, str]:
    """``predicted: CLASS`` (and whether it is right) under each shown sample's title; {} when unknown."""
    if predicted is None:
        return {}
    classes = [str(c) for c in ds.attrs.get(schema.ATTR_CLASSES, [])]
    labels = np.asarray(ds[schema.LABEL_INDEX].values)
    notes = {}
    for sid, i in zip(ids, sample_positions(ds, ids), strict=True):
        p = int(predicted[i])
        notes[sid] = f"predicted: {classes[p] if 0 <= p < len(classes) else '?'}" + (" (wrong)" if p != labels[i] else "")
    return notes


def _img(path: Path, alt: str) -> str:
    data = base64.b64encode(path.read_bytes()).decode()
    return f"<p><img alt='{html.escape(alt)}' src='data:image/png;base64,{data}'></p>"


def _ci(v: float, ci: list[float]) -> str:
    return "–" if not np.isfinite(v) else f"{v:.2f} [{ci[0]:.2f}, {ci[1]:.2f}]"


def _swap_html(swap: dict[str, Any], suspect: str) -> str:
    """The content-swap tables: balanced accuracy per condition and the follow-donor rates, with 95% intervals."""
    what = {"original": "images as stored", "swap": f"{suspect} content from an image of another class",
            "random_image": f"{suspect} content from a random other image", "noise": "noise of the donor's mean and std"}
    conditions = [{"condition": what[k], "balanced accuracy [95% CI]": _ci(v["balanced_accuracy"],
                                                                          v["balanced_accuracy_ci"]),
                   "accuracy": v["accuracy"]} for k, v in swap["conditions"].items()]
    rates = [{"prediction after the swap is": label, "n": f["n"], "rate [95% CI]": _ci(f["rate"], f["ci"]),
              "unedited images": f["chance"], "excess over unedited [95% CI]": _ci(f["excess"], f["excess_ci"]),
              "with random content": _ci(f["reference"], f["reference_ci"])}
             for label, f in (("the donor's class", swap["follow_donor"]),
                              ("the donor's (unedited) prediction",
                               swap["follow_donor_prediction"]))]
    pairs = ", ".join(f"{k}: {v}" for k, v in swap["class_pairs"].items())
    return ("<h3>Content swap</h3><p class='note'>The suspect region of each image (the union with the donor's) "
            f"is filled with a donor's pixels; {swap['n_pairs']} pairs ({swap['per_sample']} per image, seed "
            f"{swap['seed']}), donors of a different class, balanced over class pairs (recipient-&gt;donor: "
            f"{html.escape(pairs)}). Unedited images: the same rate for the recipient's own prediction on the "
            f"same pairs; the excess over it is paired per pair. Intervals: bootstrap over pairs "
            f"({swap['n_boot']} draws).</p>"
            + _table(conditions) + _table(rates))


def _shortcut_html(rep: ShortcutReport, figures: dict[str, Path]) -> str:
    parts = [f"<p><span class='verdict {rep.verdict}'>{rep.verdict}</span> "
             f"<span class='note'>({rep.kind} evidence, {rep.n_samples} samples, balanced accuracy "
             f"{rep.balanced_accuracy:.3f} (chance {rep.chance:.3f}), accuracy {rep.accuracy:.3f})</span></p>",
             "<ul>" + "".join(f"<li>{html.escape(r)}</li>" for r in rep.reasons) + "</ul>"]
    if rep.kind == "masks":
        evidence, suspect = ", ".join(rep.evidence) or "(none)", ", ".join(rep.suspect) or "(none)"
        parts.append(f"<p class='note'>Evidence mask classes: {html.escape(evidence)}; suspect: "
                     f"{html.escape(suspect)}. Verdicts are decided on balanced accuracy (mean recall over classes).</p>")
        what = {"original": "images as stored", "structure": f"evidence ({evidence}) filled with the background level",
                "shortcut": f"suspect ({suspect}) filled (reported, not decisive)",
                "shortcut_moved": f"suspect ({suspect}) moved to its mirrored positions (x, y, xy; mean)"}
        abl = [{"edit": what.get(k, k), "accuracy": v["accuracy"], "balanced accuracy": v["balanced_accuracy"],
                "drop (balanced)": rep.ablation["drop"].get(k, 0.0)} for k, v in rep.ablation.items()
               if isinstance(v, dict) and "accuracy" in v]
        parts += ["<h3>Ablation: accuracy on edited images</h3>", _table(abl)]
        if rep.content_swap:
            parts.append(_swap_html(rep.content_swap, suspect))
        if rep.shortcut_split:
            parts += ["<h3>Accuracy with and without the shortcut (has_shortcut)</h3>", _table([rep.shortcut_split])]
    else:
        meta = rep.metadata
        base = meta["scale_baseline"]
        summary = [{"model": rep.model_id, "dataset": rep.dataset, "balanced accuracy": meta["balanced_accuracy"],
                    "scale-only baseline": base["balanced_accuracy"], "V(bin, label)": meta["cramers_v_label"],
                    "V(bin, prediction)": meta["cramers_v_predicted"], "n": meta["n"]}]
        if rep.compare:
            c = rep.compare
            summary.append({"model": c["model_id"], "dataset": c["dataset"], "balanced accuracy": c["balanced_accuracy"],
                            "scale-only baseline": c["scale_baseline"]["balanced_accuracy"],
                            "V(bin, label)": c["cramers_v_label"], "V(bin, prediction)": c["cramers_v_predicted"],
                            "n": c["n"]})
        parts += [f"<h3>Dependence on {html.escape(quantity(meta['by']))}</h3>", _table(summary),
                  "<p class='note'>Scale-only baseline: a depth-3 decision tree predicting the class from "
                  f"the {html.escape(quantity(meta['by']))} alone (on a log scale), fit on the train split. Cramer's V: association of the "
                  "bin with the true label and with the model's prediction (0 none, 1 complete).</p>",
                  _table(with_bin_labels(meta["per_bin"], meta["by"], meta["bins"]),
                         ["bin", "n", "accuracy", "majority_class", "majority_share", "classes"])]
        if rep.compare:
            parts += [f"<p>Per bin for {html.escape(rep.compare['model_id'])}:</p>",
                      _table(with_bin_labels(rep.compare["per_bin"], meta["by"], meta["bins"]),
                             ["bin", "n", "accuracy", "majority_class", "majority_share"])]
        if "bins" in figures:
            parts.append(_img(figures["bins"], "accuracy per bin"))
        if meta.get("attribution_by_bin"):
            rows: dict[str, dict[str, Any]] = {}
            for r in meta["attribution_by_bin"]:
                column = f"{bin_label(r['bin'], meta['by'], meta['bins'])} (n={r['n']})"
                rows.setdefault(r["method"], {"method": r["method"]})[column] = r["top10_share"]
            parts += ["<p>Share of relevance in each map's top 10% pixels, mean per bin (how concentrated the "
                      "evidence is; 0.1 = uniform):</p>", _table(list(rows.values()))]
    parts.append("<details><summary>thresholds</summary>" + _table([rep.thresholds]) + "</details>")
    return "".join(parts)


def verdict_row(workspace: str, rep: ShortcutReport) -> dict[str, Any]:
    """A model's verdict beside its balanced accuracy on val and test (from training) and its accuracy on
    the explained samples with and without the shortcut (``has_shortcut``): a shortcut that held in
    train/val but not in test shows as a drop from val to test and a gap between with and without."""
    metrics = ModelCatalog(workspace).get(rep.model_id).metrics
    val, test = (float(metrics.get(s, {}).get("balanced_accuracy", np.nan)) for s in ("val", "test"))
    split = rep.shortcut_split or {}
    return {"model": rep.model_id, "dataset": rep.dataset, "verdict": rep.verdict, "val balanced accuracy": val,
            "test balanced accuracy": test, "drop val to test": val - test,
            "accuracy with shortcut": float(split.get("accuracy_with", np.nan)), "n with": split.get("n_with", 0),
            "accuracy without": float(split.get("accuracy_without", np.nan)),
            "n without": split.get("n_without", rep.n_samples)}


def _comparison_html(rows: list[dict[str, Any]]) -> str:
    if not rows:
        return ""
    verdicts = "; ".join(f"{html.escape(r['model'])}: <span class='verdict {html.escape(r['verdict'])}'>"
                        f"{html.escape(r['verdict'])}</span>" for r in rows)
    return (f"<h3>Side by side</h3><p>{verdicts}</p><p class='note'>Balanced accuracy on val and test from "
            "training (a shortcut that holds in train/val but not in test costs accuracy on test); accuracy on the "
            "explained samples whose shortcut marks their own class (with) and the others (without: elsewhere, or "
            "none). The verdict and reasons of the first model follow.</p>" + _table(rows))


def _conclusion_html(rep: ShortcutReport) -> str:
    """The plain-language conclusion (:func:`xaiflow.conclusion.conclusion`) and the warnings, at the top."""
    warnings = "".join(f"<p class='warning'>warning: {html.escape(w)}</p>" for w in rep.warnings)
    return (f"<h2>Conclusion</h2><p class='conclusion'><span class='verdict {rep.verdict}'>{rep.verdict}</span> "
            f"{html.escape(conclusion(rep))}</p>{warnings}")


def _metrics_html(rows: list[dict[str, Any]] | None, dataset: str, model_id: str, covered: set[str]) -> str:
    """The metrics the method x metric table does not show (``covered``: those it does), and the spread over
    images of every metric (collapsed); or how to compute them."""
    if rows is None:
        return (f"<p><b>Metrics were not computed</b> for these maps (no <code>metrics/{dataset}/{model_id}</code>). "
                f"Run <code>xaiflow evaluate -w W -d {dataset} -m {model_id}</code> and re-write the report.</p>")
    for r in rows:
        r["mean ± std"] = f"{r['mean']:.3f} ± {r['std']:.3f}" if np.isfinite(r["mean"]) else "–"
        r["median [p10, p90]"] = (f"{r['median']:.3f} [{r['p10']:.3f}, {r['p90']:.3f}]"
                                  if np.isfinite(r["median"]) else "–")
        r["better"] = {True: "higher", False: "lower"}.get(r["higher_is_better"], "")
        r["chance (region)"] = (f"{r['chance']:.3f} ({r['mask_classes']})" if np.isfinite(r.get("chance", np.nan))
                                else "")
    rows = sorted(rows, key=lambda r: (r["metric"], r["method"]))
    columns = ["metric", "method", "n", "mean ± std", "median [p10, p90]", "better", "chance (region)"]
    other = [r for r in rows if r["metric"] not in covered]
    spread = [r for r in rows if r["metric"] in covered and r["higher_is_better"] is not None]
    parts = []
    if other:
        parts += ["<p class='note'>Other stored metrics (no direction or reference):</p>", _table(other, columns)]
    if spread:
        parts.append("<details><summary>Spread over images of each metric (mean ± std, median and 10-90% "
                     "quantiles)</summary><p class='note'>Over images with a done, finite value; – where "
                     "undefined. A localization metric's chance level is its region's share of the image, with the "
                     "mask classes forming the region.</p>" + _table(spread, columns) + "</details>")
    return "".join(parts)


def _uncertainty_group(workspace: str, dataset: str, model_id: str) -> str | None:
    """The model's MC-dropout group, else an ensemble group it is a member of, else None."""
    from xaiflow.uncertainty import uncertainty_group

    own = uncertainty_group(dataset, model_id)
    prefix = uncertainty_group(dataset, model_id).rsplit("/", 1)[0] + "/"
    candidates = [g for g in store.list_groups(workspace) if g.startswith(prefix)]
    if own in candidates:
        return own
    for g in candidates:
        if model_id in store.group_attrs(workspace, g).get(schema.ATTR_PROVENANCE, {}).get("models", []):
            return g
    return None


def _uncertainty_html(workspace: str, dataset: str, model_id: str, folder: Path) -> str:
    from xaiflow import uncertainty as unc

    group = _uncertainty_group(workspace, dataset, model_id)
    if group is None:
        return (f"<p>Not computed: <code>xaiflow uncertainty -w {html.escape(workspace)} -m {html.escape(model_id)}"
                "</code> (MC dropout), or with several models trained with <code>--seeds</code> (an ensemble).</p>")
    ds = unc.open_uncertainty(workspace, group)
    test = store.strings(ds[schema.SPLIT].values) == "test"
    where = "test split" if test.any() else "all samples"
    ds = ds.isel({schema.SAMPLE: np.flatnonzero(test)}) if test.any() else ds
    cal = unc.calibration(ds)
    gap = cal["mean_confidence"] - cal["accuracy"]
    reading = ("over-confident: it is right less often than its confidence says" if gap > 0.05 else
               "under-confident: it is right more often than its confidence says" if gap < -0.05 else
               "about as often right as its confidence says")
    figure = unc.reliability_figure(cal, folder / "reliability.png", f"{group} ({where})")
    kind = html.escape(str(ds.attrs[schema.ATTR_PROVENANCE]["kind"]).replace("_", " "))
    return (f"<p class='note'>{html.escape(group)} ({kind}, {ds.sizes['draw']} draws per sample, {where}). Entropy "
            "(total) = expected entropy (aleatoric: ambiguity the model expects) + mutual information (epistemic: "
            "disagreement between draws), in nats.</p>"
            f"<p>Accuracy {cal['accuracy']:.3f}, mean confidence {cal['mean_confidence']:.3f}, expected calibration "
            f"error {cal['ece']:.3f}: the model is {reading}.</p>"
            + _table(unc.per_class(ds), ["class", "samples", "accuracy", "entropy", "expected_entropy",
                                         "mutual_information", "entropy_correct", "entropy_wrong"])
            + _img(figure, "reliability diagram"))


def _adversarial_html(workspace: str, dataset: str, model_id: str, folder: Path) -> str:
    from xaiflow import adversarial as adv

    group = adv.adversarial_group(dataset, model_id)
    if not store.group_exists(workspace, group):
        return (f"<p>Not computed: <code>xaiflow adversarial -w {html.escape(workspace)} -m {html.escape(model_id)}"
                "</code>.</p>")
    ds = adv.open_adversarial(workspace, group)
    settings = ds.attrs[schema.ATTR_PROVENANCE]
    parts = [f"<p class='note'>{ds.sizes[schema.SAMPLE]} samples attacked (epsilon {float(settings['epsilon']):g}, "
             f"PGD {int(settings['steps'])} steps). ROC AUC of each Fisher-information score for telling correctly "
             "classified clean inputs from the adversarial versions that flipped the decision (0.5: chance).</p>",
             _table(adv.detection_auc(ds), ["attack", "success_rate", "clean", "adversarial", *adv.SCORES]),
             _img(adv.scores_figure(ds, folder / "adversarial_scores.png", group), "Fisher scores")]
    if ds["flipped"].values[:, 2].any():
        images = store.open_group(workspace, schema.group_path(schema.IMAGES, dataset))[schema.IMAGE]
        parts.append(_img(adv.maps_figure(ds, images, folder / "adversarial_maps.png"), "Fisher sensitivity maps"))
    return "".join(parts)


def _concepts_html(workspace: str, dataset: str, model_id: str, folder: Path) -> str:
    from xaiflow import concepts as cc

    group = cc.concepts_group(dataset, model_id, "tcav")
    if not store.group_exists(workspace, group):
        return (f"<p>Not computed: <code>xaiflow concepts -w {html.escape(workspace)} -m {html.escape(model_id)} "
                "-c NAME=mask:CLASS ...</code> (concepts from mask classes, metadata or example folders).</p>")
    ds = store.open_group(workspace, group)
    rows = cc.tcav_table(ds)
    drivers = [f"{r['concept']} for {r['class']} ({r['layer']}, {r['tcav']:.2f})" for r in rows if r["significant"]]
    settings = ds.attrs[schema.ATTR_PROVENANCE]
    return (f"<p class='note'>TCAV score: the share of a class's {html.escape(settings['split'])} samples whose "
            f"logit grows along the concept's direction, over {int(settings['runs'])} random counterpart sets; "
            f"significant: above its random concepts' mean and different from them (Welch t-test, Holm-corrected, alpha "
            f"{float(settings['alpha']):g}). A CAV accuracy near 0.5 means the layer does not tell the concept from "
            "random examples.</p>"
            f"<p>Concepts that drive a class: {html.escape('; '.join(drivers) or 'none significant')}.</p>"
            + _table(rows, ["class", "concept", "layer", "tcav", "std", "random", "cav_accuracy", "p_adjusted",
                            "significant"])
            + _img(cc.tcav_figure(ds, folder / "tcav.png"), "TCAV scores"))


def _importance_html(workspace: str, dataset: str, model_id: str, folder: Path) -> str:
    from xaiflow import importance as imp

    if not store.group_exists(workspace, imp.importance_group(dataset, model_id)):
        return (f"<p>Not computed: <code>xaiflow importance -w {html.escape(workspace)} -m {html.escape(model_id)}"
                "</code> (needs masks: one class per pixel).</p>")
    ds = imp.open_importance(workspace, dataset, model_id)
    summary = imp.summarize(ds, imp.relevance_shares(workspace, dataset, model_id, ds[schema.SAMPLE].values))
    baseline = str(ds.attrs[schema.ATTR_PROVENANCE]["baseline"])
    columns = [c for c in ("class", "mask_class", "n", "occlusion_drop", "occlusion_drop_std", "keep_only", "flip_rate",
                           "area") if c in summary.columns]
    columns += [c for c in summary.columns if c.startswith("ratio_")]
    return (f"<p class='note'>Per true class and mask class: the drop of the predicted class's probability when "
            f"that class's pixels are replaced ({html.escape(baseline)}), the probability when only they are kept, "
            "how often the decision changed, the area share, and each method's relevance share over area share "
            "(ratio above 1: the method puts more relevance there than its area).</p>"
            + "".join(f"<p>{html.escape(line)}</p>" for line in imp.sentences(summary))
            + _table(summary.to_dict("records"), columns)
            + _img(imp.importance_figure(summary, folder / "importance.png"), "structure importance"))


def _probes_html(workspace: str, dataset: str, model_id: str, folder: Path) -> str:
    from xaiflow import probes

    if not store.group_exists(workspace, probes.probes_group(dataset, model_id)):
        return (f"<p>Not computed: <code>xaiflow probe -w {html.escape(workspace)} -m {html.escape(model_id)}</code>"
                " (rotations, flips, zoom, contrast, noise).</p>")
    ds = probes.open_probes(workspace, dataset, model_id)
    summary = probes.summarize(ds)
    parts = ["<p class='note'>Share of unchanged decisions and correlation of the maps turned back into the "
             "original frame, per true class and transform.</p>"]
    if probes.probed_rotations(ds):
        v = probes.rotation_verdict(ds)
        parts.append(f"<p>Orientation: <b>{v['verdict']}</b> (decisions kept {v['agreement']:.2f}, maps "
                     f"{v['map_correlation']:.2f}{'; ' + html.escape(v['reason']) if v['reason'] else ''}); least "
                     f"invariant class: {html.escape(v['weakest_class'])}.</p>")
    parts.append(_table(summary[summary["class"] == "all"].to_dict("records"),
                        ["transform", "samples", "agreement", "map_correlation", "probability_change"]))
    parts.append(_img(probes.probe_figure(summary, folder / "probes.png"), "symmetry probes"))
    return "".join(parts)


def _inspection(section: Any, workspace: str, dataset: str, model_id: str, folder: Path) -> str:
    """One inspection section; a group that cannot be read (an interrupted run) is said, not fatal."""
    try:
        return section(workspace, dataset, model_id, folder)
    except XaiflowError as e:
        return f"<p>Not available: {html.escape(str(e))}</p>"


def write_report(workspace: str | os.PathLike[str], model_id: str, dataset: str | None = None,
                 out: str | os.PathLike[str] | None = None, *, compare_model: str | None = None,
                 methods: list[str] | None = None, by: str | None = None, bins: list[float] | None = None,
                 n_examples: int | None = None, beside: list[str] | None = None,
                 shortcut_options: dict[str, Any] | None = None, embed_limit: int = EMBED_LIMIT) -> Path:
    """Write the report folder of ``model_id`` on ``dataset`` (default: its training dataset)
    into ``out`` (default :func:`default_out`); returns the path of ``report.html``. The verdicts of
    the ``beside`` models (each on its own training dataset) are shown beside its own, and written to
    ``comparison.json`` (:func:`verdict_row`). ``shortcut_options``: the evidence/suspect settings
    of the verdicts (:func:`xaiflow.shortcut.shortcut_report`'s keywords, e.g. from the config's
    ``shortcut:`` section); the report opens with the verdict's plain-language conclusion. Figures are
    embedded unless the page would exceed ``embed_limit`` bytes: then the largest are linked
    (:func:`xaiflow.report_embed.fit_page`)."""
    workspace = str(workspace)
    try:
        dataset = dataset or model_dataset(workspace, model_id)
        if not store.group_exists(workspace, saliency_group(dataset, model_id)):
            raise ReportError(f"no saliency computed for dataset {dataset!r} and model {model_id!r} in {workspace}; "
                              "run `xaiflow attribute` first")
        ds = open_saliency(workspace, dataset, model_id, methods)
        done = ds["done"].all(METHOD).values
        if not done.any():
            raise ReportError(f"{saliency_group(dataset, model_id)}: no sample has maps for every method yet")
        ds = ds.isel({schema.SAMPLE: np.flatnonzero(done)})
        options = shortcut_options or {}
        rep = shortcut_report(workspace, model_id, dataset, compare_model=compare_model, by=by, bins=bins, **options)
        others = [shortcut_report(workspace, m, **options) for m in beside or []]
    except (ShortcutError, SaliencyQueryError) as e:
        raise ReportError(str(e)) from None
    folder = Path(out) if out is not None else default_out(workspace, model_id)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "shortcut.json").write_text(rep.to_json())
    comparison = [verdict_row(workspace, r) for r in [rep, *others]] if others else []
    if comparison:
        finite = [{k: None if isinstance(v, float) and not np.isfinite(v) else v for k, v in r.items()}
                  for r in comparison]
        (folder / "comparison.json").write_text(json.dumps(finite, indent=2))
    names = [str(m) for m in ds[METHOD].values]
    classes = list(ds.attrs.get(schema.ATTR_CLASSES, []))
    figures: dict[str, Path] = {}
    n_examples = n_examples or min(len(classes), 6) or 4  # one per class by default
    examples = _examples(ds, n_examples)
    predicted, probabilities = stored_predictions(workspace, ds, model_id, dataset)
    wrong = pick_misclassified(ds, predicted, 4) if predicted is not None else []
    shown = list(dict.fromkeys(examples + wrong))
    signed = signed_methods(ds.isel({schema.SAMPLE: sample_positions(ds, shown)}).compute())
    write_sample_pages(workspace, ds, shown[:MAX_PAGES], folder, dataset=dataset, model_id=model_id,
                       predicted=predicted, probabilities=probabilities, signed=signed)
    anchored: set[str] = set()
    try:
        figures["examples"] = saliency_grid(ds, examples, folder / "examples.png", signed=signed,
                                            notes=_prediction_notes(ds, examples, predicted))
        figures["class_means"] = group_map_grid(group_maps(ds, by=schema.LABEL).compute(), folder / "class_means.png",
                                                f"{model_id}: mean map per true class", shared_scale=True)
        if rep.kind == "metadata":
            by = rep.metadata["by"]
            bin_maps = group_maps(ds, by=by, bins=rep.metadata["bins"]).compute()
            dim = bin_maps.dims[0]
            named = [bin_label(b, by, rep.metadata["bins"]) for b in bin_maps[dim].values]
            bin_maps = bin_maps.assign_coords({dim: named})
            figures["bin_means"] = group_map_grid(bin_maps, folder / "bin_means.png",
                                                  f"{model_id}: mean map per {quantity(by)} bin")
            figures["bins"] = bin_accuracy_figure(rep.metadata, folder / "bin_accuracy.png", rep.compare or None)
        agree = method_agreement(ds).compute()
        n_agree = agree.attrs["n_samples"]
        figures["spearman"] = matrix_figure(agree.spearman, folder / "agreement_spearman.png",
                                            f"Spearman rank correlation of |maps| (mean of {n_agree} samples)")
        figures["overlap"] = matrix_figure(agree.top_overlap, folder / "agreement_top10.png",
                                           f"overlap of top-10% pixels (mean of {n_agree} samples)", vmin=0)
        if rep.kind == "masks":
            ratio = _ratio_matrix(rep.mask_mass)
            figures["mask"] = matrix_figure(ratio, folder / "mask_ratio.png",
                                            "relevance share / area share per mask class\n(1 = as uniform; "
                                            "blank: class absent)", vmin=0, vmax=float(np.nanmax(ratio.values)))
    except QueryError as e:
        raise ReportError(str(e)) from None
    metrics = metric_table(workspace, dataset, model_id)
    attrs = ds.attrs
    header = [{"model": model_id, "dataset": dataset, "checkpoint sha256": str(attrs.get("checkpoint_sha256", ""))[:12],
               "maps explain": attrs.get("target", ""), "samples with maps": int(ds.sizes[schema.SAMPLE]),
               "classes": ", ".join(classes), "methods": ", ".join(names)}]
    body = [f"<h1>xaiflow report: {html.escape(model_id)}</h1>", _conclusion_html(rep), _table(header),
            "<h2>Model</h2>", f"<p class='note'>{ACCURACY_NOTE}</p>", model_html(workspace, model_id, folder, _table, _img),
            "<h2>1. Shortcut verdict</h2>", _comparison_html(comparison), _shortcut_html(rep, figures),
            "<h2>2. Example overlays</h2><p class='note'>One explained sample per class; each map scaled by its "
            "99th percentile; red/blue for signed methods (for/against the explained class); the scale bar on "
            "each micrograph is a round length in µm. Each image has its own page (full resolution, class "
            "probabilities, metadata, its metric values): follow its link in the table below the figure.</p>",
            _img(figures["examples"], "examples"),
            samples_table(ds, examples, predicted, probabilities, anchored), "<h3>Misclassified examples</h3>",
            misclassified_html(workspace, ds, model_id, predicted, wrong, folder, _img, signed),
            samples_table(ds, wrong, predicted, probabilities, anchored) if wrong else "",
            "<h2>3. Class-mean maps</h2><p class='note'>Mean of mass-normalized |maps| (each sums to 1) over the "
            "samples of each true class; one colour scale per method (column) across the classes, so a brighter "
            "panel is more relevance there than in the other classes.</p>",
            _img(figures["class_means"], "class means")]
    if "bin_means" in figures:
        body += [f"<h3>Mean maps per {html.escape(quantity(str(by)))} bin</h3>",
                 _img(figures["bin_means"], "bin means")]
    faithfulness, covered = faithfulness_section(workspace, dataset, model_id, folder)
    body += ["<h2>4. Metrics</h2>", faithfulness, _metrics_html(metrics, dataset, model_id, covered),
             "<h2>5. Method agreement</h2>", _img(figures["spearman"], "spearman"), _img(figures["overlap"], "overlap"),
             "<h2>6. Mask agreement</h2>"]
    if rep.kind == "masks":
        body += ["<p class='note'>Share of each map's relevance inside each mask class, against the class's share of "
                 "the image area (mean over samples where the class is present).</p>",
                 _table(rep.mask_mass, ["method", "mask_class", "relevance_share", "area_share", "ratio", "n_samples"]),
                 _img(figures["mask"], "mask ratio")]
    else:
        body.append(f"<p>No masks for dataset {html.escape(dataset)}: mask agreement not available.</p>")
    for title, section in (("7. Uncertainty", _uncertainty_html), ("8. Concepts (TCAV)", _concepts_html),
                           ("9. Structure importance", _importance_html), ("10. Symmetry probes", _probes_html),
                           ("11. Adversarial inspection", _adversarial_html),
                           ("12. Humans and the model", human_html)):
        body += [f"<h2>{title}</h2>", _inspection(section, workspace, dataset, model_id, folder)]
    page = (f"<!doctype html><html><head><meta charset='utf-8'><title>xaiflow report {html.escape(model_id)}</title>"
            f"<style>{_CSS}</style></head><body>{''.join(body)}</body></html>")
    page, linked = fit_page(page, folder, embed_limit)
    page = page.replace("<h2>Model</h2>", linked_note(linked, embed_limit) + "<h2>Model</h2>", 1)  # after the conclusion
    path = folder / REPORT_FILE
    path.write_text(page)
    return path
