"""The report section "Humans and the model" and its figures (:mod:`xaiflow.human`).

Two figures: per measure, each method's mean agreement with the human regions as bars with their
bootstrap 95% intervals and the chance level as a line over each bar (:func:`agreement_figure`); and a
few annotated images with every annotator's region outlined over the image and over each method's map
(:func:`contours_figure`). :func:`human_html` is the section: the stored study (or one run now when
there are annotations but no stored study), or, without annotations, the command that makes them.
"""

from __future__ import annotations

import html
import os
from pathlib import Path

import numpy as np
from matplotlib.figure import Figure

from xaiflow import schema, store
from xaiflow.annotations import REGION, annotation_group
from xaiflow.errors import XaiflowError
from xaiflow.figures import (
    micrograph,
    normalize_map,
    pixel_size,
    sample_names,
    save_figure,
    wrap,
)
from xaiflow.human import (
    MAP_METRICS,
    HumanStudy,
    conclusions,
    current_study,
    human_group,
    human_regions,
    printed_tables,
    run_study,
)

#: colours of the annotators' outlines, in order
OUTLINES = ("#00e5ff", "#ffd600", "#ff4081", "#76ff03", "#ff9100")


def agreement_figure(study: HumanStudy, path: str | os.PathLike[str]) -> Path:
    """One panel per measure: a bar per (method, annotator) with its 95% interval; a black line over each
    bar marks its chance level (area share, 0 or 0.5); hatched bars beat chance."""
    fig = Figure(figsize=(3.4 * len(MAP_METRICS), 3.4))
    axes = fig.subplots(1, len(MAP_METRICS), squeeze=False)[0]
    width = 0.8 / max(len(study.annotators), 1)
    for ax, metric in zip(axes, MAP_METRICS):
        for j, annotator in enumerate(study.annotators):
            for k, method in enumerate(study.methods):
                r = next((r for r in study.maps if (r["annotator"], r["xai_method"], r["metric"])
                          == (annotator, method, metric)), None)
                if r is None or r["value"] is None:
                    continue
                x = k - 0.4 + width * (j + 0.5)
                ax.bar(x, r["value"], width * 0.9, color=OUTLINES[j % len(OUTLINES)], edgecolor="black",
                       hatch="//" if r["beats_chance"] else None, label=annotator if k == 0 else None)
                ax.errorbar(x, r["value"], yerr=[[r["value"] - r["ci_low"]], [r["ci_high"] - r["value"]]],
                            color="black", capsize=3, lw=1)
                ax.hlines(r["chance"], x - width / 2, x + width / 2, colors="black", linestyles="--", lw=1.5)
        ax.set_xticks(range(len(study.methods)), study.methods, rotation=30, ha="right", fontsize=8)
        ax.set_title(metric.replace("_", " "), fontsize=9)
        ax.axhline(0, color="grey", lw=0.5)
    axes[0].legend(fontsize=7, title="annotator", title_fontsize=7)
    fig.suptitle(wrap(f"{study.model_id}: maps vs human regions (bars: mean, whiskers: 95% CI, dashed: chance; "
                      "hatched: beats chance)", 3.4 * len(MAP_METRICS), 9), fontsize=9)
    return save_figure(fig, path)


def contours_figure(workspace: str | os.PathLike[str], study: HumanStudy, path: str | os.PathLike[str],
                    n: int = 4) -> Path:
    """``n`` annotated images (one per class first): the image and each method's map, every annotator's
    region outlined in its colour (the regions the study compared: annotations, imported masks)."""
    from xaiflow.saliency import METHOD, open_saliency

    regions = human_regions(workspace, study.dataset, study.settings.get("from_masks"),
                            bool(study.settings.get("use_masks")))
    sal = open_saliency(workspace, study.dataset, study.model_id, study.methods)
    done = np.asarray(regions[schema.DONE].values, bool).any(axis=1) & np.asarray(sal["done"].values, bool).all(axis=1)
    labels = store.strings(sal[schema.LABEL].values)
    order = np.flatnonzero(done)
    first = [order[labels[order] == c][0] for c in dict.fromkeys(labels[order].tolist())]
    chosen = list(dict.fromkeys([*first, *order.tolist()]))[:n]
    fig = Figure(figsize=(2.4 * (len(study.methods) + 1), 2.5 * max(len(chosen), 1)))
    axes = fig.subplots(max(len(chosen), 1), len(study.methods) + 1, squeeze=False)
    for row, i in enumerate(chosen):
        image = np.asarray(sal["image"][i].values, np.float32)
        region = np.asarray(regions[REGION][i].values, bool)
        painted = np.asarray(regions[schema.DONE][i].values, bool)
        micrograph(axes[row, 0], image, pixel_size(sal, int(i)))
        axes[row, 0].set_title(wrap(f"{sample_names(sal)[i]}\ntrue: {labels[i]}", 2.2, 7), fontsize=7)
        for k, method in enumerate(study.methods):
            raw = np.asarray(sal["saliency"].isel({schema.SAMPLE: i}).sel({METHOD: method}).values)
            axes[row, k + 1].imshow(image, cmap="gray")
            axes[row, k + 1].imshow(normalize_map(np.abs(raw), False), cmap="inferno", alpha=0.6, vmin=0, vmax=1)
            axes[row, k + 1].set_title(method, fontsize=7)
        for ax in axes[row]:
            for j in np.flatnonzero(painted):
                if region[j].any() and not region[j].all():
                    ax.contour(region[j].astype(float), levels=[0.5], colors=OUTLINES[j % len(OUTLINES)],
                               linewidths=1)
            ax.set_axis_off()
    names = ", ".join(f"{a} ({OUTLINES[j % len(OUTLINES)]})" for j, a in enumerate(study.annotators))
    fig.suptitle(wrap(f"human regions outlined: {names}", 2.4 * (len(study.methods) + 1), 8), fontsize=8)
    return save_figure(fig, path, dpi=80)


