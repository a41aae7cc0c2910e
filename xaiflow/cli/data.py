"""``xaiflow ingest`` and ``xaiflow info``: datasets into the workspace, and what it holds."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer
from rich.table import Table
from rich.tree import Tree

from xaiflow.cli.common import (RichProgress, WorkspaceOption, cluster_option, config_argument, emit, json_mode, out,
                                progress_bars, reporting_errors, say)


def ingest(
    config: Path = config_argument(),
    workspace: str = WorkspaceOption,
    overwrite: bool = typer.Option(False, "--overwrite", help="replace datasets ingested with another config"),
    data_dir: Optional[Path] = typer.Option(None, "--data-dir", help="override the data folder of file sources"),
    cluster: str = cluster_option(),
) -> None:
    """Ingest the datasets of CONFIG into the workspace, then print its summary."""
    from xaiflow.config import load_config
    from xaiflow.ingest import ingest_dataset
    from xaiflow.runtime import dask_client

    with reporting_errors():
        cfg = load_config(config, data_dir=data_dir)
        with dask_client(cluster) as client, progress_bars() as bars:
            results = [ingest_dataset(d, workspace, overwrite=overwrite, client=client,
                                      progress=RichProgress(bars, d.name)) for d in cfg.datasets]
        emit(datasets=[{"dataset": r.dataset, "status": r.status, "n_samples": r.n_samples, "n_skipped": r.n_skipped}
                       for r in results])
        for r in results:
            extra = f", {r.n_skipped} skipped (see `xaiflow info`)" if r.n_skipped else ""
            say(f"[green]{r.dataset}[/]: {r.status}, {r.n_samples} samples{extra}")
        print_info(workspace)


def info(workspace: str = WorkspaceOption) -> None:
    """Tree of the workspace's groups with shapes, classes and counts per split."""
    with reporting_errors():
        print_info(workspace)


def print_info(workspace: Path) -> None:
    from xaiflow import summary

    if json_mode():
        emit(workspace=str(workspace), groups=[
            {"path": g.path, "shape": g.shape, "status": g.status, "notes": g.notes,
             "table": None if g.table is None else g.table.reset_index().to_dict("records")}
            for g in summary.describe_workspace(workspace)])
        return
    tree = Tree(f"[bold]{workspace}[/]")
    for group in summary.describe_workspace(workspace):
        node = tree.add(f"[bold cyan]{group.path}[/]  {group.shape}  [dim]{group.status}[/]")
        for line in group.notes:
            node.add(line)
        if group.table is not None:
            table = Table(*group.table.columns.map(str).insert(0, group.table.index.name or ""), box=None)
            for idx, row in group.table.iterrows():
                table.add_row(str(idx), *[str(v) for v in row])
            node.add(table)
    out.print(tree)
