"""``xaiflow attribute``, ``xaiflow show`` and ``xaiflow evaluate``: attribution maps and their metrics."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Optional

import typer

from xaiflow.cli.common import (RichProgress, WorkspaceOption, cluster_option, config_argument, console,
                                dataset_option, model_option, out, progress_bars, reporting_errors, rows_table,
                                say, split_list, warn, wrote)


def attribute(
    config: Path = config_argument("attribution"),
    workspace: str = WorkspaceOption,
    methods: Optional[str] = typer.Option(None, "--methods", help="comma-separated method names (default: config)"),
    model: Optional[str] = model_option(),
    cluster: str = cluster_option(),
    overwrite: bool = typer.Option(False, "--overwrite", help="recompute maps stored with other parameters/model"),
) -> None:
    """Compute attribution maps chunk by chunk on Dask and store them beside the images."""
    from xaiflow.attribution import METHODS
    from xaiflow.attribution.engine import run_attribution
    from xaiflow.config import load_config
    from xaiflow.runtime import dask_client

    with reporting_errors():
        cfg = load_config(config)
        acfg = cfg.section("attribution").with_overrides(methods=split_list(methods), model=model)
        for spec in acfg.methods:  # a misspelt name or model is refused before any cluster starts
            METHODS.get(spec.name)
        seen = _seen_in_training(workspace, acfg, cfg)
        with dask_client(cluster) as client, progress_bars() as bars:
            console.print(f"dask dashboard: {client.dashboard_link}")
            res = run_attribution(workspace, acfg, run=cfg, overwrite=overwrite, client=client,
                                  progress=RichProgress(bars, f"{acfg.dataset} chunks"))
        say(f"[green]{res.group}[/]: {res.chunks_run} chunk(s) computed, {res.chunks_skipped} already complete",
            group=res.group, chunks_run=res.chunks_run, chunks_skipped=res.chunks_skipped, methods=[])
        rows = [{"method": k, "maps": n, "non-finite": res.nonfinite.get(k, 0),
                 "s/map (worker)": res.seconds.get(k, 0.0) / max(n, 1)} for k, n in res.maps_computed.items()]
        if rows:
            out.print(rows_table(rows, ["method", "maps", "non-finite", "s/map (worker)"], key="methods",
                                 data=[{"method": r["method"], "maps": r["maps"], "nonfinite": r["non-finite"],
                                        "seconds_per_map": r["s/map (worker)"]} for r in rows]))
        if seen:
            warn(seen)


def _seen_in_training(workspace: str, acfg: Any, run: Any) -> str | None:
    """A warning when the explained samples include images the model was trained or early-stopped on."""
    import numpy as np

    from xaiflow import schema, store
    from xaiflow.models.catalog import ModelCatalog
    from xaiflow.shortcut import overlap_warning, training_overlap

    entry = ModelCatalog(workspace).resolve(acfg.model, run=run, dataset=acfg.dataset)
    images = store.open_group(workspace, schema.group_path(schema.IMAGES, acfg.dataset))
    ids = store.strings(images[schema.SAMPLE].values)
    if acfg.splits:
        ids = ids[np.isin(store.strings(images[schema.SPLIT].values), list(acfg.splits))]
    return overlap_warning(training_overlap(workspace, entry, acfg.dataset, list(ids)), len(ids), entry.model_id)


def show(
    workspace: str = WorkspaceOption,
    dataset: Optional[str] = dataset_option(),
    model: Optional[str] = model_option(),
    samples: Optional[str] = typer.Option(None, "--samples", help="comma-separated sample ids (default: 4 with maps "
                                                                  "for every method)"),
    methods: Optional[str] = typer.Option(None, "--methods", help="comma-separated method keys (default: all stored)"),
    output: Path = typer.Option(Path("saliency.png"), "--out", "-o", help="PNG to write"),
) -> None:
    """Figure grid: each sample's image and every method's map over it, with labels."""
    from xaiflow.figures import saliency_grid
    from xaiflow.models.catalog import ModelCatalog
    from xaiflow.saliency import open_saliency, pick_samples

    with reporting_errors():
        dataset, model_id = ModelCatalog(workspace).resolve_maps(model, dataset)
        ds = open_saliency(workspace, dataset, model_id, split_list(methods))
        wrote(saliency_grid(ds, pick_samples(ds, split_list(samples)), output))


def evaluate(
    workspace: str = WorkspaceOption,
    dataset: Optional[str] = dataset_option(),
    model: Optional[str] = model_option(),
    metrics: Optional[str] = typer.Option(None, "--metrics", help="comma-separated metric names "
                                          "(xaiflow.metrics.METRICS; default: road, region_perturbation, sparseness, "
                                          "entropy, plus pointing_game and relevance_mass_accuracy with masks)"),
    methods: Optional[str] = typer.Option(None, "--methods", help="saliency keys (default: all stored)"),
    mask_class: Optional[str] = typer.Option(
        None, "--mask-class", help="the region of the localization metrics: a mask class, a union (CLASS+CLASS), or "
                                   "per image label (LABEL=CLASS[+CLASS],...,*=CLASS for the other labels); default: "
                                   "every mask class but the first (the background)"),
    device: str = typer.Option("auto", "--device", help="cpu, cuda, cuda:N or auto"),
    cluster: str = cluster_option(),
    overwrite: bool = typer.Option(False, "--overwrite", help="recompute metrics stored with other parameters"),
) -> None:
    """Score stored maps (faithfulness, randomization, localization, complexity) chunk by chunk."""
    from xaiflow import store
    from xaiflow.metrics import METRICS
    from xaiflow.metrics.runner import run_metrics
    from xaiflow.metrics.summary import metric_summary
    from xaiflow.models.catalog import ModelCatalog
    from xaiflow.runtime import dask_client
    from xaiflow.saliency import open_saliency

    with reporting_errors():
        dataset, model_id = ModelCatalog(workspace).resolve_maps(model, dataset)
        for name in split_list(metrics) or []:  # misspelt names are refused before any cluster starts
            METRICS.get(name)
        open_saliency(workspace, dataset, model_id, split_list(methods), with_images=False)
        with dask_client(cluster) as client, progress_bars() as bars:
            res = run_metrics(workspace, dataset, model_id, split_list(metrics), split_list(methods), mask_class,
                              device=device, overwrite=overwrite, client=client,
                              progress=RichProgress(bars, f"{dataset} chunks"))
        say(f"[green]{res.group}[/]: {res.chunks_run} chunk(s) computed, {res.chunks_skipped} complete or without maps",
            group=res.group, chunks_run=res.chunks_run, chunks_skipped=res.chunks_skipped)
        summary = metric_summary(workspace, dataset, model_id)
        outputs = store.group_attrs(workspace, res.group).get("outputs", {})
        chance = {(r["method"], r["metric"]): r["mean"] for r in summary
                  if outputs.get(r["metric"], {}).get("chance_of")}
        names = [n for n in dict.fromkeys(r["metric"] for r in summary) if not outputs.get(n, {}).get("chance_of")]
        by_method: dict[str, dict[str, str]] = {}
        for r in summary:
            if r["metric"] not in names:
                continue
            row = by_method.setdefault(r["method"], {"method": r["method"]})
            row[r["metric"]] = f"{r['mean']:.3f} ± {r['std']:.3f}"
            level = chance.get((r["method"], outputs.get(r["metric"], {}).get("chance")))
            if level is not None:  # a localization number beside its chance level (the region's area share)
                row[r["metric"]] += f" (chance {level:.3f})"
        out.print(rows_table(list(by_method.values()), ["method", *names], title="mean ± std over samples",
                             key="metrics", data=summary))
        for name in names:
            if outputs.get(name, {}).get("chance"):
                out.print(f"{name}: region = mask classes {outputs[name]['mask_classes']}; chance = the region's "
                          "share of the image (mean over samples with a mask)")
