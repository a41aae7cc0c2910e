"""Attribution flow: one Prefect task per image chunk, submitted through prefect-dask's DaskTaskRunner.

Planning, the chunk computation and the bookkeeping are library calls
(:mod:`xaiflow.attribution.engine`); this module only maps them onto Prefect tasks (with
retries: a chunk is idempotent), and publishes a progress artifact and a results table.
"""

from __future__ import annotations

from dataclasses import asdict

import dask
from prefect import flow, get_run_logger, task, unmapped
from prefect.artifacts import create_progress_artifact, create_table_artifact, update_progress_artifact
from prefect.cache_policies import NO_CACHE
from prefect.futures import as_completed

from flows.artifacts import publish_summary
from flows.runners import dask_task_runner
from xaiflow.attribution.engine import AttributionPlan, ChunkTask, finalize, prepare, run_chunk
from xaiflow.config import MethodSpec, load_config


@task(name="attribute-chunk", retries=2, retry_delay_seconds=2, cache_policy=NO_CACHE)
def attribute_chunk(chunk: ChunkTask, plan: AttributionPlan) -> dict:
    return run_chunk(chunk, plan)


@flow(name="xaiflow-attribute")
def attribute_flow(config_path: str = "configs/quickstart.yaml", workspace: str = "workspace/quickstart.zarr",
                   methods: list[str] | None = None, overwrite: bool = False, device: str | None = None) -> dict:
    """Compute the config's attribution maps that are not stored yet, one task per image chunk
    (``methods``/``device`` override the config's)."""
    logger = get_run_logger()
    run = load_config(config_path)
    if run.attribution is None:
        raise ValueError(f"{config_path}: no `attribution:` section")
    cfg = run.attribution
    if methods:
        cfg = cfg.model_copy(update={"methods": [MethodSpec(name=m) for m in methods]})
    if device:
        cfg = cfg.model_copy(update={"device": device})
    plan, chunks, n_chunks = prepare(workspace, cfg, run, overwrite)
    logger.info("%s: %d chunk(s) to compute, %d already complete", plan.group, len(chunks), n_chunks - len(chunks))
    progress = create_progress_artifact(0.0, key="attribution-progress", description=f"chunks of {plan.group}")
    with dask.annotate(resources={"GPU": 1}) if cfg.gpu else dask.annotate():
        futures = attribute_chunk.map(chunks, plan=unmapped(plan))
    results = []
    for i, fut in enumerate(as_completed(futures)):
        results.append(fut.result())
        update_progress_artifact(progress, 100.0 * (i + 1) / max(len(chunks), 1))
    res = finalize(plan, results, n_chunks, n_chunks - len(chunks))
    create_table_artifact([{"method": k, "maps": n, "non_finite": res.nonfinite.get(k, 0),
                            "seconds_per_map": round(res.seconds[k] / max(n, 1), 4)}
                           for k, n in res.maps_computed.items()],
                          key="attribution-methods", description=f"maps computed in {plan.group}")
    publish_summary(f"Attribution maps of {plan.group}", "attribution-summary", workspace,
                    {"group": plan.group, "chunks computed": res.chunks_run, "chunks reused": res.chunks_skipped,
                     **{f"{k} maps": n for k, n in res.maps_computed.items()}})
    return asdict(res)


def attribute_flow_on(cluster: str = "local"):
    """The attribution flow bound to a cluster profile's task runner."""
    return attribute_flow.with_options(task_runner=dask_task_runner(cluster))
