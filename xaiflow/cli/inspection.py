"""``xaiflow uncertainty``, ``xaiflow adversarial`` and ``xaiflow concepts``: how sure the model is (MC dropout or an
ensemble), whether it is calibrated, whether the Fisher information exposes adversarial inputs, and which concepts
drive each class (TCAV)."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from xaiflow.cli.common import (OUT_HELP, RichProgress, WorkspaceOption, cluster_option, dataset_option, fmt,
                                out, progress_bars, reporting_errors, rows_table, say, split_list, wrote)

MODELS_HELP = ("model id(s) or unique prefixes, comma-separated: one model gives MC dropout, several an ensemble "
               "(e.g. trained with `xaiflow train --seeds 0,1,2`); default: the only model")


def uncertainty(
    workspace: str = WorkspaceOption,
    models: Optional[str] = typer.Option(None, "--model", "-m", help=MODELS_HELP),
    dataset: Optional[str] = dataset_option(),
    passes: Optional[int] = typer.Option(None, "--passes", help="MC dropout passes per model (default: 20 for one "
                                                                "model, 1 per ensemble member)"),
    seed: int = typer.Option(0, "--seed", help="seed of the dropout masks"),
    split: str = typer.Option("test", "--split", help="samples the tables and figures summarize (all: every sample)"),
    bins: int = typer.Option(10, "--bins", help="confidence bins of the calibration error"),
    device: str = typer.Option("cpu", "--device", help="cpu, cuda, cuda:N or auto"),
    overwrite: bool = typer.Option(False, "--overwrite", help="replace draws stored with other settings"),
    cluster: str = cluster_option(),
    output: Optional[Path] = typer.Option(None, "--out", "-o", help=OUT_HELP),
) -> None:
    """Predictive entropy, mutual information and calibration (ECE, reliability diagram) per sample and class."""
    from xaiflow import uncertainty as unc
    from xaiflow.models.catalog import ModelCatalog
    from xaiflow.runtime import dask_client
    from xaiflow.studies.report import default_out_dir

    with reporting_errors():
        catalog = ModelCatalog(workspace)
        refs = split_list(models)
        entries = [catalog.get(r) for r in refs] if refs else [catalog.resolve(None, dataset=dataset)]
        dataset = dataset or entries[0].dataset
        n_passes = passes if passes is not None else (20 if len(entries) == 1 else 1)
        with dask_client(cluster) as client, progress_bars() as bars:
            group = unc.estimate_uncertainty(workspace, [e.model_id for e in entries], dataset, passes=n_passes,
                                             seed=seed, device=device, overwrite=overwrite, client=client,
                                             progress=RichProgress(bars, f"{dataset} chunks"))
        ds = unc.open_uncertainty(workspace, group, None if split == "all" else split)
        cal = unc.calibration(ds, bins)
        kind = "MC dropout" if len(entries) == 1 else f"ensemble of {len(entries)}"
        where = "all samples" if split == "all" else f"split {split!r}"
        say(f"[green]{group}[/] ({kind}, {n_passes} pass(es) per model); {where}: accuracy {cal['accuracy']:.3f}, "
            f"mean confidence {cal['mean_confidence']:.3f}, expected calibration error {cal['ece']:.3f}",
            group=group, models=[e.model_id for e in entries], passes=n_passes, split=split,
            calibration={k: cal[k] for k in ("accuracy", "mean_confidence", "ece")})
        out.print(rows_table(unc.per_class(ds), ["class", "samples", "accuracy", "entropy", "expected_entropy",
                                                 "mutual_information", "entropy_correct", "entropy_wrong"],
                             title="mean per true class, in nats (entropy = expected entropy + mutual information)",
                             key="per_class"))
        folder = output or default_out_dir(workspace)
        key = group.replace("/", "_")
        wrote(unc.reliability_figure(cal, folder / f"{key}_reliability.png", f"{group} ({where})"))
        _relation(workspace, dataset, entries, ds, folder / f"{key}_disagreement.png")


def _relation(workspace: str, dataset: str, entries: list, ds, path: Path) -> None:
    """With stored maps of two or more methods for the (first) model: uncertainty against their disagreement."""
    from xaiflow import store
    from xaiflow import uncertainty as unc
    from xaiflow.saliency import open_saliency, saliency_group

    model_id = entries[0].model_id
    if not store.group_exists(workspace, saliency_group(dataset, model_id)):
        out.print(f"(no attribution maps of {model_id}: run `xaiflow attribute` with two or more methods to relate "
                  "uncertainty to their disagreement)")
        return
    sal = open_saliency(workspace, dataset, model_id, with_images=False)
    if sal.sizes["xai_method"] < 2:
        out.print("(one attribution method stored: two or more are needed to relate uncertainty to disagreement)")
        return
    rel = unc.disagreement_relation(ds, sal)
    say(f"uncertainty vs attribution disagreement across {sal.sizes['xai_method']} methods "
        f"({rel['samples']} samples): Spearman rho {fmt(rel['entropy']['rho'])} (entropy), "
        f"{fmt(rel['mutual_information']['rho'])} (mutual information)", disagreement=rel)
    wrote(unc.relation_figure(rel, path))


def adversarial(
    workspace: str = WorkspaceOption,
    model: Optional[str] = typer.Option(None, "--model", "-m", help="model id or unique prefix (default: the only one)"),
    dataset: Optional[str] = dataset_option(),
    epsilon: float = typer.Option(0.1, "--epsilon", help="L-infinity budget in standardized input units"),
    steps: int = typer.Option(10, "--steps", help="PGD steps"),
    step_size: float = typer.Option(0.025, "--step-size", help="PGD step (at most epsilon)"),
    split: str = typer.Option("test", "--split", help="samples to attack (all: every sample)"),
    max_samples: int = typer.Option(64, "--max-samples", help="attack at most this many of them (seeded draw)"),
    seed: int = typer.Option(0, "--seed", help="seed of the sample draw and of PGD's random start"),
    device: str = typer.Option("cpu", "--device", help="cpu, cuda, cuda:N or auto"),
    overwrite: bool = typer.Option(False, "--overwrite", help="replace results stored with other settings"),
    cluster: str = cluster_option(),
    output: Optional[Path] = typer.Option(None, "--out", "-o", help=OUT_HELP),
) -> None:
    """FGSM and PGD examples, their Fisher information scores, and how well the scores detect them (ROC AUC)."""
    from xaiflow import adversarial as adv
    from xaiflow import store
    from xaiflow.models.catalog import ModelCatalog
    from xaiflow.runtime import dask_client
    from xaiflow.schema import IMAGE, IMAGES, group_path
    from xaiflow.studies.report import default_out_dir

    with reporting_errors():
        entry = ModelCatalog(workspace).resolve(model, dataset=dataset)
        dataset = dataset or entry.dataset
        attack = adv.AttackSettings(epsilon=epsilon, steps=steps, step_size=step_size, seed=seed)
        with dask_client(cluster) as client, progress_bars() as bars:
            group = adv.inspect_adversarial(workspace, entry.model_id, dataset, attack=attack,
                                            split=None if split == "all" else split, max_samples=max_samples,
                                            device=device, overwrite=overwrite, client=client,
                                            progress=RichProgress(bars, f"{dataset} chunks"))
        ds = adv.open_adversarial(workspace, group)
        say(f"[green]{group}[/]: {ds.sizes['sample']} samples attacked (epsilon {epsilon}, PGD {steps} steps)",
            group=group, n_samples=ds.sizes["sample"], epsilon=epsilon, steps=steps)
        out.print(rows_table(adv.detection_auc(ds), ["attack", "success_rate", "clean", "adversarial", *adv.SCORES],
                             title="ROC AUC of each Fisher score, clean vs adversarial inputs that flipped the "
                                   "decision (0.5: chance)", key="detection"))
        folder = output or default_out_dir(workspace)
        key = group.replace("/", "_")
        wrote(adv.scores_figure(ds, folder / f"{key}_scores.png", group))
        images = store.open_group(workspace, group_path(IMAGES, dataset))[IMAGE]
        if ds["flipped"].values[:, 2].any():
            wrote(adv.maps_figure(ds, images, folder / f"{key}_fisher_maps.png"))
        else:
            out.print("no PGD example flipped a decision: raise --epsilon or --steps to see sensitivity maps")


CONCEPT_HELP = ("a concept, repeatable: NAME=mask:CLASS[@LABEL][,min=F][,patch=P] (patches mostly of a mask class, "
                "optionally only of images of LABEL; min and patch override --min-fraction and --patch), "
                "NAME=meta:COORD=VALUE (images with that metadata), NAME=folder:PATH (images of a folder)")


def concepts(
    workspace: str = WorkspaceOption,
    concept: list[str] = typer.Option(..., "--concept", "-c", help=CONCEPT_HELP),
    model: Optional[str] = typer.Option(None, "--model", "-m", help="model id or unique prefix (default: the only one)"),
    dataset: Optional[str] = dataset_option(),
    layers: Optional[str] = typer.Option(None, "--layers", help="comma-separated layers (default: the model's last "
                                                                "conv block; see `xaiflow models`)"),
    runs: int = typer.Option(20, "--runs", help="random counterpart sets (CAVs per concept and layer)"),
    examples: int = typer.Option(50, "--examples", help="examples per concept and random set"),
    min_fraction: float = typer.Option(0.6, "--min-fraction", help="mask concepts: least share of the patch in the "
                                                                   "mask class"),
    patch: int = typer.Option(0, "--patch", help="mask concepts: patch side in px (0: half the image side)"),
    split: str = typer.Option("test", "--split", help="samples whose classes are scored (examples come from the rest)"),
    alpha: float = typer.Option(0.05, "--alpha", help="significance level after Holm correction"),
    device: str = typer.Option("cpu", "--device", help="cpu, cuda, cuda:N or auto"),
    overwrite: bool = typer.Option(False, "--overwrite", help="recompute cached activations"),
    cluster: str = cluster_option(),
    output: Optional[Path] = typer.Option(None, "--out", "-o", help=OUT_HELP),
) -> None:
    """TCAV: which concepts (phases, metadata, example folders) drive each class, tested against random concepts."""
    from xaiflow import concepts as cc
    from xaiflow import store
    from xaiflow.models.catalog import ModelCatalog
    from xaiflow.runtime import dask_client
    from xaiflow.studies.report import default_out_dir

    with reporting_errors():
        specs = [cc.parse_concept(c) for c in concept]
        specs = [cc.with_defaults(s, min_fraction, patch) for s in specs]
        entry = ModelCatalog(workspace).resolve(model, dataset=dataset)
        dataset = dataset or entry.dataset
        settings = cc.TcavSettings(runs=runs, examples=examples, alpha=alpha)
        with dask_client(cluster) as client, progress_bars() as bars:
            group = cc.run_tcav(workspace, entry.model_id, dataset, specs, layers=split_list(layers), split=split,
                                settings=settings, device=device, overwrite=overwrite, client=client,
                                progress=RichProgress(bars, f"{dataset} chunks"))
        ds = store.open_group(workspace, group)
        say(f"[green]{group}[/]: {len(specs)} concept(s) x {runs} random runs", group=group, concepts=len(specs),
            runs=runs)
        out.print(rows_table(cc.tcav_table(ds), ["class", "concept", "layer", "tcav", "std", "random", "cav_accuracy",
                                                 "p_adjusted", "significant"],
                             title="TCAV score: share of a class's samples whose logit grows along the concept "
                                   "(random: the same for random concepts; a CAV accuracy near 0.5 means the layer "
                                   "does not tell the concept from random examples)", key="tcav"))
        path = (output or default_out_dir(workspace)) / f"{group.replace('/', '_')}.png"
        wrote(cc.tcav_figure(ds, path))
