"""Prefect task runners from xaiflow cluster profiles (prefect-dask's DaskTaskRunner)."""

from __future__ import annotations

import os

from prefect_dask import DaskTaskRunner

from xaiflow.runtime import ClusterConfig, configure_dask, load_cluster_profile


def dask_task_runner(profile: str | ClusterConfig | None) -> DaskTaskRunner:
    """A DaskTaskRunner for a profile: ``threads``, ``local`` (worker processes) or a scheduler address."""
    cfg = profile if isinstance(profile, ClusterConfig) else load_cluster_profile(profile)
    configure_dask()
    if cfg.kind == "address":
        return DaskTaskRunner(address=cfg.address)
    processes = cfg.kind == "local"
    n_workers = cfg.n_workers or (max(1, (os.cpu_count() or 1) // cfg.threads_per_worker) if processes else 1)
    return DaskTaskRunner(cluster_class="distributed.LocalCluster", cluster_kwargs={
        "n_workers": n_workers, "threads_per_worker": cfg.threads_per_worker, "processes": processes,
        "dashboard_address": cfg.dashboard_address})
