"""Model-inspection flows: uncertainty, concept scores (TCAV), structure importance, symmetry probes
and the adversarial inspection, each the library's chunked jobs as Prefect tasks on Dask with its
tables and figures as artifacts (:mod:`xaiflow.uncertainty`, :mod:`xaiflow.concepts`,
:mod:`xaiflow.importance`, :mod:`xaiflow.probes`, :mod:`xaiflow.adversarial`).

A stage flow takes its config section (the pipeline hands it the run config's); the stand-alone
flow builds the section from typed parameters, so the Prefect UI shows a form.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from prefect import flow

from xaiflow_flows.artifacts import publish_figure, publish_summary, publish_table
from xaiflow_flows.jobs import run_chunks
from xaiflow_flows.runners import flow_client, on_cluster
from xaiflow import adversarial as adv
from xaiflow import concepts as cc
from xaiflow import importance as imp
from xaiflow import probes as pr
from xaiflow import store
from xaiflow import uncertainty as unc
from xaiflow.config import RunConfig
from xaiflow.inspection_config import (AdversarialConfig, ConceptsConfig, ImportanceConfig, ProbesConfig,
                                       UncertaintyConfig)
from xaiflow.models.catalog import ModelCatalog, ModelEntry
from xaiflow.schema import IMAGE, IMAGES, group_path
from xaiflow.studies.report import default_out_dir


def _folder(workspace: str, out_dir: str | None) -> Path:
    return Path(out_dir) if out_dir else default_out_dir(workspace)


def _model(workspace: str, cfg: UncertaintyConfig | ConceptsConfig | ImportanceConfig | ProbesConfig | AdversarialConfig,
           run: RunConfig | None) -> ModelEntry:
    return ModelCatalog(workspace).resolve(cfg.model, run=run, dataset=cfg.dataset)


def _dataset(workspace: str, dataset: str | None, model: str | None) -> str:
    """The dataset a stand-alone flow inspects: given, or the one its model was trained on."""
    return dataset or ModelCatalog(workspace).resolve(model).dataset


def _split(split: str) -> str | None:
    return None if split == "all" else split


@flow(name="stage-uncertainty", flow_run_name="uncertainty")
def uncertainty_stage(cfg: UncertaintyConfig, workspace: str, run: RunConfig | None = None, overwrite: bool = False,
                      out_dir: str | None = None) -> dict:
    """Draws, per-sample entropy and mutual information, calibration; tables and the reliability diagram."""
    catalog = ModelCatalog(workspace)
    ids = [catalog.get(m).model_id for m in cfg.members] if cfg.members else [_model(workspace, cfg, run).model_id]
    passes = cfg.passes if cfg.passes is not None else (20 if len(ids) == 1 else 1)
    group = unc.estimate_uncertainty(workspace, ids, cfg.dataset, passes=passes, device=cfg.device,
                                     overwrite=overwrite, runner=run_chunks)
    ds = unc.open_uncertainty(workspace, group, _split(cfg.split))
    cal, rows = unc.calibration(ds), unc.per_class(ds)
    publish_table(rows, "uncertainty-per-class", f"{group}: mean entropy and mutual information per true class (nats)")
    figure = unc.reliability_figure(cal, _folder(workspace, out_dir) / f"{group.replace('/', '_')}_reliability.png",
                                    group)
    publish_figure(figure, "uncertainty-reliability")
    publish_summary("Uncertainty", "uncertainty-summary", workspace,
                    {"group": group, "draws per sample": passes * len(ids), "split": cfg.split,
                     "accuracy": cal["accuracy"], "expected calibration error": cal["ece"],
                     "mean mutual information": rows[-1]["mutual_information"]}, [figure])
    return {"group": group, "ece": cal["ece"], "per_class": rows, "figures": [str(figure)]}


@flow(name="stage-concepts", flow_run_name="concepts")
def concepts_stage(cfg: ConceptsConfig, workspace: str, run: RunConfig | None = None, overwrite: bool = False,
                   out_dir: str | None = None) -> dict:
    """TCAV scores of the section's concepts for every class; the table and the score figure."""
    entry = _model(workspace, cfg, run)
    specs = [cc.parse_concept(c) for c in cfg.concepts]
    specs = [cc.with_defaults(s, cfg.min_fraction, cfg.patch) for s in specs]
    settings = cc.TcavSettings(runs=cfg.runs, examples=cfg.examples, alpha=cfg.alpha)
    group = cc.run_tcav(workspace, entry.model_id, cfg.dataset, specs, layers=cfg.layers, split=cfg.split,
                        settings=settings, device=cfg.device, overwrite=overwrite, runner=run_chunks,
                        client=flow_client())  # the example sets and CAV fits: Dask tasks on the flow's cluster
    ds = store.open_group(workspace, group)
    rows = cc.tcav_table(ds)
    publish_table(rows, "concepts-tcav", f"{group}: TCAV score per class and concept (significant: Holm-corrected)")
    figure = cc.tcav_figure(ds, _folder(workspace, out_dir) / f"{group.replace('/', '_')}.png")
    publish_figure(figure, "concepts-tcav-scores")
    drivers = [f"{r['concept']} -> {r['class']}" for r in rows if r["significant"]]
    publish_summary("Concepts (TCAV)", "concepts-summary", workspace,
                    {"group": group, "concepts": len(specs), "random runs": cfg.runs,
                     "significant": ", ".join(drivers) or "none"}, [figure])
    return {"group": group, "table": rows, "figures": [str(figure)]}


