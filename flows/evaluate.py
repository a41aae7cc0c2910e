"""Evaluation flow: metrics of the stored attribution maps, one Prefect task per image chunk on Dask.

Planning, the chunk computation and the bookkeeping are library calls
(:mod:`xaiflow.metrics.runner`, the same plan/chunk/finalize shape as the attribution
flow); this module maps the chunks onto Prefect tasks (with retries: a chunk is
idempotent and writes only its own region) and publishes a progress artifact, a table of
metric means ± std per method, and a Markdown summary.
"""

from __future__ import annotations

from dataclasses import asdict

from prefect import flow, get_run_logger, task, unmapped
from prefect.cache_policies import NO_CACHE
from prefect.futures import as_completed

from flows.artifacts import Progress, publish_summary, publish_table
from flows.runners import dask_task_runner
from xaiflow import schema, store
from xaiflow.config import load_config
from xaiflow.metrics.runner import ChunkTask, MetricsPlan, finalize, prepare, run_chunk
from xaiflow.metrics.summary import metric_summary

DEFAULT_METRICS = ["deletion", "insertion", "sparseness", "entropy"]
MASK_METRICS = ["pointing_game", "relevance_mass_accuracy"]  # added when the dataset has masks


@task(name="metrics-chunk", retries=2, retry_delay_seconds=2, cache_policy=NO_CACHE)
def metrics_chunk(chunk: ChunkTask, plan: MetricsPlan) -> dict:
    return run_chunk(chunk, plan)


@flow(name="xaiflow-evaluate")
def evaluate_flow(config_path: str = "configs/quickstart.yaml", workspace: str = "workspace/quickstart.zarr",
                  dataset: str | None = None, model: str | None = None, metrics: list[str] | None = None,
                  methods: list[str] | None = None, mask_class: str | None = None, device: str = "auto",
                  overwrite: bool = False) -> dict:
    """Score the stored attribution maps of the config's attribution dataset and model.

    Args:
        config_path: run config YAML; its `attribution:` section names the dataset and model.
        workspace: the Zarr workspace holding the maps.
        dataset: dataset to evaluate (default: attribution.dataset).
        model: model id (default: attribution.model, else the `train:` section's model).
        metrics: metric names (default: deletion, insertion, sparseness, entropy, plus pointing_game and
            relevance_mass_accuracy when the dataset has masks).
        methods: saliency keys to score (default: every stored one).
        mask_class: mask class for the localization metrics (default: every class but the background).
        device: cpu, cuda, cuda:N or auto.
        overwrite: recompute metrics stored with other parameters or for other maps.
    """
    logger = get_run_logger()
    run = load_config(config_path)
    if run.attribution is None and (dataset is None or model is None):
        raise ValueError(f"{config_path}: no `attribution:` section; pass dataset and model")
    dataset = dataset or run.attribution.dataset
    if model is None:
        model = run.attribution.model
    if model is None:
        if run.train is None:
            raise ValueError(f"{config_path}: neither attribution.model nor a `train:` section names the model")
        from xaiflow.training import resolve_model_id

        model = resolve_model_id(workspace, run.train)
    if metrics is None:
        has_masks = store.group_exists(workspace, schema.group_path(schema.MASKS, dataset))
        metrics = DEFAULT_METRICS + (MASK_METRICS if has_masks else [])
    plan, chunks, n_chunks = prepare(workspace, dataset, model, metrics, methods, mask_class, device=device,
                                     overwrite=overwrite)
    logger.info("%s: %d chunk(s) to compute, %d complete or without maps", plan.group, len(chunks),
                n_chunks - len(chunks))
    progress = Progress("metrics-progress", len(chunks), f"chunks of {plan.group}")
    futures = metrics_chunk.map(chunks, plan=unmapped(plan))
    results = []
    for fut in as_completed(futures):
        results.append(fut.result())
        progress.advance()
    res = finalize(plan, results, n_chunks, n_chunks - len(chunks))
    rows = metric_summary(workspace, dataset, model)
    publish_table(rows, key="metrics-means", description=f"{plan.group}: mean ± std over samples per method")
    headline = {"group": plan.group, "chunks computed": res.chunks_run, "chunks reused": res.chunks_skipped}
    headline.update({f"{r['method']} {r['metric']}": f"{r['mean']:.3f} ± {r['std']:.3f} (n={r['n']})"
                     for r in rows})
    publish_summary(f"Evaluation of {model} on {dataset}", "evaluation-summary", workspace, headline)
    return {**asdict(res), "model_id": model, "dataset": dataset, "summary": rows}


def evaluate_flow_on(cluster: str = "local"):
    """The evaluation flow bound to a cluster profile's task runner."""
    return evaluate_flow.with_options(task_runner=dask_task_runner(cluster))
