"""``xaiflow shortcut`` and ``xaiflow report``: the verdict and the HTML report of a model."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from xaiflow.cli.common import (WorkspaceOption, dataset_option, float_list, model_option, out, reporting_errors,
                                split_list)

COMPARE_HELP = "a model trained on images resampled to one pixel size (id or unique prefix)"
BY_HELP = "metadata that should not matter, binned (no masks; default source_um_per_px)"
BINS_HELP = "comma-separated bin edges (default: half decades)"


def shortcut(
    workspace: str = WorkspaceOption,
    model: Optional[str] = model_option(),
    dataset: Optional[str] = dataset_option(),
    compare_model: Optional[str] = typer.Option(None, "--compare-model", help=COMPARE_HELP),
    by: Optional[str] = typer.Option(None, "--by", help=BY_HELP),
    bins: Optional[str] = typer.Option(None, "--bins", help=BINS_HELP),
    split: str = typer.Option("test", "--split", help="samples judged without masks"),
    as_json: bool = typer.Option(False, "--json", help="print the report as JSON"),
) -> None:
    """Shortcut verdict: is the model's evidence in the class-defining structures or elsewhere?"""
    from xaiflow.models.catalog import ModelCatalog
    from xaiflow.shortcut import shortcut_report

    with reporting_errors():
        entry = ModelCatalog(workspace).resolve(model, dataset=dataset)
        rep = shortcut_report(workspace, entry.model_id, dataset, compare_model=compare_model, by=by,
                              bins=float_list(bins, "--bins"), split=split)
        if as_json:
            print(rep.to_json())
            return
        out.print(f"[bold]{rep.verdict}[/] ({rep.kind} evidence, {rep.n_samples} samples, accuracy {rep.accuracy:.3f})")
        for reason in rep.reasons:
            out.print(f"  - {reason}")


def report(
    workspace: str = WorkspaceOption,
    model: Optional[str] = model_option(),
    dataset: Optional[str] = dataset_option(),
    output: Optional[Path] = typer.Option(None, "--out", "-o", help="folder (default: <workspace>.reports/<model>)"),
    compare_model: Optional[str] = typer.Option(None, "--compare-model", help=COMPARE_HELP),
    methods: Optional[str] = typer.Option(None, "--methods", help="saliency keys (default: all stored)"),
    by: Optional[str] = typer.Option(None, "--by", help=BY_HELP),
    bins: Optional[str] = typer.Option(None, "--bins", help=BINS_HELP),
) -> None:
    """Self-contained HTML report: overlays, class means, metrics, agreement, mask mass, shortcut verdict."""
    from xaiflow.models.catalog import ModelCatalog
    from xaiflow.report import write_report

    with reporting_errors():
        entry = ModelCatalog(workspace).resolve(model, dataset=dataset)
        path = write_report(workspace, entry.model_id, dataset, output, compare_model=compare_model,
                            methods=split_list(methods), by=by, bins=float_list(bins, "--bins"))
        out.print(f"wrote {path}")