@flow(name="stage-importance", flow_run_name="importance")
def importance_stage(cfg: ImportanceConfig, workspace: str, run: RunConfig | None = None, overwrite: bool = False,
                     out_dir: str | None = None) -> dict:
    """Occlusion and keep-only per mask class; the per-class table, its sentences and the figure."""
    entry = _model(workspace, cfg, run)
    group = imp.measure_importance(workspace, entry.model_id, cfg.dataset, baseline=cfg.baseline, sigma=cfg.sigma,
                                   min_area=cfg.min_area, split=_split(cfg.split), device=cfg.device,
                                   overwrite=overwrite, runner=run_chunks)
    ds = imp.open_importance(workspace, cfg.dataset, entry.model_id)
    summary = imp.summarize(ds, imp.relevance_shares(workspace, cfg.dataset, entry.model_id, ds["sample"].values))
    rows = summary.to_dict("records")
    publish_table(rows, "importance-per-class", f"{group}: probability drop when a mask class is removed")
    figure = imp.importance_figure(summary, _folder(workspace, out_dir) / f"{group.replace('/', '_')}.png", group)
    publish_figure(figure, "importance-probability-drop")
    said = imp.sentences(summary)
    publish_summary("Structure importance", "importance-summary", workspace, {"group": group}, [figure], said)
    return {"group": group, "summary": rows, "sentences": said, "figures": [str(figure)]}


@flow(name="stage-probes", flow_run_name="probes")
def probes_stage(cfg: ProbesConfig, workspace: str, run: RunConfig | None = None, overwrite: bool = False,
                 out_dir: str | None = None) -> dict:
    """Predictions and maps under the section's transforms; the per-class table, the rotation verdict."""
    entry = _model(workspace, cfg, run)
    group = pr.probe_dataset(workspace, entry.model_id, cfg.dataset, transforms=cfg.transforms, method=cfg.method,
                             split=_split(cfg.split), device=cfg.device, overwrite=overwrite, runner=run_chunks)
    ds = pr.open_probes(workspace, cfg.dataset, entry.model_id)
    summary = pr.summarize(ds)
    rows = summary.to_dict("records")
    publish_table(rows, "probes-per-class", f"{group}: prediction agreement and map correlation per class and transform")
    figure = pr.probe_figure(summary, _folder(workspace, out_dir) / f"{group.replace('/', '_')}.png", group)
    publish_figure(figure, "probes-agreement")
    verdict = pr.rotation_verdict(ds) if pr.probed_rotations(ds) else None
    publish_summary("Symmetry probes", "probes-summary", workspace,
                    {"group": group, "orientation": verdict["verdict"] if verdict else "not probed"}, [figure])
    return {"group": group, "summary": rows, "verdict": verdict, "figures": [str(figure)]}


