"""Prefect task runners from xaiflow cluster profiles (prefect-dask's DaskTaskRunner)."""

from __future__ import annotations

from prefect_dask import DaskTaskRunner

from xaiflow.runtime import ClusterConfig, cluster_spec, configure_dask, load_cluster_profile


def dask_task_runner(profile: str | ClusterConfig | None) -> DaskTaskRunner:
    """A DaskTaskRunner for any profile kind: the scheduler address of ``address`` profiles,
    else the profile's cluster class and arguments (prefect-dask starts and closes it)."""
    cfg = profile if isinstance(profile, ClusterConfig) else load_cluster_profile(profile)
    spec = cluster_spec(cfg)
    configure_dask()
    if spec.address:
        return DaskTaskRunner(address=spec.address)
    return DaskTaskRunner(cluster_class=spec.cluster_class, cluster_kwargs=spec.kwargs, adapt_kwargs=spec.adapt)
