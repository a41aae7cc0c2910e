"""The ``xaiflow`` command line (typer). Each command is a thin wrapper over a library call."""

from __future__ import annotations

import logging
import sys
import time
from pathlib import Path
from typing import Optional

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table
from rich.tree import Tree

import xaiflow
from xaiflow.cli_studies import CLUSTER_HELP

app = typer.Typer(help="xaiflow: what did the network learn from these micrographs?", no_args_is_help=True,
                  pretty_exceptions_enable=False)
console = Console(stderr=True, width=None if sys.stderr.isatty() else 200)
# tables stay readable when piped or logged (rich would wrap at 80 columns)
out = Console(width=None if sys.stdout.isatty() else 200)

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


class _LoggedProgress(Progress):
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


def _progress() -> Progress:
    return _LoggedProgress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                           console=console, transient=False, disable=not console.is_terminal)


def _fail(err: Exception) -> None:
    console.print(f"[bold red]error:[/] {err}")
    raise typer.Exit(code=2)


@app.command()
def ingest(
    config: Path = typer.Argument(..., help="run config YAML (see configs/)"),
    workspace: Path = typer.Option(..., "--workspace", "-w", envvar="XAIFLOW_WORKSPACE", help=WORKSPACE_HELP),
    overwrite: bool = typer.Option(False, "--overwrite", help="replace datasets ingested with another config"),
    data_dir: Optional[Path] = typer.Option(None, "--data-dir", help="override the data folder of file sources"),
    cluster: str = typer.Option("local", "--cluster", help=CLUSTER_HELP),
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


def _rows_table(rows: list[dict], columns: list[str], title: str | None = None) -> Table:
    table = Table(*columns, title=title, box=None)
    for r in rows:
        table.add_row(*[_fmt(r.get(c)) for c in columns])
    return table


def _fmt(v: object) -> str:
    if isinstance(v, float):
        return f"{v:.3f}"
    return "" if v is None else str(v)


@app.command()
def train(
    config: Path = typer.Argument(..., help="run config YAML with a `train:` section"),
    workspace: Path = typer.Option(..., "--workspace", "-w", envvar="XAIFLOW_WORKSPACE", help=WORKSPACE_HELP),
    folds: Optional[int] = typer.Option(None, "--folds", help="train k models on specimen-grouped folds (Dask tasks)"),
    seeds: Optional[str] = typer.Option(None, "--seeds", help="comma-separated seeds: one model each (Dask tasks)"),
    force: bool = typer.Option(False, "--force", help="retrain even if a checkpoint with this config exists"),
    cluster: str = typer.Option("local", "--cluster", help=CLUSTER_HELP + " (for several runs)"),
    predict: bool = typer.Option(True, "--predict/--no-predict", help="write predictions/<dataset>/<model>"),
) -> None:
    """Train the model of CONFIG (or several: --folds / --seeds), report test metrics, predict."""
    from xaiflow.config import ConfigError, load_config
    from xaiflow.models.checkpoint import CheckpointError
    from xaiflow.runtime import TaskError, dask_client
    from xaiflow.training import TrainingError, expand_runs, train_many, train_model

    try:
        cfg = load_config(config)
        if cfg.train is None:
            raise ConfigError(f"{config}: no `train:` section")
        runs = expand_runs(cfg.train, folds, [int(s) for s in seeds.split(",")] if seeds else None)
        if len(runs) == 1:
            with _progress() as bars:
                task = bars.add_task(f"train {cfg.train.arch}", total=cfg.train.epochs)
                rows = [train_model(workspace, runs[0], force=force, progress=lambda e, row: bars.update(
                    task, completed=e, description=f"train {cfg.train.arch} val bal.acc {row['val_balanced_accuracy']:.2f}"))]
        else:
            with dask_client(cluster) as client, _progress() as bars:
                rows = train_many(workspace, runs, force=force, client=client, progress=_RichProgress(bars, "models"))
        if predict:
            from xaiflow.predict import predict_dataset

            with dask_client("threads" if len(runs) == 1 else cluster) as client:
                for row in rows:
                    predict_dataset(workspace, row["model_id"], row["dataset"], client=client)
    except (ConfigError, TrainingError, CheckpointError, TaskError, ValueError) as e:
        _fail(e)
    out.print(_rows_table(rows, ["model_id", "fold", "seed", "reused", "best_epoch", "val_balanced_accuracy",
                                 "test_balanced_accuracy", "test_majority_balanced_accuracy"],
                          title="balanced accuracy on held-out specimens (majority-class baseline beside it)"))
    if len(rows) == 1:
        _print_class_report(Path(rows[0]["checkpoint"]))


def _print_class_report(directory: Path) -> None:
    from xaiflow.models.checkpoint import read_metrics

    metrics = read_metrics(directory)
    for split in ("test", "val"):
        if split in metrics:
            rep = metrics[split]
            classes = list(rep["per_class"])
            rows = [{"class": c, **v, **{f"pred:{p}": n for p, n in zip(classes, cm_row)}}
                    for (c, v), cm_row in zip(rep["per_class"].items(), rep["confusion"])]
            out.print(f"{split}: balanced accuracy {rep['balanced_accuracy']:.3f} "
                      f"(majority baseline {rep['majority_baseline']['balanced_accuracy']:.3f}); "
                      "per class, with the confusion matrix (rows: true class)")
            out.print(_rows_table(rows, ["class", "precision", "recall", "support", *[f"pred:{c}" for c in classes]]))
            break


@app.command()
def models(workspace: Path = typer.Argument(..., help="workspace path")) -> None:
    """Table of the workspace's trained models with their metrics."""
    from xaiflow.models.checkpoint import CheckpointError, read_metrics, verify_checkpoint
    from xaiflow.store import models_dir

    rows = []
    for d in sorted(p for p in models_dir(workspace).glob("*") if p.is_dir() and not p.name.startswith(".")) \
            if models_dir(workspace).is_dir() else []:
        try:
            manifest = verify_checkpoint(d)
        except CheckpointError as e:
            rows.append({"model_id": d.name, "status": f"INVALID: {e}"})
            continue
        m = read_metrics(d)
        rows.append({"model_id": d.name, "arch": manifest.arch, "status": "ok", "epochs": m.get("epochs_run"),
                     "val_bal_acc": m.get("val", {}).get("balanced_accuracy"),
                     "test_bal_acc": m.get("test", {}).get("balanced_accuracy"),
                     "majority": m.get("test", {}).get("majority_baseline", {}).get("balanced_accuracy"),
                     "img/s": m.get("train_images_per_second"), "sha256": manifest.weights_sha256[:12]})
    if not rows:
        _fail(ValueError(f"no trained models in {models_dir(workspace)}; run `xaiflow train`"))
    out.print(_rows_table(rows, ["model_id", "arch", "status", "epochs", "val_bal_acc", "test_bal_acc", "majority",
                                 "img/s", "sha256"]))


@app.command()
def predict(
    workspace: Path = typer.Argument(..., help="workspace path"),
    model: str = typer.Option(..., "--model", "-m", help="model id (see `xaiflow models`)"),
    dataset: str = typer.Option(..., "--dataset", "-d", help="dataset name"),
    device: str = typer.Option("cpu", "--device"),
    cluster: str = typer.Option("local", "--cluster", help=CLUSTER_HELP),
) -> None:
    """Write predictions/<dataset>/<model> (logits, probabilities, predicted class)."""
    from xaiflow.models.checkpoint import CheckpointError
    from xaiflow.predict import PredictionError, predict_dataset
    from xaiflow.runtime import TaskError, dask_client
    from xaiflow.store import open_group

    try:
        with dask_client(cluster) as client, _progress() as bars:
            group = predict_dataset(workspace, model, dataset, device=device, client=client,
                                    progress=_RichProgress(bars, dataset))
        ds = open_group(workspace, group)
    except (PredictionError, CheckpointError, TaskError, ValueError) as e:
        _fail(e)
    correct = (ds.predicted.values == ds.label_index.values)
    out.print(f"[green]{group}[/]: {ds.sizes['sample']} samples, accuracy {correct.mean():.3f} "
              f"(test split {correct[ds.split.values == 'test'].mean():.3f})")


@app.command()
def attribute(
    config: Path = typer.Argument(..., help="run config YAML with an `attribution:` section"),
    workspace: Path = typer.Option(..., "--workspace", "-w", envvar="XAIFLOW_WORKSPACE", help=WORKSPACE_HELP),
    methods: Optional[str] = typer.Option(None, "--methods", help="comma-separated method names (default: config)"),
    model: Optional[str] = typer.Option(None, "--model", "-m", help="model id (default: config)"),
    cluster: str = typer.Option("local", "--cluster", help=CLUSTER_HELP),
    overwrite: bool = typer.Option(False, "--overwrite", help="recompute maps stored with other parameters/model"),
) -> None:
    """Compute attribution maps chunk by chunk on Dask and store them beside the images."""
    from xaiflow.attribution.engine import AttributionError, run_attribution
    from xaiflow.config import ConfigError, MethodSpec, load_config
    from xaiflow.models.checkpoint import CheckpointError
    from xaiflow.runtime import TaskError, dask_client

    try:
        cfg = load_config(config)
        if cfg.attribution is None:
            raise ConfigError(f"{config}: no `attribution:` section")
        acfg = cfg.attribution
        if methods:
            acfg = acfg.model_copy(update={"methods": [MethodSpec(name=m.strip()) for m in methods.split(",")]})
        if model:
            acfg = acfg.model_copy(update={"model": model})
        with dask_client(cluster) as client, _progress() as bars:
            console.print(f"dask dashboard: {client.dashboard_link}")
            res = run_attribution(workspace, acfg, run=cfg, overwrite=overwrite, client=client,
                                  progress=_RichProgress(bars, f"{acfg.dataset} chunks"))
    except (ConfigError, AttributionError, CheckpointError, TaskError, ValueError) as e:
        _fail(e)
    out.print(f"[green]{res.group}[/]: {res.chunks_run} chunk(s) computed, {res.chunks_skipped} already complete")
    rows = [{"method": k, "maps": n, "non-finite": res.nonfinite.get(k, 0),
             "s/map (worker)": res.seconds[k] / max(n, 1)} for k, n in res.maps_computed.items()]
    if rows:
        out.print(_rows_table(rows, ["method", "maps", "non-finite", "s/map (worker)"]))


@app.command()
def show(
    workspace: Path = typer.Argument(..., help="workspace path"),
    dataset: str = typer.Option(..., "--dataset", "-d"),
    model: Optional[str] = typer.Option(None, "--model", "-m", help="model id (default: the only one with maps)"),
    samples: Optional[str] = typer.Option(None, "--samples", help="comma-separated sample ids (default: 4 computed ones)"),
    methods: Optional[str] = typer.Option(None, "--methods", help="comma-separated method keys (default: all stored)"),
    output: Path = typer.Option(Path("saliency.png"), "--out", "-o", help="PNG to write"),
) -> None:
    """Figure grid: each sample's image and every method's map over it, with labels."""
    import numpy as np

    from xaiflow.figures import saliency_grid
    from xaiflow.saliency import METHOD, SaliencyQueryError, open_saliency

    try:
        if model is None:
            from xaiflow.store import list_groups

            found = [g.split("/")[2] for g in list_groups(workspace) if g.startswith(f"saliency/{dataset}/")]
            if len(found) != 1:
                raise SaliencyQueryError(f"pass --model: maps of dataset {dataset!r} exist for {found or 'no model'}")
            model = found[0]
        ds = open_saliency(workspace, dataset, model, methods.split(",") if methods else None)
        if samples:
            ids = [s.strip() for s in samples.split(",")]
            unknown = sorted(set(ids) - set(ds.sample.values.tolist()))
            if unknown:
                raise SaliencyQueryError(f"unknown sample id(s) {unknown} in dataset {dataset!r}")
        else:
            done = ds.done.all(METHOD).values
            ids = [str(s) for s in ds.sample.values[np.flatnonzero(done)[:4]]]
            if not ids:
                raise SaliencyQueryError("no sample has maps for every method yet")
        path = saliency_grid(ds, ids, output)
    except (SaliencyQueryError, ValueError, KeyError) as e:
        _fail(e)
    out.print(f"wrote {path}")


@app.command()
def evaluate(
    workspace: Path = typer.Argument(..., help="workspace path"),
    dataset: str = typer.Option(..., "--dataset", "-d"),
    model: Optional[str] = typer.Option(None, "--model", "-m", help="model id (default: the only one with maps)"),
    metrics: str = typer.Option("deletion,insertion,sparseness,entropy", "--metrics",
                                help="comma-separated metric names (xaiflow.metrics.METRICS)"),
    methods: Optional[str] = typer.Option(None, "--methods", help="saliency keys (default: all stored)"),
    mask_class: Optional[str] = typer.Option(None, "--mask-class", help="mask class for localization metrics"),
    device: str = typer.Option("auto", "--device"),
    cluster: str = typer.Option("local", "--cluster", help=CLUSTER_HELP),
    overwrite: bool = typer.Option(False, "--overwrite"),
) -> None:
    """Score stored maps (faithfulness, randomization, localization, complexity) chunk by chunk."""
    from xaiflow.metrics.runner import MetricsError, run_metrics
    from xaiflow.runtime import TaskError, dask_client
    from xaiflow.saliency import SaliencyQueryError
    from xaiflow.store import open_group

    try:
        ds = _open_maps(workspace, dataset, model, methods)
        model = str(ds.attrs["model_id"])
        with dask_client(cluster) as client, _progress() as bars:
            res = run_metrics(workspace, dataset, model, [m.strip() for m in metrics.split(",")],
                              methods.split(",") if methods else None, mask_class, device=device,
                              overwrite=overwrite, client=client, progress=_RichProgress(bars, f"{dataset} chunks"))
        values = open_group(workspace, res.group)
    except (MetricsError, SaliencyQueryError, TaskError, ValueError) as e:
        _fail(e)
    out.print(f"[green]{res.group}[/]: {res.chunks_run} chunk(s) computed, {res.chunks_skipped} complete or without maps")
    v = values["value"].where(values["done"])
    mean, std = v.mean("sample").compute(), v.std("sample").compute()
    names = [str(n) for n in values["metric"].values]
    rows = [{"method": str(m), **{n: f"{float(mean.sel(xai_method=m, metric=n)):.3f} ± "
                                     f"{float(std.sel(xai_method=m, metric=n)):.3f}" for n in names}}
            for m in values["xai_method"].values]
    out.print(_rows_table(rows, ["method", *names], title="mean ± std over samples"))


query_app = typer.Typer(help="Aggregate queries over stored saliency (lazy, chunk by chunk).", no_args_is_help=True)
app.add_typer(query_app, name="query")


def _open_maps(workspace: Path, dataset: str, model: Optional[str], methods: Optional[str]):
    from xaiflow.saliency import SaliencyQueryError, open_saliency
    from xaiflow.store import list_groups

    if model is None:
        found = [g.split("/")[2] for g in list_groups(workspace) if g.startswith(f"saliency/{dataset}/")]
        if len(found) != 1:
            raise SaliencyQueryError(f"pass --model: maps of dataset {dataset!r} exist for {found or 'no model'}")
        model = found[0]
    return open_saliency(workspace, dataset, model, methods.split(",") if methods else None)


@query_app.command("group-maps")
def query_group_maps(
    workspace: Path = typer.Argument(..., help="workspace path"),
    dataset: str = typer.Option(..., "--dataset", "-d"),
    model: Optional[str] = typer.Option(None, "--model", "-m"),
    by: str = typer.Option("label", "--by", help="label, predicted, or any coordinate (detector, group, ...)"),
    bins: Optional[str] = typer.Option(None, "--bins", help="comma-separated edges for a numeric coordinate"),
    stat: str = typer.Option("mean", "--stat", help="mean or median"),
    split: Optional[str] = typer.Option(None, "--split", help="only samples of this split"),
    methods: Optional[str] = typer.Option(None, "--methods"),
    output: Path = typer.Option(Path("group-maps.png"), "--out", "-o"),
) -> None:
    """Mean/median normalized map per class, predicted class or metadata value/bin (figure + counts)."""
    from xaiflow.aggregate import QueryError, group_maps
    from xaiflow.figures import group_map_grid
    from xaiflow.saliency import SaliencyQueryError

    try:
        ds = _open_maps(workspace, dataset, model, methods)
        edges = [float(b) for b in bins.split(",")] if bins else None
        maps = group_maps(ds, by=by, stat=stat, bins=edges, split=split).compute()
        path = group_map_grid(maps, output, f"{ds.attrs.get('model_id')}: {stat} map by {by}")
    except (QueryError, SaliencyQueryError, ValueError) as e:
        _fail(e)
    dim = maps.dims[0]
    out.print(_rows_table([{dim: str(g), "samples": int(n)} for g, n in zip(maps[dim].values, maps.n_samples.values)],
                          [dim, "samples"]))
    out.print(f"wrote {path}")


@query_app.command("agreement")
def query_agreement(
    workspace: Path = typer.Argument(..., help="workspace path"),
    dataset: str = typer.Option(..., "--dataset", "-d"),
    model: Optional[str] = typer.Option(None, "--model", "-m"),
    top: float = typer.Option(0.1, "--top", help="fraction of pixels for the top-k overlap"),
    split: Optional[str] = typer.Option(None, "--split"),
    output: Path = typer.Option(Path("agreement.png"), "--out", "-o"),
) -> None:
    """Method x method agreement: Spearman rank correlation of |maps| and top-k pixel overlap."""
    from xaiflow.aggregate import QueryError, method_agreement
    from xaiflow.figures import matrix_figure
    from xaiflow.saliency import SaliencyQueryError

    try:
        agree = method_agreement(_open_maps(workspace, dataset, model, None), top_fraction=top, split=split).compute()
    except (QueryError, SaliencyQueryError, ValueError) as e:
        _fail(e)
    methods = [str(m) for m in agree["xai_method"].values]
    rows = [{"method": m, **{o: float(v) for o, v in zip(methods, agree.spearman.values[i])}} for i, m in enumerate(methods)]
    out.print(f"Spearman rank correlation of |maps|, mean over {agree.attrs['n_samples']} samples")
    out.print(_rows_table(rows, ["method", *methods]))
    path = matrix_figure(agree.spearman, output, f"method agreement (Spearman), n={agree.attrs['n_samples']}")
    out.print(f"wrote {path}")


@query_app.command("mask-mass")
def query_mask_mass(
    workspace: Path = typer.Argument(..., help="workspace path"),
    dataset: str = typer.Option(..., "--dataset", "-d"),
    model: Optional[str] = typer.Option(None, "--model", "-m"),
) -> None:
    """Share of relevance in each mask class (phase, structure, shortcut) against its area share."""
    from xaiflow.aggregate import QueryError, mask_mass
    from xaiflow.saliency import SaliencyQueryError
    from xaiflow.store import WorkspaceError, open_group

    try:
        ds = _open_maps(workspace, dataset, model, None)
        done = ds.done.all("xai_method").values
        ds = ds.isel(sample=done.nonzero()[0])
        masks = open_group(workspace, f"masks/{dataset}").isel(sample=done.nonzero()[0])
        res = mask_mass(ds, masks).mean("sample").compute()
    except (QueryError, SaliencyQueryError, WorkspaceError, ValueError) as e:
        _fail(e)
    rows = []
    for m in res.xai_method.values:
        for k in res.mask_class.values:
            mass, area = float(res.mass.sel(xai_method=m, mask_class=k)), float(res.area.sel(mask_class=k))
            rows.append({"method": str(m), "mask class": str(k), "relevance share": mass, "area share": area,
                         "ratio": mass / area if area else float("nan")})
    out.print(_rows_table(rows, ["method", "mask class", "relevance share", "area share", "ratio"]))


def _bin_edges(bins: Optional[str]) -> list[float] | None:
    return [float(b) for b in bins.split(",")] if bins else None


@app.command()
def shortcut(
    workspace: Path = typer.Option(..., "--workspace", "-w", envvar="XAIFLOW_WORKSPACE", help=WORKSPACE_HELP),
    model: str = typer.Option(..., "--model", "-m", help="model id (see `xaiflow models`)"),
    dataset: Optional[str] = typer.Option(None, "--dataset", "-d", help="default: the model's training dataset"),
    compare_model: Optional[str] = typer.Option(None, "--compare-model",
                                                help="a model trained on images resampled to one pixel size"),
    by: Optional[str] = typer.Option(None, "--by", help="metadata that should not matter (no masks; default source_um_per_px)"),
    bins: Optional[str] = typer.Option(None, "--bins", help="comma-separated edges (default: half decades)"),
    split: str = typer.Option("test", "--split", help="samples judged without masks"),
    as_json: bool = typer.Option(False, "--json", help="print the report as JSON"),
) -> None:
    """Shortcut verdict: is the model's evidence in the class-defining structures or elsewhere?"""
    from xaiflow.shortcut import ShortcutError, shortcut_report

    try:
        rep = shortcut_report(workspace, model, dataset, compare_model=compare_model, by=by, bins=_bin_edges(bins),
                              split=split)
    except (ShortcutError, ValueError) as e:
        _fail(e)
    if as_json:
        print(rep.to_json())
        return
    out.print(f"[bold]{rep.verdict}[/] ({rep.kind} evidence, {rep.n_samples} samples, accuracy {rep.accuracy:.3f})")
    for reason in rep.reasons:
        out.print(f"  - {reason}")


@app.command()
def report(
    workspace: Path = typer.Option(..., "--workspace", "-w", envvar="XAIFLOW_WORKSPACE", help=WORKSPACE_HELP),
    model: str = typer.Option(..., "--model", "-m", help="model id (see `xaiflow models`)"),
    dataset: Optional[str] = typer.Option(None, "--dataset", "-d", help="default: the model's training dataset"),
    output: Optional[Path] = typer.Option(None, "--out", "-o", help="folder (default: <workspace>.reports/<model>)"),
    compare_model: Optional[str] = typer.Option(None, "--compare-model",
                                                help="a model trained on images resampled to one pixel size"),
    methods: Optional[str] = typer.Option(None, "--methods", help="saliency keys (default: all stored)"),
    by: Optional[str] = typer.Option(None, "--by", help="metadata binned in the shortcut section (default source_um_per_px)"),
    bins: Optional[str] = typer.Option(None, "--bins", help="comma-separated edges (default: half decades)"),
) -> None:
    """Self-contained HTML report: overlays, class means, metrics, agreement, mask mass, shortcut verdict."""
    from xaiflow.report import ReportError, write_report

    try:
        path = write_report(workspace, model, dataset, output, compare_model=compare_model,
                            methods=methods.split(",") if methods else None, by=by, bins=_bin_edges(bins))
    except (ReportError, ValueError) as e:
        _fail(e)
    out.print(f"wrote {path}")


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


from xaiflow.cli_studies import register as _register_studies  # noqa: E402

_register_studies(app)


if __name__ == "__main__":  # pragma: no cover
    app()