@flow(name="stage-adversarial", flow_run_name="adversarial")
def adversarial_stage(cfg: AdversarialConfig, workspace: str, run: RunConfig | None = None, overwrite: bool = False,
                      out_dir: str | None = None) -> dict:
    """FGSM/PGD examples and their Fisher scores; the detection ROC AUCs, the score histograms and maps."""
    entry = _model(workspace, cfg, run)
    attack = adv.AttackSettings(epsilon=cfg.epsilon, steps=cfg.steps, step_size=cfg.step_size)
    group = adv.inspect_adversarial(workspace, entry.model_id, cfg.dataset, attack=attack, split=_split(cfg.split),
                                    max_samples=cfg.max_samples, device=cfg.device, overwrite=overwrite,
                                    runner=run_chunks)
    ds = adv.open_adversarial(workspace, group)
    rows = adv.detection_auc(ds)
    publish_table(rows, "adversarial-detection", f"{group}: ROC AUC of each Fisher score (0.5: chance)")
    key = _folder(workspace, out_dir) / group.replace("/", "_")
    figures = [adv.scores_figure(ds, f"{key}_scores.png", group)]
    publish_figure(figures[0], "adversarial-fisher-scores")
    if ds["flipped"].values[:, 2].any():
        images = store.open_group(workspace, group_path(IMAGES, cfg.dataset))[IMAGE]
        figures.append(adv.maps_figure(ds, images, f"{key}_fisher_maps.png"))
        publish_figure(figures[1], "adversarial-fisher-maps")
    publish_summary("Adversarial inspection", "adversarial-summary", workspace,
                    {"group": group, "samples attacked": ds.sizes["sample"],
                     **{f"{r['attack']} success rate": r["success_rate"] for r in rows},
                     **{f"{r['attack']} AUC fisher_trace": r["fisher_trace"] for r in rows}}, figures)
    return {"group": group, "detection": rows, "figures": [str(f) for f in figures]}


@flow(name="xaiflow-uncertainty")
def uncertainty_flow(workspace: str = "workspace/quickstart.zarr", models: list[str] | None = None,
                     dataset: str | None = None, passes: int | None = None, split: str = "test", device: str = "auto",
                     overwrite: bool = False, out_dir: str | None = None, cluster: str = "local") -> dict:
    """How sure is the model? MC dropout (one model) or a deep ensemble (several), calibration per class.

    Args:
        workspace: the Zarr workspace.
        models: model ids or unique prefixes: one gives MC dropout, several an ensemble (default: the only model).
        dataset: dataset to score (default: the models' training dataset).
        passes: MC dropout passes per model (default 20 for one model, 1 per ensemble member).
        split: samples the tables summarize (train, val, test or all).
        device: cpu, cuda, cuda:N or auto.
        overwrite: replace draws stored with other settings.
        out_dir: folder for figures (default: beside the workspace).
        cluster: Dask cluster profile or scheduler address.
    """
    first = models[0] if models else None
    cfg = UncertaintyConfig(dataset=_dataset(workspace, dataset, first), model=first,
                            members=models if models and len(models) > 1 else None, passes=passes, split=split,
                            device=device)
    return on_cluster(uncertainty_stage, cluster)(cfg=cfg, workspace=workspace, overwrite=overwrite, out_dir=out_dir)


@flow(name="xaiflow-concepts")
def concepts_flow(concepts: list[str], workspace: str = "workspace/quickstart.zarr", model: str | None = None,
                  dataset: str | None = None, layers: list[str] | None = None, runs: int = 20, examples: int = 50,
                  min_fraction: float = 0.6, split: str = "test", device: str = "auto", overwrite: bool = False,
                  out_dir: str | None = None, cluster: str = "local") -> dict:
    """Which concepts drive each class? TCAV scores tested against random concepts.

    Args:
        concepts: NAME=mask:CLASS[@LABEL], NAME=meta:COORD=VALUE or NAME=folder:PATH, one per concept.
        workspace: the Zarr workspace.
        model: model id or unique prefix (default: the only model).
        dataset: dataset (default: the model's training dataset).
        layers: layers to score (default: the last conv block).
        runs: random counterpart sets.
        examples: examples per concept and random set.
        min_fraction: mask concepts: least share of the patch in the mask class.
        split: samples whose classes are scored (examples come from the rest).
        device: cpu, cuda, cuda:N or auto.
        overwrite: recompute cached activations.
        out_dir: folder for figures (default: beside the workspace).
        cluster: Dask cluster profile or scheduler address.
    """
    cfg = ConceptsConfig(dataset=_dataset(workspace, dataset, model), model=model, concepts=concepts, layers=layers,
                         runs=runs, examples=examples, min_fraction=min_fraction, split=split, device=device)
    return on_cluster(concepts_stage, cluster)(cfg=cfg, workspace=workspace, overwrite=overwrite, out_dir=out_dir)


