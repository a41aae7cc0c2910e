"""Uncertainty and adversarial-inspection flows: the library's chunked jobs as Prefect tasks on Dask,
their tables and figures as artifacts (:mod:`xaiflow.uncertainty`, :mod:`xaiflow.adversarial`)."""

from __future__ import annotations

from pathlib import Path

from prefect import flow

from flows.artifacts import publish_figures, publish_summary, publish_table
from flows.jobs import run_chunks
from flows.runners import on_cluster
from xaiflow import adversarial as adv
from xaiflow import store
from xaiflow import uncertainty as unc
from xaiflow.models.catalog import ModelCatalog
from xaiflow.schema import IMAGE, IMAGES, group_path
from xaiflow.studies.report import default_out_dir


def _folder(workspace: str, out_dir: str | None) -> Path:
    return Path(out_dir) if out_dir else default_out_dir(workspace)


@flow(name="stage-uncertainty", flow_run_name="uncertainty")
def uncertainty_stage(workspace: str, models: list[str] | None = None, dataset: str | None = None,
                      passes: int | None = None, split: str = "test", device: str = "cpu", overwrite: bool = False,
                      out_dir: str | None = None) -> dict:
    """Draws, per-sample entropy and mutual information, calibration; tables and the reliability diagram."""
    catalog = ModelCatalog(workspace)
    entries = [catalog.get(m) for m in models] if models else [catalog.resolve(None, dataset=dataset)]
    dataset = dataset or entries[0].dataset
    n_passes = passes if passes is not None else (20 if len(entries) == 1 else 1)
    group = unc.estimate_uncertainty(workspace, [e.model_id for e in entries], dataset, passes=n_passes,
                                     device=device, overwrite=overwrite, runner=run_chunks)
    ds = unc.open_uncertainty(workspace, group, None if split == "all" else split)
    cal = unc.calibration(ds)
    rows = unc.per_class(ds)
    publish_table(rows, "uncertainty-per-class", f"{group}: mean entropy and mutual information per true class (nats)")
    figure = unc.reliability_figure(cal, _folder(workspace, out_dir) / f"{group.replace('/', '_')}_reliability.png",
                                    group)
    publish_figures([figure], "uncertainty-reliability")
    publish_summary("Uncertainty", "uncertainty-summary", workspace,
                    {"group": group, "draws per sample": n_passes * len(entries), "split": split,
                     "accuracy": cal["accuracy"], "expected calibration error": cal["ece"],
                     "mean mutual information": rows[-1]["mutual_information"]}, [figure])
    return {"group": group, "ece": cal["ece"], "per_class": rows}


@flow(name="stage-adversarial", flow_run_name="adversarial")
def adversarial_stage(workspace: str, model: str | None = None, dataset: str | None = None, epsilon: float = 0.1,
                      steps: int = 10, step_size: float = 0.025, split: str = "test", max_samples: int = 64,
                      device: str = "cpu", overwrite: bool = False, out_dir: str | None = None) -> dict:
    """FGSM/PGD examples and their Fisher scores; the detection ROC AUCs, the score histograms and maps."""
    entry = ModelCatalog(workspace).resolve(model, dataset=dataset)
    dataset = dataset or entry.dataset
    attack = adv.AttackSettings(epsilon=epsilon, steps=steps, step_size=step_size)
    group = adv.inspect_adversarial(workspace, entry.model_id, dataset, attack=attack,
                                    split=None if split == "all" else split, max_samples=max_samples, device=device,
                                    overwrite=overwrite, runner=run_chunks)
    ds = adv.open_adversarial(workspace, group)
    rows = adv.detection_auc(ds)
    publish_table(rows, "adversarial-detection", f"{group}: ROC AUC of each Fisher score (0.5: chance)")
    key = _folder(workspace, out_dir) / group.replace("/", "_")
    figures = [adv.scores_figure(ds, f"{key}_scores.png", group)]
    if ds["flipped"].values[:, 2].any():
        images = store.open_group(workspace, group_path(IMAGES, dataset))[IMAGE]
        figures.append(adv.maps_figure(ds, images, f"{key}_fisher_maps.png"))
    publish_figures(figures, "adversarial-figure")
    publish_summary("Adversarial inspection", "adversarial-summary", workspace,
                    {"group": group, "samples attacked": ds.sizes["sample"],
                     **{f"{r['attack']} success rate": r["success_rate"] for r in rows},
                     **{f"{r['attack']} AUC fisher_trace": r["fisher_trace"] for r in rows}}, figures)
    return {"group": group, "detection": rows}


@flow(name="xaiflow-uncertainty")
def uncertainty_flow(workspace: str = "workspace/quickstart.zarr", models: list[str] | None = None,
                     dataset: str | None = None, passes: int | None = None, split: str = "test", device: str = "cpu",
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
    return on_cluster(uncertainty_stage, cluster)(workspace=workspace, models=models, dataset=dataset, passes=passes,
                                                  split=split, device=device, overwrite=overwrite, out_dir=out_dir)


@flow(name="xaiflow-adversarial")
def adversarial_flow(workspace: str = "workspace/quickstart.zarr", model: str | None = None,
                     dataset: str | None = None, epsilon: float = 0.1, steps: int = 10, step_size: float = 0.025,
                     split: str = "test", max_samples: int = 64, device: str = "cpu", overwrite: bool = False,
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
    return on_cluster(adversarial_stage, cluster)(workspace=workspace, model=model, dataset=dataset, epsilon=epsilon,
                                                  steps=steps, step_size=step_size, split=split,
                                                  max_samples=max_samples, device=device, overwrite=overwrite,
                                                  out_dir=out_dir)
