"""Attribution flow: the config's maps that are not stored yet, one Prefect task per image chunk on Dask.

Planning, the chunk computation and the bookkeeping are library calls
(:mod:`xaiflow.attribution.engine`); ``xaiflow_flows/jobs.py`` maps the chunks onto Prefect tasks.
"""

from __future__ import annotations

from dataclasses import asdict

from prefect import flow
from prefect.artifacts import create_table_artifact

from xaiflow_flows.artifacts import publish_summary
from xaiflow_flows.jobs import run_chunks
from xaiflow_flows.runners import on_cluster
from xaiflow.attribution.engine import run_attribution
from xaiflow.config import RunConfig, load_config


@flow(name="stage-attribute", flow_run_name="attribute")
def attribute_stage(run: RunConfig, workspace: str, methods: list[str] | None = None, overwrite: bool = False,
                    device: str | None = None) -> dict:
    """Compute the maps of the `attribution:` section (``methods``/``device`` override it)."""
    cfg = run.section("attribution").with_overrides(methods=methods, device=device)
    res = run_attribution(workspace, cfg, run=run, overwrite=overwrite, runner=run_chunks)
    create_table_artifact([{"method": k, "maps": n, "non_finite": res.nonfinite.get(k, 0),
                            "seconds_per_map": round(res.seconds.get(k, 0.0) / max(n, 1), 4)}
                           for k, n in res.maps_computed.items()],
                          key="attribution-methods", description=f"maps computed in {res.group}")
    publish_summary(f"Attribution maps of {res.group}", "attribution-summary", workspace,
                    {"group": res.group, "chunks computed": res.chunks_run, "chunks reused": res.chunks_skipped,
                     **{f"{k} maps": n for k, n in res.maps_computed.items()}})
    return asdict(res)


@flow(name="xaiflow-attribute")
def attribute_flow(config_path: str = "configs/quickstart.yaml", workspace: str = "workspace/quickstart.zarr",
                   methods: list[str] | None = None, overwrite: bool = False, device: str | None = None,
                   cluster: str = "local") -> dict:
    """Compute the config's attribution maps that are not stored yet, in tasks sized to ~30 s of chunks.

    Args:
        config_path: run config YAML with an `attribution:` section.
        workspace: the Zarr workspace.
        methods: method names instead of the config's (default parameters).
        overwrite: recompute maps stored with other parameters or another model.
        device: instead of attribution.device (cpu, cuda, cuda:N, auto).
        cluster: Dask cluster profile or scheduler address.
    """
    return on_cluster(attribute_stage, cluster)(run=load_config(config_path), workspace=workspace, methods=methods,
                                                overwrite=overwrite, device=device)