@flow(name="xaiflow-importance")
def importance_flow(workspace: str = "workspace/quickstart.zarr", model: str | None = None, dataset: str | None = None,
                    baseline: Literal["blur", "mean", "noise"] = "blur", sigma: float = 4.0, min_area: float = 0.01,
                    split: str = "test", device: str = "auto", overwrite: bool = False, out_dir: str | None = None,
                    cluster: str = "local") -> dict:
    """Which structure (mask class) drives the decision? Occlusion and keep-only per mask class.

    Args:
        workspace: the Zarr workspace (its dataset needs masks).
        model: model id or unique prefix (default: the only model).
        dataset: dataset (default: the model's training dataset).
        baseline: what replaces removed pixels: blur (keeps the local mean), mean or noise.
        sigma: blur: Gaussian sigma in px.
        min_area: least share of the image a mask class must cover to be measured.
        split: samples to measure (train, val, test or all).
        device: cpu, cuda, cuda:N or auto.
        overwrite: replace results stored with other settings.
        out_dir: folder for figures (default: beside the workspace).
        cluster: Dask cluster profile or scheduler address.
    """
    cfg = ImportanceConfig(dataset=_dataset(workspace, dataset, model), model=model, baseline=baseline, sigma=sigma,
                           min_area=min_area, split=split, device=device)
    return on_cluster(importance_stage, cluster)(cfg=cfg, workspace=workspace, overwrite=overwrite, out_dir=out_dir)


@flow(name="xaiflow-probes")
def probes_flow(workspace: str = "workspace/quickstart.zarr", model: str | None = None, dataset: str | None = None,
                transforms: list[str] | None = None, method: str = "grad_cam", split: str = "test",
                device: str = "auto", overwrite: bool = False, out_dir: str | None = None,
                cluster: str = "local") -> dict:
    """Did the model learn that orientation (zoom, contrast, noise) does not matter?

    Args:
        workspace: the Zarr workspace.
        model: model id or unique prefix (default: the only model).
        dataset: dataset (default: the model's training dataset).
        transforms: rot90, rot180, rot270, flip_h, flip_v, scale:F, contrast:F, noise:F (default: all of them).
        method: attribution method whose maps are compared.
        split: samples to probe (train, val, test or all).
        device: cpu, cuda, cuda:N or auto.
        overwrite: replace results stored with other settings.
        out_dir: folder for figures (default: beside the workspace).
        cluster: Dask cluster profile or scheduler address.
    """
    extra = {"transforms": transforms} if transforms else {}
    cfg = ProbesConfig(dataset=_dataset(workspace, dataset, model), model=model, method=method, split=split,
                       device=device, **extra)
    return on_cluster(probes_stage, cluster)(cfg=cfg, workspace=workspace, overwrite=overwrite, out_dir=out_dir)


@flow(name="xaiflow-adversarial")
def adversarial_flow(workspace: str = "workspace/quickstart.zarr", model: str | None = None,
                     dataset: str | None = None, epsilon: float = 0.1, steps: int = 10, step_size: float = 0.025,
                     split: str = "test", max_samples: int = 64, device: str = "auto", overwrite: bool = False,
                     out_dir: str | None = None, cluster: str = "local") -> dict:
    """Do the Fisher information scores tell adversarial micrographs from clean ones?

    Args:
        workspace: the Zarr workspace.
        model: model id or unique prefix (default: the only model).
        dataset: dataset to attack (default: the model's training dataset).
        epsilon: L-infinity budget in standardized input units.
        steps: PGD steps.
        step_size: PGD step (at most epsilon).
        split: samples to attack (train, val, test or all).
        max_samples: attack at most this many of them (seeded draw).
        device: cpu, cuda, cuda:N or auto.
        overwrite: replace results stored with other settings.
        out_dir: folder for figures (default: beside the workspace).
        cluster: Dask cluster profile or scheduler address.
    """
    cfg = AdversarialConfig(dataset=_dataset(workspace, dataset, model), model=model, epsilon=epsilon, steps=steps,
                            step_size=step_size, split=split, max_samples=max_samples, device=device)
    return on_cluster(adversarial_stage, cluster)(cfg=cfg, workspace=workspace, overwrite=overwrite, out_dir=out_dir)
