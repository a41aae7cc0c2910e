"""``xaiflow query ...``: aggregate queries over stored saliency (lazy, chunk by chunk)."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from xaiflow.cli.common import (WorkspaceOption, dataset_option, emit, float_list, model_option, out,
                                reporting_errors, rows_table, say, split_list, warn, wrote)

query_app = typer.Typer(help="Aggregate queries over stored saliency (lazy, chunk by chunk).", no_args_is_help=True)


def _maps(workspace: Path, dataset: Optional[str], model: Optional[str], methods: Optional[str] = None):
    """(dataset, its maps) the options mean (see :meth:`xaiflow.models.catalog.ModelCatalog.resolve_maps`)."""
    from xaiflow.models.catalog import ModelCatalog
    from xaiflow.saliency import open_saliency

    dataset, model_id = ModelCatalog(workspace).resolve_maps(model, dataset)
    return dataset, open_saliency(workspace, dataset, model_id, split_list(methods))


@query_app.command("group-maps")
def group_maps(
    workspace: str = WorkspaceOption,
    dataset: Optional[str] = dataset_option(),
    model: Optional[str] = model_option(),
    by: str = typer.Option("label", "--by", help="label, predicted, or any coordinate (detector, group, ...)"),
    bins: Optional[str] = typer.Option(None, "--bins", help="comma-separated edges for a numeric coordinate"),
    stat: str = typer.Option("mean", "--stat", help="mean or median"),
    split: Optional[str] = typer.Option(None, "--split", help="only samples of this split"),
    methods: Optional[str] = typer.Option(None, "--methods", help="saliency keys (default: all stored)"),
    output: Path = typer.Option(Path("group-maps.png"), "--out", "-o", help="PNG to write"),
) -> None:
    """Mean/median normalized map per class, predicted class or metadata value/bin (figure + counts)."""
    from xaiflow.aggregate import group_maps as query
    from xaiflow.figures import group_map_grid

    with reporting_errors():
        _, ds = _maps(workspace, dataset, model, methods)
        maps = query(ds, by=by, stat=stat, bins=float_list(bins, "--bins"), split=split).compute()
        path = group_map_grid(maps, output, f"{ds.attrs.get('model_id')}: {stat} map by {by}")
        dim = maps.dims[0]
        rows = [{dim: str(g), "samples": int(n)} for g, n in zip(maps[dim].values, maps.n_samples.values)]
        emit(by=by, stat=stat, samples_outside_bins=int(maps.attrs.get("samples_outside_bins", 0)))
        out.print(rows_table(rows, [dim, "samples"], key="groups",
                             data=[{"group": r[dim], "samples": r["samples"]} for r in rows]))
        if maps.attrs.get("samples_outside_bins"):
            span = maps.attrs["outside_range"]
            where = f" (values {span[0]:g} to {span[1]:g})" if span else " (no value)"
            warn(f"{maps.attrs['samples_outside_bins']} sample(s) outside the bins {bins}{where} are left out; "
                 "widen --bins to include them")
        wrote(path)


@query_app.command("agreement")
def agreement(
    workspace: str = WorkspaceOption,
    dataset: Optional[str] = dataset_option(),
    model: Optional[str] = model_option(),
    top: float = typer.Option(0.1, "--top", help="fraction of pixels for the top-k overlap"),
    split: Optional[str] = typer.Option(None, "--split", help="only samples of this split"),
    output: Path = typer.Option(Path("agreement.png"), "--out", "-o", help="PNG to write"),
) -> None:
    """Method x method agreement: Spearman rank correlation of |maps| and top-k pixel overlap."""
    from xaiflow.aggregate import method_agreement
    from xaiflow.figures import matrix_figure

    with reporting_errors():
        agree = method_agreement(_maps(workspace, dataset, model)[1], top_fraction=top, split=split).compute()
        methods = [str(m) for m in agree["xai_method"].values]
        rows = [{"method": m, **{o: float(v) for o, v in zip(methods, agree.spearman.values[i])}}
                for i, m in enumerate(methods)]
        say(f"Spearman rank correlation of |maps|, mean over {agree.attrs['n_samples']} samples",
            n_samples=agree.attrs["n_samples"], methods=methods)
        out.print(rows_table(rows, ["method", *methods], key="spearman"))
        wrote(matrix_figure(agree.spearman, output, f"method agreement (Spearman), n={agree.attrs['n_samples']}"))


@query_app.command("mask-mass")
def mask_mass(
    workspace: str = WorkspaceOption,
    dataset: Optional[str] = dataset_option(),
    model: Optional[str] = model_option(),
) -> None:
    """Share of relevance in each mask class (phase, structure, shortcut) against its area share."""
    from xaiflow.aggregate import mean_mask_mass

    with reporting_errors():
        res = mean_mask_mass(workspace, *_maps(workspace, dataset, model))
        rows = []
        for m in res.xai_method.values:
            for k in res.mask_class.values:
                mass, area = float(res.mass.sel(xai_method=m, mask_class=k)), float(res.area.sel(mask_class=k))
                rows.append({"method": str(m), "mask class": str(k), "relevance share": mass, "area share": area,
                             "ratio": mass / area if area else float("nan")})
        out.print(rows_table(rows, ["method", "mask class", "relevance share", "area share", "ratio"], key="mask_mass",
                             data=[{"method": r["method"], "mask_class": r["mask class"], "relevance_share":
                                    r["relevance share"], "area_share": r["area share"], "ratio": r["ratio"]}
                                   for r in rows]))
