"""Evaluation flow: metrics of the stored attribution maps, one Prefect task per image chunk on Dask.

Planning, the chunk computation and the bookkeeping are library calls
(:mod:`xaiflow.metrics.runner`); ``xaiflow_flows/jobs.py`` maps the chunks onto Prefect tasks; this
module publishes a table of metric means ± std per method and a Markdown summary.
"""

from __future__ import annotations

from dataclasses import asdict

from prefect import flow

from xaiflow_flows.artifacts import publish_summary, publish_table
from xaiflow_flows.jobs import run_chunks
from xaiflow_flows.runners import on_cluster
from xaiflow.config import RunConfig, load_config
from xaiflow.metrics.runner import run_metrics
from xaiflow.metrics.summary import metric_summary
from xaiflow.models.catalog import ModelCatalog


@flow(name="stage-evaluate", flow_run_name="evaluate")
def evaluate_stage(run: RunConfig, workspace: str, dataset: str | None = None, model: str | None = None,
                   metrics: list[str] | None = None, methods: list[str] | None = None, mask_class: str | None = None,
                   device: str = "auto", overwrite: bool = False) -> dict:
    """Score the maps of the config's attribution dataset and model (or ``dataset``/``model``)."""
    attribution = run.attribution
    if attribution is not None:
        model, dataset = model or attribution.model, dataset or attribution.dataset
    dataset, model_id = ModelCatalog(workspace).resolve_maps(model, dataset, run=run)
    if run.evaluation is not None:  # the config's evaluation section, where the flow's parameters leave it open
        metrics, methods = metrics or run.evaluation.metrics, methods or run.evaluation.methods
        mask_class = mask_class or run.evaluation.mask_class
    res = run_metrics(workspace, dataset, model_id, metrics, methods, mask_class, device=device, overwrite=overwrite,
                      runner=run_chunks)
    rows = metric_summary(workspace, dataset, model_id)
    publish_table(rows, key="metrics-means", description=f"{res.group}: mean ± std over samples per method")
    headline = {"group": res.group, "chunks computed": res.chunks_run, "chunks reused": res.chunks_skipped}
    headline.update({f"{r['method']} {r['metric']}": f"{r['mean']:.3f} ± {r['std']:.3f} (n={r['n']})"
                     for r in rows})
    publish_summary(f"Evaluation of {model_id} on {dataset}", "evaluation-summary", workspace, headline)
    return {**asdict(res), "model_id": model_id, "dataset": dataset, "summary": rows}


@flow(name="xaiflow-evaluate")
def evaluate_flow(config_path: str = "configs/quickstart.yaml", workspace: str = "workspace/quickstart.zarr",
                  dataset: str | None = None, model: str | None = None, metrics: list[str] | None = None,
                  methods: list[str] | None = None, mask_class: str | None = None, device: str = "auto",
                  overwrite: bool = False, cluster: str = "local") -> dict:
    """Score the stored attribution maps of the config's attribution dataset and model.

    Args:
        config_path: run config YAML; its `attribution:` section names the dataset and model.
        workspace: the Zarr workspace holding the maps.
        dataset: dataset to evaluate (default: attribution.dataset).
        model: model id or unique prefix (default: attribution.model, else the `train:` section's model).
        metrics: metric names (default: road, region_perturbation, sparseness, entropy, plus pointing_game and
            relevance_mass_accuracy when the dataset has masks).
        methods: saliency keys to score (default: every stored one).
        mask_class: the localization region: a mask class, CLASS+CLASS, or per image label
            "LABEL=CLASS,...,*=CLASS" (default: the config's evaluation.mask_class, else every class but the
            background).
        device: cpu, cuda, cuda:N or auto.
        overwrite: recompute metrics stored with other parameters or for other maps.
        cluster: Dask cluster profile or scheduler address.
    """
    return on_cluster(evaluate_stage, cluster)(run=load_config(config_path), workspace=workspace, dataset=dataset,
                                               model=model, metrics=metrics, methods=methods, mask_class=mask_class,
                                               device=device, overwrite=overwrite)
