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

Output: results go to stdout through :data:`out` (tables never cut: :class:`FullWidthTable`), everything
else (progress, warnings, logs, errors) to stderr. The global flags (:data:`GLOBAL_FLAGS`) work anywhere
on the line; with ``--json`` a command prints ONE JSON document on stdout instead (:class:`JsonDocument`):
its tables under stable keys (``rows_table(..., key=...)``), named values (:func:`emit`), the files it
wrote (``files``), its warnings (``warnings``) and any other result line (``messages``); an error is
``{"error": "..."}`` with the same exit status.
"""

from __future__ import annotations

import io
import json
import math
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager, redirect_stdout
from typing import Any, Optional

import typer
from rich.console import Console
from rich.errors import MarkupError
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table
from rich.text import Text
from typer.core import TyperGroup

from xaiflow.errors import XaiflowError

console = Console(stderr=True, width=None if sys.stderr.isatty() else 200)


def jsonable(value: Any) -> Any:
    """``value`` as plain JSON types: numpy scalars and arrays as numbers and lists, NaN and infinity as
    null, paths and anything else as their text."""
    if isinstance(value, dict):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple, set)):
        return [jsonable(v) for v in value]
    if hasattr(value, "tolist") and not isinstance(value, (str, bytes)):  # numpy scalars and arrays
        return jsonable(value.tolist())
    if isinstance(value, bool) or value is None or isinstance(value, (int, str)):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    return str(value)


class JsonDocument:
    """What a command prints with ``--json``: one JSON object on stdout when the command ends.

    Keys: those a command sets (:func:`emit`, ``rows_table(..., key=...)``: a table is a list of
    row objects with its columns as keys), ``files`` (:func:`wrote`), ``warnings`` (:func:`warn`) and
    ``messages`` (any other line printed to :data:`out`, as plain text); ``{"error": "..."}`` alone
    when the command fails. While the command runs, ``sys.stdout`` goes to stderr, so nothing else
    (a library's print) can break the document."""

    def __init__(self) -> None:
        self.reset(False)

    def reset(self, active: bool) -> None:
        self.active, self.fields, self.written, self.stream = active, {}, False, None

    def set(self, **fields: Any) -> None:
        self.fields.update(fields)

    def append(self, key: str, value: Any) -> None:
        self.fields.setdefault(key, []).append(value)

    def error(self, message: str) -> None:
        self.fields = {"error": message}

    def write(self) -> None:
        """Print the document once (to the stdout of the command's start)."""
        if self.active and not self.written:
            self.written = True
            stream = self.stream or sys.stdout
            stream.write(json.dumps(jsonable(self.fields), indent=2, allow_nan=False) + "\n")
            stream.flush()


#: the document of the running command (inactive without ``--json``)
DOCUMENT = JsonDocument()


def json_mode() -> bool:
    """True when the running command was given ``--json``."""
    return DOCUMENT.active


def emit(**fields: Any) -> None:
    """Named results of the command for its ``--json`` document (nothing in text mode)."""
    if DOCUMENT.active:
        DOCUMENT.set(**fields)


def say(text: Any, *, markup: bool = True, **fields: Any) -> None:
    """A result line for people (text mode) whose content a script gets as ``fields`` (``--json``)."""
    if DOCUMENT.active:
        DOCUMENT.set(**fields)
    else:
        out.print(text, markup=markup, highlight=False if not markup else None)


def publish() -> None:
    """Print the ``--json`` document now, for a command that then runs until it is stopped (a server)."""
    DOCUMENT.write()


def _plain(obj: Any, markup: bool) -> str:
    """A printed object as plain text (markup removed, renderables rendered without styles)."""
    if isinstance(obj, str):
        try:
            return Text.from_markup(obj).plain if markup else obj
        except MarkupError:  # text that only looks like markup ("[/tmp]")
            return obj
    if isinstance(obj, Text):
        return obj.plain
    buffer = Console(file=io.StringIO(), width=200, color_system=None)
    buffer.print(obj)
    return buffer.file.getvalue().rstrip()


class ResultConsole(Console):
    """The results console: lines are not cropped at the terminal's width (the terminal wraps them),
    so a table's ids stay whole (:class:`FullWidthTable`). With ``--json`` it prints nothing: what
    it is given goes into the command's :data:`DOCUMENT`."""

    def print(self, *objects: Any, crop: bool = False, **kwargs: Any) -> None:
        if not DOCUMENT.active:
            super().print(*objects, crop=crop, **kwargs)
            return
        markup = kwargs.get("markup") is not False
        for obj in objects:
            if isinstance(obj, FullWidthTable):
                obj.record(DOCUMENT)
            else:
                DOCUMENT.append("messages", _plain(obj, markup))


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


#: the usage errors of typer's own click (``typer.BadParameter``'s family) and its exits (``ctx.exit()`` too)
_USAGE_ERROR = next(c for c in typer.BadParameter.__mro__ if c.__name__ == "ClickException")
_EXITS = (typer.Exit, typer.Abort)

#: the app's own flags, accepted anywhere on the command line
GLOBAL_FLAGS = ("-v", "--verbose", "--json")


class GlobalOptionsGroup(TyperGroup):
    """The app's command group: its flags (:data:`GLOBAL_FLAGS`) work anywhere on the line, so
    ``xaiflow ingest cfg.yaml -w ws.zarr -v`` is ``xaiflow -v ingest cfg.yaml -w ws.zarr`` (click
    reads a group's options only before the subcommand's name). Nothing after ``--`` is moved.

    With ``--json`` it also frames the command's :data:`DOCUMENT`: started here, printed when the
    command ends (its error instead when it fails, also a usage error), stdout kept for it alone."""

    def parse_args(self, ctx: Any, args: list[str]) -> list[str]:
        end = args.index("--") if "--" in args else len(args)
        head, tail = args[:end], args[end:]
        flags = [a for a in head if a in GLOBAL_FLAGS]
        DOCUMENT.reset("--json" in flags)
        DOCUMENT.stream = sys.stdout
        try:
            with self._document():  # a usage error of the app itself; --version
                return super().parse_args(ctx, flags + [a for a in head if a not in GLOBAL_FLAGS] + tail)
        except BaseException:
            DOCUMENT.reset(False)
            raise

    def invoke(self, ctx: Any) -> Any:
        if not DOCUMENT.active:
            return super().invoke(ctx)
        try:
            with self._document(), redirect_stdout(sys.stderr):
                result = super().invoke(ctx)
            DOCUMENT.write()
            return result
        finally:
            DOCUMENT.reset(False)  # the next command in this process (a test, a notebook) starts without it

    @contextmanager
    def _document(self) -> Iterator[None]:
        """With ``--json``: the document written when the block leaves the command (an exit, an error)."""
        if not DOCUMENT.active:
            yield
            return
        try:
            yield
        except BaseException as e:  # an exit (its document: results, or the error reporting_errors set) or an error
            if isinstance(e, KeyboardInterrupt):
                DOCUMENT.error("interrupted")
            elif isinstance(e, _USAGE_ERROR):  # typer also prints it with the usage to stderr
                DOCUMENT.error(e.format_message())
            elif not isinstance(e, _EXITS):
                DOCUMENT.error(f"unexpected {type(e).__name__}: {e}")  # a bug: the traceback follows on stderr
            DOCUMENT.write()
            raise


def config_argument(section: str | None = None) -> Any:
    """The ``CONFIG`` argument of a config-driven command (``section``: the section it needs)."""
    what = f" with a `{section}:` section" if section else ""
    return typer.Argument(..., help=f"run config YAML{what} (see configs/)")


def model_option() -> Any:
    return typer.Option(None, "--model", "-m", help=MODEL_HELP)


def dataset_option() -> Any:
    return typer.Option(None, "--dataset", "-d", help=DATASET_HELP)


def _known_cluster(value: str) -> str:
    """``--cluster`` checked while the line is parsed, before a command does any work: an unknown or invalid
    profile, or one that cannot start here (no sbatch, no GPU, a missing extra), is a usage error."""
    from xaiflow.clusters import ClusterProfileError, check_startable, cluster_spec, load_cluster_profile

    try:
        spec = cluster_spec(load_cluster_profile(value))
        if not spec.address:
            check_startable(spec)
    except ClusterProfileError as e:
        raise typer.BadParameter(str(e)) from None
    return value


def cluster_option(extra: str = "") -> Any:
    return typer.Option("local", "--cluster", help=CLUSTER_HELP + extra, callback=_known_cluster)


def split_list(value: Optional[str]) -> list[str] | None:
    """A comma-separated option as a list (None when not given)."""
    return [v.strip() for v in value.split(",") if v.strip()] if value else None


def int_list(value: Optional[str], option: str) -> list[int] | None:
    """A comma-separated option of integers (e.g. ``--seeds``); a bad one is a clear error."""
    try:
        return [int(v) for v in split_list(value) or []] or None
    except ValueError:
        raise XaiflowError(f"{option}: expected comma-separated integers, got {value!r}") from None


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
        DOCUMENT.error(str(e))
        raise typer.Exit(code=2) from None
    except KeyboardInterrupt:
        console.print("[yellow]interrupted[/]: finished chunks are kept; run the command again to resume")
        DOCUMENT.error("interrupted: finished chunks are kept; run the command again to resume")
        raise typer.Exit(code=130) from None


def warn(message: str) -> None:
    """A warning: one line on stderr, and in the ``--json`` document's ``warnings``."""
    console.print("[yellow]warning:[/]", Text(message), highlight=False)
    if DOCUMENT.active:
        DOCUMENT.append("warnings", message)


def wrote(path: Any) -> None:
    """Say that the command wrote ``path`` (``files`` in the ``--json`` document)."""
    if DOCUMENT.active:
        DOCUMENT.append("files", str(path))
    else:
        out.print(f"wrote {path}", markup=False, highlight=False)


class FullWidthTable:
    """A rich table rendered at its natural width even on a narrower terminal (the terminal wraps the
    long lines): rich would otherwise cut cells to ``small_...`` or drop whole columns, and ids
    printed by one command are what the next command takes. With ``--json`` its ``rows`` (raw values,
    not the printed text) go into the document under ``key`` (or into ``tables`` with the title)."""

    def __init__(self, table: Table, rows: list[dict] | None = None, key: str | None = None) -> None:
        self.table, self.rows, self.key = table, rows or [], key

    def record(self, document: JsonDocument) -> None:
        if self.key:
            document.set(**{self.key: self.rows})
        else:
            title = self.table.title if isinstance(self.table.title, str) else None
            document.append("tables", {"title": title, "rows": self.rows})

    def __rich_console__(self, console: Console, options: Any) -> Any:
        natural = console.measure(self.table, options=options.update(max_width=10_000)).maximum
        yield from console.render(self.table, options.update(width=max(options.max_width, natural),
                                                              max_width=max(options.max_width, natural)))


def rows_table(rows: list[dict], columns: list[str], title: str | None = None, *, key: str | None = None,
               data: list[dict] | None = None) -> FullWidthTable:
    """A borderless table of ``rows`` (dicts) with ``columns``, never shortened (:class:`FullWidthTable`).
    ``key``: the table's name in the ``--json`` document, whose rows are ``data`` (raw numbers where the
    printed rows hold text like ``0.5 ± 0.1``; default: ``rows`` restricted to ``columns``)."""
    table = Table(*columns, title=title, box=None)
    for r in rows:
        table.add_row(*[fmt(r.get(c)) for c in columns])
    return FullWidthTable(table, data if data is not None else [{c: r.get(c) for c in columns} for r in rows], key)


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
        if self.disable and "completed" in kwargs and not DOCUMENT.active:  # --json: no progress at all
            task = next(t for t in self.tasks if t.id == task_id)
            total = f"/{task.total:g}" if task.total is not None else ""
            elapsed = int(time.monotonic() - self._started)
            self.console.print(f"{task.description}: {task.completed:g}{total} ({elapsed // 60}:{elapsed % 60:02d})",
                               markup=False, highlight=False)


def progress_bars() -> Progress:
    return LoggedProgress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                          console=console, transient=False, disable=DOCUMENT.active or not console.is_terminal)
