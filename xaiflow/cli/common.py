"""What every ``xaiflow`` command shares: the argument convention, error handling, progress, tables.

The convention, the same for every command:

* the workspace is ``-w/--workspace`` (or ``$XAIFLOW_WORKSPACE``), always an option;
* a command driven by a run config takes it as its first argument, ``CONFIG``;
* ``-d/--dataset`` names a dataset, ``-m/--model`` a model (an id, a unique id prefix or
  ``latest``); both default to what the workspace makes unambiguous (the catalog decides,
  :mod:`xaiflow.models.catalog`), and the error lists the candidates when it is not;
* ``--cluster`` picks where Dask tasks run (:data:`CLUSTER_HELP`).

Errors: a command body runs inside :func:`reporting_errors`; every
:class:`~xaiflow.errors.XaiflowError` (and ``OSError``: a file that cannot be read or written)
is printed as one ``error:`` line (no traceback) and the command exits with status 2; Ctrl-C exits with 130 after saying that finished work is
kept. Commands hold no library decisions: they parse, call one library function, print.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any, Optional

import click
import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table
from rich.text import Text
from typer.core import TyperGroup

from xaiflow.errors import XaiflowError

console = Console(stderr=True, width=None if sys.stderr.isatty() else 200)


class ResultConsole(Console):
    """The results console: lines are not cropped at the terminal's width (the terminal wraps them),
    so a table's ids stay whole (:class:`FullWidthTable`)."""

    def print(self, *objects: Any, crop: bool = False, **kwargs: Any) -> None:
        super().print(*objects, crop=crop, **kwargs)


# tables stay readable when piped or logged (rich would wrap at 80 columns)
out = ResultConsole(width=None if sys.stdout.isatty() else 200)

CLUSTER_HELP = ("cluster profile: threads, local, address, slurm, kubernetes, gpu-local (configs/cluster/), "
                "a scheduler address tcp://host:port, or a profile YAML")
MODEL_HELP = "model: an id, a unique id prefix or 'latest' (see `xaiflow models`; default: the only candidate)"
DATASET_HELP = "dataset in the workspace (default: the only candidate)"
OUT_HELP = "folder for CSV tables and figures (default: <workspace parent>/<workspace stem>.figures/)"

WorkspaceOption = typer.Option(..., "--workspace", "-w", envvar="XAIFLOW_WORKSPACE",
                               help="workspace: a Zarr v3 store, a path or an fsspec URL (s3://bucket/ws.zarr), "
                                    "created on first use (env XAIFLOW_WORKSPACE)")


#: the app's own flags, accepted anywhere on the command line
GLOBAL_FLAGS = ("-v", "--verbose")


class GlobalOptionsGroup(TyperGroup):
    """The app's command group: its flags (:data:`GLOBAL_FLAGS`) work anywhere on the line, so
    ``xaiflow ingest cfg.yaml -w ws.zarr -v`` is ``xaiflow -v ingest cfg.yaml -w ws.zarr`` (click
    reads a group's options only before the subcommand's name). Nothing after ``--`` is moved."""

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        end = args.index("--") if "--" in args else len(args)
        head, tail = args[:end], args[end:]
        flags = [a for a in head if a in GLOBAL_FLAGS]
        return super().parse_args(ctx, flags + [a for a in head if a not in GLOBAL_FLAGS] + tail)


def config_argument(section: str | None = None) -> Any:
    """The ``CONFIG`` argument of a config-driven command (``section``: the section it needs)."""
    what = f" with a `{section}:` section" if section else ""
    return typer.Argument(..., help=f"run config YAML{what} (see configs/)")


def model_option() -> Any:
    return typer.Option(None, "--model", "-m", help=MODEL_HELP)


def dataset_option() -> Any:
    return typer.Option(None, "--dataset", "-d", help=DATASET_HELP)


def cluster_option(extra: str = "") -> Any:
    return typer.Option("local", "--cluster", help=CLUSTER_HELP + extra)