def _table(rows: list[dict], columns: list[str]) -> str:
    def cell(v: object) -> str:
        if isinstance(v, float):
            return f"{v:.3f}" if np.isfinite(v) else "–"
        return html.escape("–" if v is None else str(v))

    head = "".join(f"<th>{html.escape(c)}</th>" for c in columns)
    body = "".join("<tr>" + "".join(f"<td>{cell(r.get(c))}</td>" for c in columns) + "</tr>" for r in rows)
    return f"<table><tr>{head}</tr>{body}</table>" if rows else "<p class='note'>(no rows)</p>"


def _img(path: Path, alt: str) -> str:
    import base64

    return (f"<p><img alt='{html.escape(alt)}' "
            f"src='data:image/png;base64,{base64.b64encode(path.read_bytes()).decode()}'></p>")


def human_html(workspace: str | os.PathLike[str], dataset: str, model_id: str, folder: Path) -> str:
    """The section "Humans and the model": the stored study of ``model_id`` on ``dataset`` (run now, and
    stored, when annotations exist but no study does), its tables, conclusions and figures; without
    annotations, how to make them (`xaiflow annotate`, the annotation page)."""
    workspace = str(workspace)
    stored = store.group_exists(workspace, human_group(dataset, model_id))
    if not stored and not store.group_exists(workspace, annotation_group(dataset)):
        return (f"<p>No expert annotations for {html.escape(dataset)} yet. Open the annotation page with "
                f"<code>xaiflow annotate -w {html.escape(workspace)} -d {html.escape(dataset)} --annotator NAME"
                "</code>: it shows the micrographs one at a time (the model's prediction hidden); the expert picks "
                "the class and paints the regions that decided it. Then <code>xaiflow human -w "
                f"{html.escape(workspace)} -m {html.escape(model_id)}</code> compares them with the model "
                "(imported segmentation masks work too: <code>--from-masks CLASSES</code>).</p>")
    try:
        study = current_study(workspace, dataset, model_id) if stored else run_study(workspace, dataset, model_id)
    except XaiflowError as e:  # no maps, unknown model...: said in the section, the report goes on
        return f"<p>Not available: {html.escape(str(e))}</p>"
    selection = study.settings.get("mask_selection")
    parts = [f"<p class='note'>{study.n_samples} images painted by {html.escape(', '.join(study.annotators))}"
             + (f" (imported masks: {html.escape(str(selection))})" if selection else "")
             + f"; maps scored as {'|map|' if study.settings.get('absolute') else 'signed maps'}. Pointing game: the "
             "map's maximum inside the region; relevance mass: share of positive relevance inside; rank correlation: "
             "Spearman between the map and the region; AUC: the map as a pixel detector of the region. Every number "
             "is a mean over images with a bootstrap 95% interval; chance is the region's area share (pointing game, "
             "relevance mass), 0 (rank correlation) or 0.5 (AUC).</p>"]
    parts += [f"<p>{html.escape(line)}</p>" for line in conclusions(study)]
    for title, rows, columns in printed_tables(study):
        parts += [f"<h3>{html.escape(title)}</h3>", _table(rows, columns)]
    try:
        parts.append(_img(agreement_figure(study, folder / "human_agreement.png"), "maps vs human regions"))
        parts.append(_img(contours_figure(workspace, study, folder / "human_regions.png"), "human regions"))
    except (XaiflowError, IndexError, KeyError) as e:  # a figure needs maps of the painted images
        parts.append(f"<p class='note'>(figures not drawn: {html.escape(str(e))})</p>")
    return "".join(parts)
