"""``xaiflow probe``: do the model's decisions and explanations survive rotations, flips, zoom, contrast and noise?"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

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
    split_list,
    wrote,
)

if TYPE_CHECKING:
    import xarray as xr

TRANSFORMS_HELP = ("comma-separated transforms: rot90, rot180, rot270, flip_h, flip_v, scale:<zoom in (1, 4]>, "
                   "contrast:<factor > 0>, noise:<std as a fraction of the value range>")

OutOption = typer.Option(None, "--out", "-o", help="PNG of the scores per class and transform (default: "
                                                   "<workspace stem>.figures/probes_<dataset>_<model>.png)")


def probe(
    workspace: str = WorkspaceOption,
    dataset: str | None = dataset_option(),
    model: str | None = model_option(),
    transforms: str = typer.Option("rot90,rot180,rot270,flip_h,flip_v,scale:1.25,contrast:1.5,noise:0.05",
                                   "--transforms", "-t", help=TRANSFORMS_HELP),
    method: str = typer.Option("grad_cam", "--method", help="attribution method whose maps are compared "
                                                            "(xaiflow.attribution.METHODS)"),
    split: str = typer.Option("test", "--split", help="samples to probe (all: every sample)"),
    seed: int = typer.Option(0, "--seed", help="seed of the noise transforms"),
    device: str = typer.Option("cpu", "--device", help="cpu, cuda, cuda:N or auto"),
    cluster: str = cluster_option(),
    overwrite: bool = typer.Option(False, "--overwrite", help="replace probes stored with other settings"),
    output: Path | None = OutOption,
) -> None:
    """Invariance probes: prediction agreement and aligned-map correlation per class and transform, and
    whether the model's decisions are orientation-invariant."""
    from xaiflow import probes
    from xaiflow.attribution import METHODS
    from xaiflow.models.catalog import ModelCatalog
    from xaiflow.runtime import dask_client
    from xaiflow.studies.report import default_out_dir

    with reporting_errors():
        entry = ModelCatalog(workspace).resolve(model, dataset=dataset)
        dataset = dataset or entry.dataset
        METHODS.get(method)  # misspelt names are refused before any cluster starts
        probes.parse_transforms(split_list(transforms) or [], seed)
        with dask_client(cluster) as client, progress_bars() as bars:
            group = probes.probe_dataset(workspace, entry.model_id, dataset, transforms=split_list(transforms) or [],
                                         method=method, split=None if split == "all" else split, seed=seed,
                                         device=device, overwrite=overwrite, client=client,
                                         progress=RichProgress(bars, f"{dataset} chunks"))
        ds = probes.open_probes(workspace, dataset, entry.model_id)
        summary = probes.summarize(ds)
        rows = [{**r, "agreement": pm(r["agreement"], r["agreement_std"]),
                 "map_correlation": pm(r["map_correlation"], r["map_correlation_std"])}
                for r in summary.to_dict("records")]
        out.print(rows_table(rows, ["class", "transform", "samples", "agreement", "map_correlation", "maps",
                                    "probability_change"],
                             title=f"{group} ({method} maps): mean ± std over samples; maps: samples whose map "
                                   "correlation is defined", key="probes", data=summary.to_dict("records")))
        emit(group=group, method=method)
        _verdict(ds)
        path = output or default_out_dir(workspace) / f"{group.replace('/', '_')}.png"
        wrote(probes.probe_figure(summary, path, f"{group} ({method} maps)"))


def _verdict(ds: xr.Dataset) -> None:
    """The orientation verdict, when a rotation was probed."""
    from xaiflow import probes

    if not probes.probed_rotations(ds):
        out.print("(no rotation probed: no orientation verdict)")
        return
    v = probes.rotation_verdict(ds)
    emit(orientation=v)
    why = v["reason"] or (f"prediction agreement {v['agreement']:.3f} >= {v['agreement_threshold']}, "
                          f"map correlation {v['map_correlation']:.3f} >= {v['map_threshold']}")
    out.print(f"orientation ({', '.join(v['rotations'])}): [bold]{v['verdict']}[/] ({why}); least invariant class: "
              f"{v['weakest_class']}")
