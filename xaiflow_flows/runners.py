"""Prefect task runners from xaiflow cluster profiles (prefect-dask's DaskTaskRunner).

Every stage flow runs on a Dask cluster: its chunk tasks are Prefect tasks sent by the
DaskTaskRunner (``xaiflow_flows/jobs.py``), and its other library calls take the runner's client
(``prefect_dask.get_dask_client``), so one stage uses one cluster. The cluster is a run
parameter, so a stage flow is bound to its runner when it is called: :func:`on_cluster`.
"""

from __future__ import annotations

from typing import Any

from prefect import Flow
from prefect_dask import DaskTaskRunner

from xaiflow.clusters import check_startable
from xaiflow.runtime import ClusterConfig, cluster_spec, configure_dask, load_cluster_profile


def dask_task_runner(profile: str | ClusterConfig | None) -> DaskTaskRunner:
    """A DaskTaskRunner for any profile kind: the scheduler address of ``address`` profiles,
    else the profile's cluster class and arguments (prefect-dask starts and closes it)."""
    cfg = profile if isinstance(profile, ClusterConfig) else load_cluster_profile(profile)
    spec = cluster_spec(cfg)
    configure_dask()
    security = {"security": spec.tls.security()} if spec.tls else {}
    if spec.address:
        return DaskTaskRunner(address=spec.address, client_kwargs=security)
    check_startable(spec)
    return DaskTaskRunner(cluster_class=spec.cluster_class, cluster_kwargs={**spec.kwargs, **security},
                          client_kwargs=security, adapt_kwargs=spec.adapt)


def on_cluster(stage: Flow[..., Any], cluster: str) -> Flow[..., Any]:
    """``stage`` with the task runner of ``cluster`` (a profile name, YAML path or scheduler address)."""
    return stage.with_options(task_runner=dask_task_runner(cluster))


def flow_client() -> Any:
    """The ``distributed.Client`` of the running flow's DaskTaskRunner (the runner starts it on first use),
    for library calls that map their own Dask tasks (training runs, study folds) on the flow's cluster."""
    from prefect.context import FlowRunContext

    context = FlowRunContext.get()
    runner = context.task_runner if context else None
    if not isinstance(runner, DaskTaskRunner):
        raise RuntimeError("flow_client() needs a flow running on a DaskTaskRunner (see on_cluster)")
    return runner.client
