"""``xaiflow importance``: which phase of the micrograph drives the decision? Occlusion and keep-only per mask class."""

from __future__ import annotations

from pathlib import Path

import typer

from xaiflow.cli.common import (
    RichProgress,
    WorkspaceOption,
    cluster_option,
    dataset_option,
    emit,
    model_option,
    out,
    pm,
    progress_bars,
    reporting_errors,
    rows_table,
    wrote,
)

OutOption = typer.Option(None, "--out", "-o", help="PNG of the occlusion drops (and relevance shares) per class and "
                                                   "mask class (default: <workspace stem>.figures/importance_<dataset>_"
                                                   "<model>.png)")


def importance(
    workspace: str = WorkspaceOption,
    dataset: str | None = dataset_option(),
    model: str | None = model_option(),
    split: str = typer.Option("test", "--split", help="samples to measure (all: every sample with a mask)"),
    baseline: str = typer.Option("blur", "--baseline", help="what replaces a removed phase: blur (Gaussian blur of the "
                                                            "image: keeps the local mean), mean (the image's mean), "
                                                            "noise (seeded Gaussian noise of the image's mean and std)"),
    sigma: float = typer.Option(4.0, "--sigma", help="blur of the blur baseline, in pixels"),
    min_area: float = typer.Option(0.01, "--min-area", help="smallest share of an image's pixels a mask class must "
                                                            "cover to be removed"),
    seed: int = typer.Option(0, "--seed", help="seed of the noise baseline"),
    device: str = typer.Option("cpu", "--device", help="cpu, cuda, cuda:N or auto"),
    cluster: str = cluster_option(),
    overwrite: bool = typer.Option(False, "--overwrite", help="replace results stored with other settings"),
    output: Path | None = OutOption,
) -> None:
    """Relative importance of structures: per true class and mask class, the drop of the predicted class's
    probability when that phase is removed, what that phase alone leaves of it, and (with attribution maps) each
    method's relevance share beside the phase's area."""
    from xaiflow import importance as imp
    from xaiflow.models.catalog import ModelCatalog
    from xaiflow.runtime import dask_client
    from xaiflow.studies.report import default_out_dir

    with reporting_errors():
        if baseline not in imp.BASELINES:  # refused before any cluster starts
            raise imp.ImportanceError(f"unknown baseline {baseline!r}; valid: {', '.join(imp.BASELINES)}")
        entry = ModelCatalog(workspace).resolve(model, dataset=dataset)
        dataset = dataset or entry.dataset
        with dask_client(cluster) as client, progress_bars() as bars:
            group = imp.measure_importance(workspace, entry.model_id, dataset, baseline=baseline, sigma=sigma,
                                           min_area=min_area, split=None if split == "all" else split, seed=seed,
                                           device=device, overwrite=overwrite, client=client,
                                           progress=RichProgress(bars, f"{dataset} chunks"))
        ds = imp.open_importance(workspace, dataset, entry.model_id)
        shares = imp.relevance_shares(workspace, dataset, entry.model_id, ds["sample"].values)
        summary = imp.summarize(ds, shares)
        relevance = [c for c in summary.columns if c.startswith(("share_", "ratio_"))]
        rows = [{**r, **{k: pm(r[k], r[f"{k}_std"]) for k in ("occlusion_drop", "keep_only", "area")}}
                for r in summary.to_dict("records")]
        out.print(rows_table(rows, ["class", "mask_class", "n", "occlusion_drop", "keep_only", "flip_rate", "area",
                                    *relevance],
                             title=f"{group} ({baseline} baseline): mean ± std over the samples where the mask class "
                                   f"covers at least {min_area:g} of the image", key="importance",
                             data=summary.to_dict("records")))
        emit(group=group, baseline=baseline)
        if shares is None:
            out.print(f"(no attribution maps of {entry.model_id} explaining one class per sample: run `xaiflow "
                      "attribute` to compare each method's relevance share with the phases' area)")
        for sentence in imp.sentences(summary):
            out.print(sentence, markup=False, highlight=False)
        path = output or default_out_dir(workspace) / f"{group.replace('/', '_')}.png"
        wrote(imp.importance_figure(summary, path, f"{group} ({baseline} baseline)"))
