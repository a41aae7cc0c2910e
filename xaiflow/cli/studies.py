"""``xaiflow features`` and ``xaiflow study ...``: feature extraction and the studies on features."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable, Optional

import typer

from xaiflow.cli.common import (OUT_HELP, RichProgress, WorkspaceOption, cluster_option, config_argument, emit,
                                json_mode, model_option, out, pm, progress_bars, reporting_errors, rows_table)

study_app = typer.Typer(help="Studies on extracted features: generalization across domains, feature reduction.",
                        no_args_is_help=True)


def _study(config: Path, section: str, run: Callable[..., Any], out_dir: Optional[Path], cluster: str,
           stage: str) -> Any:
    """Load CONFIG (it must have ``section``) and run one study on the cluster, with progress bars."""
    from xaiflow.config import load_config
    from xaiflow.runtime import dask_client

    cfg = load_config(config)
    cfg.section(section)
    with dask_client(cluster) as client, progress_bars() as bars:
        return run(cfg, out_dir=out_dir, client=client, progress=RichProgress(bars, stage))


def _record(result: Any) -> dict[str, Any]:
    """A study's result for the ``--json`` document: its group, headline table, files and notes."""
    return {"group": result.group, "summary": result.headline.to_dict("records"),
            "files": [str(p) for p in result.files], "notes": list(result.notes)}


def _print_outputs(result: Any) -> None:
    for note in result.notes:
        out.print(f"[yellow]note:[/] {note}")
    out.print(f"[green]{result.group}[/] written; files: " + ", ".join(str(p) for p in result.files))


def _print_classification(result: Any) -> None:
    rows = [{**r, "balanced accuracy": pm(r["balanced_accuracy_mean"], r["balanced_accuracy_std"])}
            for r in result.headline.to_dict("records")]
    ds = result.ds
    out.print(rows_table(rows, ["feature_set", "classifier", "n_features", "balanced accuracy",
                                "pooled_balanced_accuracy", "chance"],
                         title=f"{ds.attrs['dataset']}: balanced accuracy, mean ± std over {ds.attrs['n_splits']} "
                               f"specimen-grouped folds ({ds.attrs['n_samples']} images, "
                               f"{ds.attrs['n_specimens']} specimens)"))
    _print_outputs(result)


def features(
    config: Path = config_argument("features"),
    workspace: str = WorkspaceOption,
    overwrite: bool = typer.Option(False, "--overwrite", help="replace feature groups written with other parameters"),
    model: Optional[str] = model_option(),
    cv: bool = typer.Option(True, "--cv/--no-cv", help="then classify with specimen-grouped CV and print the table"),
    out_dir: Optional[Path] = typer.Option(None, "--out", help=OUT_HELP),
    cluster: str = cluster_option(),
) -> None:
    """Extract the features of CONFIG (one Dask task per image chunk), then their grouped-CV accuracy per dataset.

    cnn extractors use the model of the features section (e.g. `model: {train: this}`), or --model."""
    from xaiflow.config import load_config
    from xaiflow.features.extract import extract_all
    from xaiflow.runtime import dask_client
    from xaiflow.studies.run import classification_study

    with reporting_errors():
        cfg = load_config(config)
        fcfg = cfg.section("features")
        if model is not None:
            fcfg = fcfg.model_copy(update={"model": model})
        with dask_client(cluster) as client, progress_bars() as bars:
            results = extract_all(workspace, fcfg, run=cfg, overwrite=overwrite or None, client=client,
                                  progress=RichProgress(bars, "extract"))
            rows = [{**r.__dict__, "images/s": r.n_samples / r.seconds if r.status != "up-to-date" else None}
                    for r in results]
            out.print(rows_table(rows, ["group", "status", "n_samples", "n_features", "seconds", "images/s"],
                                 title="feature groups", key="feature_groups"))
            studies = [classification_study(workspace, fcfg, cfg.studies, dataset=d, out_dir=out_dir, client=client,
                                            progress=RichProgress(bars, f"classify {d}"))
                       for d in (fcfg.datasets if cv else [])]
        emit(classification=[_record(r) for r in studies])
        for result in studies if not json_mode() else []:
            _print_classification(result)


@study_app.command("generalization")
def generalization(
    config: Path = config_argument("studies.generalization"),
    workspace: str = WorkspaceOption,
    out_dir: Optional[Path] = typer.Option(None, "--out", help=OUT_HELP),
    cluster: str = cluster_option(),
) -> None:
    """Train on each domain, test on every domain: the matrix of balanced accuracies per model."""
    from xaiflow.studies.run import generalization_study

    with reporting_errors():
        result = _study(config, "studies.generalization",
                        lambda cfg, **kw: generalization_study(workspace, cfg.studies, **kw),
                        out_dir, cluster, "domains")
        if json_mode():
            emit(**_record(result))
            return
        ds = result.ds
        domains = [str(d) for d in ds.test_domain.values]
        for m in ds.model.values:
            cell = {(a, b): pm(float(ds["mean"].sel(model=m, train_domain=a, test_domain=b)),
                               float(ds["std"].sel(model=m, train_domain=a, test_domain=b)))
                    for a in domains for b in domains}
            rows = [{"train \\ test": a, **{b: ("*" if a == b else "") + cell[a, b] for b in domains}} for a in domains]
            out.print(rows_table(rows, ["train \\ test", *domains], title=f"{m} (* in-domain grouped CV)"))
        sizes = ", ".join(f"{d}: {int(n)} images / {int(s)} specimens" for d, n, s in
                          zip(domains, ds.domain_samples.values, ds.domain_specimens.values))
        out.print(rows_table(result.headline.to_dict("records"), ["model", "in_domain", "cross_domain", "gap"],
                             title=f"balanced accuracy over {ds.attrs['n_splits']} specimen-grouped folds; classes "
                                   f"{ds.attrs['classes']}; {sizes}"))
        _print_outputs(result)


@study_app.command("reduction")
def reduction(
    config: Path = config_argument("studies.reduction"),
    workspace: str = WorkspaceOption,
    out_dir: Optional[Path] = typer.Option(None, "--out", help=OUT_HELP),
    cluster: str = cluster_option(),
) -> None:
    """Accuracy against the number of features kept (PCA, RF importance, mutual information) and k95."""
    from xaiflow.studies.run import reduction_study

    with reporting_errors():
        result = _study(config, "studies.reduction",
                        lambda cfg, **kw: reduction_study(workspace, cfg.features, cfg.studies, **kw),
                        out_dir, cluster, "reduction")
        if json_mode():
            emit(**_record(result))
            return
        ds = result.ds
        k_col = f"k{round(100 * ds.attrs['target'])}"
        rows = [{**r, "all features": pm(r["full_mean"], r["full_std"]),
                 f"accuracy at {k_col}": "not reached" if r["mean_at_k"] is None else pm(r["mean_at_k"],
                                                                                          r["std_at_k"])}
                for r in result.headline.to_dict("records")]
        out.print(rows_table(rows, ["feature_set", "reduction", "n_features", "all features", k_col,
                                    f"accuracy at {k_col}", "top_families"],
                             title=f"{ds.attrs['dataset']}: smallest k reaching {ds.attrs['target']:.0%} of the "
                                   f"all-feature balanced accuracy ({ds.attrs['classifier']}, "
                                   f"{ds.attrs['n_splits']} specimen-grouped folds)"))
        _print_outputs(result)