def split_list(value: Optional[str]) -> list[str] | None:
    """A comma-separated option as a list (None when not given)."""
    return [v.strip() for v in value.split(",") if v.strip()] if value else None


def float_list(value: Optional[str], option: str) -> list[float] | None:
    """A comma-separated option of numbers (e.g. ``--bins``); a bad one is a clear error."""
    try:
        return [float(v) for v in split_list(value) or []] or None
    except ValueError:
        raise XaiflowError(f"{option}: expected comma-separated numbers, got {value!r}") from None


@contextmanager
def reporting_errors() -> Iterator[None]:
    """User-facing errors as one line and exit 2; Ctrl-C as exit 130 (finished work is kept)."""
    try:
        yield
    except (XaiflowError, OSError) as e:  # OSError: a path that cannot be read or written (it names the file)
        console.print("[bold red]error:[/]", Text(str(e)), highlight=False)  # verbatim: [k8s] is not markup
        raise typer.Exit(code=2) from None
    except KeyboardInterrupt:
        console.print("[yellow]interrupted[/]: finished chunks are kept; run the command again to resume")
        raise typer.Exit(code=130) from None


class FullWidthTable:
    """A rich table rendered at its natural width even on a narrower terminal (the terminal wraps the
    long lines): rich would otherwise cut cells to ``small_...`` or drop whole columns, and ids
    printed by one command are what the next command takes."""

    def __init__(self, table: Table) -> None:
        self.table = table

    def __rich_console__(self, console: Console, options: Any) -> Any:
        natural = console.measure(self.table, options=options.update(max_width=10_000)).maximum
        yield from console.render(self.table, options.update(width=max(options.max_width, natural),
                                                              max_width=max(options.max_width, natural)))


def rows_table(rows: list[dict], columns: list[str], title: str | None = None) -> FullWidthTable:
    """A borderless table of ``rows`` (dicts) with ``columns``, never shortened (:class:`FullWidthTable`)."""
    table = Table(*columns, title=title, box=None)
    for r in rows:
        table.add_row(*[fmt(r.get(c)) for c in columns])
    return FullWidthTable(table)


def fmt(v: object) -> str:
    if isinstance(v, float):
        return f"{v:.3f}"
    return "" if v is None else str(v)


def pm(mean: float, std: float) -> str:
    """``mean ± std`` (empty for NaN)."""
    return "" if mean != mean else f"{mean:.3f} ± {std:.3f}"


class RichProgress:
    """Adapter from the library's ``progress(stage, done, total)`` callback to rich bars."""

    def __init__(self, progress: Progress, prefix: str) -> None:
        self.progress, self.prefix, self.tasks = progress, prefix, {}

    def __call__(self, stage: str, done: int, total: int) -> None:
        if stage not in self.tasks:
            self.tasks[stage] = self.progress.add_task(f"{self.prefix} {stage}", total=total)
        self.progress.update(self.tasks[stage], completed=done)


class LoggedProgress(Progress):
    """Rich bars on a terminal; elsewhere (a batch job's log file, CI, a pipe) one line per step.

    Rich draws nothing live when its console is not a terminal, so a SLURM job's log would show
    no progress until the command ends, and a killed run none at all. Times count from the
    start of the command's work (a stage's bar is only added when its first task reports).
    """

    def __init__(self, *columns, **kwargs) -> None:  # noqa: ANN002, ANN003 - rich's signature
        super().__init__(*columns, **kwargs)
        self._started = time.monotonic()

    def update(self, task_id, **kwargs) -> None:  # noqa: ANN001 - rich's signature
        super().update(task_id, **kwargs)
        if self.disable and "completed" in kwargs:
            task = next(t for t in self.tasks if t.id == task_id)
            total = f"/{task.total:g}" if task.total is not None else ""
            elapsed = int(time.monotonic() - self._started)
            self.console.print(f"{task.description}: {task.completed:g}{total} ({elapsed // 60}:{elapsed % 60:02d})",
                               markup=False, highlight=False)


def progress_bars() -> Progress:
    return LoggedProgress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                          console=console, transient=False, disable=not console.is_terminal)
