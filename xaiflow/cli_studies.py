"""CLI commands for features and studies: ``xaiflow features`` and ``xaiflow study ...``.

Registered on the main app by :func:`register` (called at the end of :mod:`xaiflow.cli`).
Each command is a thin wrapper over :mod:`xaiflow.features.extract` and
:mod:`xaiflow.studies.run` and prints the headline table; the helpers of :mod:`xaiflow.cli`
are imported inside the commands (that module imports this one).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Optional

import typer

WORKSPACE_HELP = "workspace (a Zarr v3 store); env XAIFLOW_WORKSPACE"
CLUSTER_HELP = ("cluster profile: threads, local, address, slurm, kubernetes, gpu-local (configs/cluster/), "
                "a scheduler address tcp://host:port, or a profile YAML")
OUT_HELP = "folder for CSV tables and figures (default: <workspace parent>/<workspace stem>.figures/)"


def _errors() -> tuple[type[BaseException], ...]:
    from xaiflow.config import ConfigError
    from xaiflow.features.base import FeatureError
    from xaiflow.models.base import UnknownLayerError
    from xaiflow.registry import UnknownEntryError
    from xaiflow.runtime import TaskError
    from xaiflow.studies.data import StudyError

    return (ConfigError, FeatureError, StudyError, TaskError, UnknownLayerError, UnknownEntryError, ImportError,
            ValueError)


def _load(config: Path, section: str) -> Any:
    from xaiflow.config import ConfigError, load_config

    cfg = load_config(config)
    if section == "features" and cfg.features is None:
        raise ConfigError(f"{config}: no `features:` section (dataset and extractors to run)")
    if section != "features" and (cfg.studies is None or getattr(cfg.studies, section) is None):
        raise ConfigError(f"{config}: no `studies.{section}:` section")
    return cfg


def _pm(mean: float, std: float) -> str:
    return "" if mean != mean else f"{mean:.3f} ± {std:.3f}"


def _print_outputs(result: Any) -> None:
    from xaiflow.cli import out

    for note in result.notes:
        out.print(f"[yellow]note:[/] {note}")
    out.print(f"[green]{result.group}[/] written; files: " + ", ".join(str(p) for p in result.files))


def _print_classification(result: Any) -> None:
    from xaiflow.cli import _rows_table, out

    rows = [{**r, "balanced accuracy": _pm(r["balanced_accuracy_mean"], r["balanced_accuracy_std"])}
            for r in result.headline.to_dict("records")]
    ds = result.ds
    out.print(_rows_table(rows, ["feature_set", "classifier", "n_features", "balanced accuracy",
                                 "pooled_balanced_accuracy", "chance"],
                          title=f"{ds.attrs['dataset']}: balanced accuracy, mean ± std over {ds.attrs['n_splits']} "
                                f"specimen-grouped folds ({ds.attrs['n_samples']} images, "
                                f"{ds.attrs['n_specimens']} specimens)"))
    _print_outputs(result)


def features(
    config: Path = typer.Argument(..., help="run config YAML with a `features:` section"),
    workspace: Path = typer.Option(..., "--workspace", "-w", envvar="XAIFLOW_WORKSPACE", help=WORKSPACE_HELP),
    overwrite: bool = typer.Option(False, "--overwrite", help="replace feature groups written with other parameters"),
    model: Optional[str] = typer.Option(None, "--model", "-m", help="model id for cnn extractors (overrides "
                                                                    "features.model)"),
    cv: bool = typer.Option(True, "--cv/--no-cv", help="then classify with specimen-grouped CV and print the table"),
    out_dir: Optional[Path] = typer.Option(None, "--out", help=OUT_HELP),
    cluster: str = typer.Option("local", "--cluster", help=CLUSTER_HELP),
) -> None:
    """Extract the features of CONFIG (one Dask task per image chunk), then their grouped-CV accuracy per dataset."""
    from xaiflow.cli import _fail, _progress, _RichProgress, _rows_table, out
    from xaiflow.features.extract import extract_all
    from xaiflow.runtime import dask_client
    from xaiflow.studies.run import classification_study

    try:
        cfg = _load(config, "features")
        fcfg = cfg.features if model is None else cfg.features.model_copy(update={"model": model})
        with dask_client(cluster) as client, _progress() as bars:
            results = extract_all(workspace, fcfg, overwrite=overwrite or None, client=client,
                                  progress=_RichProgress(bars, "extract"))
            rows = [{**r.__dict__, "images/s": r.n_samples / r.seconds if r.status != "up-to-date" else None}
                    for r in results]
            out.print(_rows_table(rows, ["group", "status", "n_samples", "n_features", "seconds", "images/s"],
                                  title="feature groups"))
            studies = [classification_study(workspace, fcfg, cfg.studies, dataset=d, out_dir=out_dir, client=client,
                                             progress=_RichProgress(bars, f"classify {d}"))
                       for d in (fcfg.datasets if cv else [])]
    except _errors() as e:
        _fail(e)
    for result in studies:
        _print_classification(result)


def generalization(
    config: Path = typer.Argument(..., help="run config YAML with a `studies.generalization:` section"),
    workspace: Path = typer.Option(..., "--workspace", "-w", envvar="XAIFLOW_WORKSPACE", help=WORKSPACE_HELP),
    out_dir: Optional[Path] = typer.Option(None, "--out", help=OUT_HELP),
    cluster: str = typer.Option("local", "--cluster", help=CLUSTER_HELP),
) -> None:
    """Train on each domain, test on every domain: the matrix of balanced accuracies per model."""
    from xaiflow.cli import _fail, _progress, _RichProgress, _rows_table, out
    from xaiflow.runtime import dask_client
    from xaiflow.studies.run import generalization_study

    try:
        cfg = _load(config, "generalization")
        with dask_client(cluster) as client, _progress() as bars:
            result = generalization_study(workspace, cfg.studies, out_dir=out_dir, client=client,
                                          progress=_RichProgress(bars, "domains"))
    except _errors() as e:
        _fail(e)
    ds = result.ds
    domains = [str(d) for d in ds.test_domain.values]
    for m in ds.model.values:
        rows = [{"train \\ test": a, **{b: ("*" if a == b else "") + _pm(float(ds["mean"].sel(model=m, train_domain=a,
                                                                                                test_domain=b)),
                                                                        float(ds["std"].sel(model=m, train_domain=a,
                                                                                            test_domain=b)))
                                          for b in domains}} for a in domains]
        out.print(_rows_table(rows, ["train \\ test", *domains], title=f"{m} (* in-domain grouped CV)"))
    sizes = ", ".join(f"{d}: {int(n)} images / {int(s)} specimens" for d, n, s in
                      zip(domains, ds.domain_samples.values, ds.domain_specimens.values))
    out.print(_rows_table(result.headline.to_dict("records"), ["model", "in_domain", "cross_domain", "gap"],
                          title=f"balanced accuracy over {ds.attrs['n_splits']} specimen-grouped folds; classes "
                                f"{ds.attrs['classes']}; {sizes}"))
    _print_outputs(result)


def reduction(
    config: Path = typer.Argument(..., help="run config YAML with a `studies.reduction:` section"),
    workspace: Path = typer.Option(..., "--workspace", "-w", envvar="XAIFLOW_WORKSPACE", help=WORKSPACE_HELP),
    out_dir: Optional[Path] = typer.Option(None, "--out", help=OUT_HELP),
    cluster: str = typer.Option("local", "--cluster", help=CLUSTER_HELP),
) -> None:
    """Accuracy against the number of features kept (PCA, RF importance, mutual information) and k95."""
    from xaiflow.cli import _fail, _progress, _RichProgress, _rows_table, out
    from xaiflow.runtime import dask_client
    from xaiflow.studies.run import reduction_study

    try:
        cfg = _load(config, "reduction")
        with dask_client(cluster) as client, _progress() as bars:
            result = reduction_study(workspace, cfg.features, cfg.studies, out_dir=out_dir, client=client,
                                     progress=_RichProgress(bars, "reduction"))
    except _errors() as e:
        _fail(e)
    ds = result.ds
    k_col = f"k{round(100 * ds.attrs['target'])}"
    rows = [{**r, "all features": _pm(r["full_mean"], r["full_std"]),
             f"accuracy at {k_col}": "not reached" if r["mean_at_k"] is None else _pm(r["mean_at_k"], r["std_at_k"])}
            for r in result.headline.to_dict("records")]
    out.print(_rows_table(rows, ["feature_set", "reduction", "n_features", "all features", k_col,
                                 f"accuracy at {k_col}", "top_families"],
                          title=f"{ds.attrs['dataset']}: smallest k reaching {ds.attrs['target']:.0%} of the "
                                f"all-feature balanced accuracy ({ds.attrs['classifier']}, "
                                f"{ds.attrs['n_splits']} specimen-grouped folds)"))
    _print_outputs(result)


def register(app: typer.Typer) -> None:
    """Add ``features`` and the ``study`` sub-commands to the ``xaiflow`` app."""
    app.command("features")(features)
    study = typer.Typer(help="Studies on extracted features: generalization across domains, feature reduction.",
                        no_args_is_help=True)
    study.command("generalization")(generalization)
    study.command("reduction")(reduction)
    app.add_typer(study, name="study")
