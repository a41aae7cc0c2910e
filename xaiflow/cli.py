"""The ``xaiflow`` command line (typer). Each command is a thin wrapper over a library call."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Optional

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table
from rich.tree import Tree

import xaiflow

app = typer.Typer(help="xaiflow: what did the network learn from these micrographs?", no_args_is_help=True,
                  pretty_exceptions_enable=False)
console = Console(stderr=True)
out = Console()

WORKSPACE_HELP = "workspace (a Zarr v3 store, created on first use); env XAIFLOW_WORKSPACE"


def _version(value: bool) -> None:
    if value:
        out.print(f"xaiflow {xaiflow.__version__}")
        raise typer.Exit()


@app.callback()
def main(
    version: bool = typer.Option(False, "--version", callback=_version, is_eager=True, help="print the version"),
    verbose: bool = typer.Option(False, "--verbose", "-v", help="log details"),
) -> None:
    logging.basicConfig(level=logging.INFO if verbose else logging.WARNING,
                        format="%(levelname)s %(name)s: %(message)s")
    logging.getLogger("xaiflow").setLevel(logging.INFO if verbose else logging.WARNING)
    # distributed configures its own loggers at INFO when imported; keep the terminal for results
    import distributed  # noqa: F401

    logging.getLogger("distributed").setLevel(logging.INFO if verbose else logging.WARNING)


class _RichProgress:
    """Adapter from the library's ``progress(stage, done, total)`` callback to rich bars."""

    def __init__(self, progress: Progress, prefix: str) -> None:
        self.progress, self.prefix, self.tasks = progress, prefix, {}

    def __call__(self, stage: str, done: int, total: int) -> None:
        if stage not in self.tasks:
            self.tasks[stage] = self.progress.add_task(f"{self.prefix} {stage}", total=total)
        self.progress.update(self.tasks[stage], completed=done)


def _progress() -> Progress:
    return Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                    console=console, transient=False)


def _fail(err: Exception) -> None:
    console.print(f"[bold red]error:[/] {err}")
    raise typer.Exit(code=2)


@app.command()
def ingest(
    config: Path = typer.Argument(..., help="run config YAML (see configs/)"),
    workspace: Path = typer.Option(..., "--workspace", "-w", envvar="XAIFLOW_WORKSPACE", help=WORKSPACE_HELP),
    overwrite: bool = typer.Option(False, "--overwrite", help="replace datasets ingested with another config"),
    data_dir: Optional[Path] = typer.Option(None, "--data-dir", help="override the data folder of file sources"),
    cluster: str = typer.Option("local", "--cluster", help="cluster profile: threads, local, tcp://host:port or YAML"),
) -> None:
    """Ingest the datasets of CONFIG into the workspace, then print its summary."""
    from xaiflow.config import ConfigError, load_config
    from xaiflow.ingest import IngestError, ingest as run_ingest
    from xaiflow.runtime import TaskError, dask_client
    from xaiflow.sources.base import SourceError

    try:
        cfg = load_config(config, data_dir=data_dir)
        with dask_client(cluster) as client, _progress() as bars:
            results = []
            for d in cfg.datasets:
                results += run_ingest(cfg.model_copy(update={"datasets": [d]}), workspace, overwrite=overwrite,
                                      client=client, progress=_RichProgress(bars, d.name))
    except (ConfigError, IngestError, SourceError, TaskError, ValueError) as e:
        _fail(e)
    for r in results:
        extra = f", {r.n_skipped} skipped (see `xaiflow info`)" if r.n_skipped else ""
        out.print(f"[green]{r.dataset}[/]: {r.status}, {r.n_samples} samples{extra}")
    _print_info(workspace)


@app.command()
def info(workspace: Path = typer.Argument(..., help="workspace path")) -> None:
    """Tree of the workspace's groups with shapes, classes and counts per split."""
    try:
        _print_info(workspace)
    except ValueError as e:
        _fail(e)


def _print_info(workspace: Path) -> None:
    from xaiflow import summary

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


if __name__ == "__main__":  # pragma: no cover
    app()
