"""Where work runs: Dask clients from cluster profiles, and task mapping with progress.

All parallelism in xaiflow comes from Dask. Library functions take an optional
``distributed.Client``; without one they use the current default client, or start a
small in-process cluster for the call.

Environment fix applied before any cluster starts (see :func:`configure_dask`): Dask's
nanny sets ``MALLOC_TRIM_THRESHOLD_=65536`` in worker processes (and in the client's own
environment), which made torch on CPU ~1.9x slower here; we unset it.
"""

from __future__ import annotations

import logging
import os
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable, Iterator, Literal, Sequence

import dask
import yaml
from pydantic import BaseModel, ConfigDict, Field

log = logging.getLogger("xaiflow")

ProgressFn = Callable[[str, int, int], None]


class ClusterConfig(BaseModel):
    """A cluster profile. ``threads``: in-process (tests, tiny jobs); ``local``: a
    LocalCluster of worker processes sized to the machine; ``address``: an existing
    scheduler (``dask scheduler`` + ``dask worker``, SLURM, Kubernetes...)."""

    model_config = ConfigDict(extra="forbid")
    kind: Literal["threads", "local", "address"] = "local"
    n_workers: int | None = Field(None, ge=1, description="worker processes (default: one per core)")
    threads_per_worker: int = Field(1, ge=1, description="threads per worker; torch threads follow it")
    memory_limit: str = Field("auto", description="per worker, e.g. '4GiB'")
    address: str | None = Field(None, description="scheduler address for kind=address, e.g. tcp://10.0.0.5:8786")
    dashboard_address: str | None = Field("127.0.0.1:0", description="bind the dashboard to loopback by default")


BUILTIN_PROFILES = {
    "threads": ClusterConfig(kind="threads"),
    "local": ClusterConfig(kind="local"),
}


def load_cluster_profile(spec: str | None) -> ClusterConfig:
    """A profile by name (``local``, ``threads``), scheduler address (``tcp://...``) or YAML path."""
    if spec is None:
        return BUILTIN_PROFILES["local"]
    if spec in BUILTIN_PROFILES:
        return BUILTIN_PROFILES[spec]
    if "://" in spec:
        return ClusterConfig(kind="address", address=spec)
    path = Path(spec)
    if not path.is_file():
        raise ValueError(
            f"unknown cluster profile {spec!r}: use one of {sorted(BUILTIN_PROFILES)}, "
            "a scheduler address like tcp://host:8786, or a YAML file"
        )
    return ClusterConfig.model_validate(yaml.safe_load(path.read_text()) or {})


def configure_dask() -> None:
    """Dask settings xaiflow relies on; must run before the first cluster starts."""
    dask.config.set({"distributed.nanny.pre-spawn-environ.MALLOC_TRIM_THRESHOLD_": None})
    os.environ.pop("MALLOC_TRIM_THRESHOLD_", None)


@contextmanager
def dask_client(profile: ClusterConfig | str | None = None) -> Iterator[Any]:
    """A ``distributed.Client`` for a profile; clusters it starts are closed on exit."""
    from distributed import Client, LocalCluster

    cfg = profile if isinstance(profile, ClusterConfig) else load_cluster_profile(profile)
    configure_dask()
    if cfg.kind == "address":
        if not cfg.address:
            raise ValueError("cluster profile kind=address needs an address")
        with Client(cfg.address) as client:
            yield client
        return
    processes = cfg.kind == "local"
    n_workers = cfg.n_workers or (max(1, (os.cpu_count() or 1) // cfg.threads_per_worker) if processes else 1)
    with LocalCluster(
        n_workers=n_workers, threads_per_worker=cfg.threads_per_worker, processes=processes,
        memory_limit=cfg.memory_limit if processes else None,
        dashboard_address=cfg.dashboard_address, silence_logs=logging.WARNING,
    ) as cluster, Client(cluster) as client:
        log.info("dask cluster: %d workers x %d threads, dashboard %s",
                 n_workers, cfg.threads_per_worker, client.dashboard_link)
        yield client


@contextmanager
def client_or_default(client: Any = None) -> Iterator[Any]:
    """The given client, else the current default client, else a temporary in-process one."""
    if client is not None:
        yield client
        return
    from distributed import default_client

    try:
        yield default_client()
    except ValueError:
        with dask_client("threads") as tmp:
            yield tmp


def map_tasks(fn: Callable[..., Any], items: Sequence[Any], *, client: Any = None,
              progress: ProgressFn | None = None, stage: str = "tasks",
              resources: dict[str, float] | None = None, **kwargs: Any) -> list[Any]:
    """Run ``fn(item, **kwargs)`` for every item as one Dask task each; results in item order.

    ``resources`` (e.g. ``{"GPU": 1}``) restricts the tasks to workers that declare them.

    All tasks run to the end even if some fail, so every finished chunk is kept; the first
    error is raised afterwards with the count of failed tasks.
    """
    from distributed import as_completed

    if not items:
        return []
    with client_or_default(client) as c:
        futures = c.map(fn, items, pure=False, resources=resources, **kwargs)
        index = {f.key: i for i, f in enumerate(futures)}
        results: list[Any] = [None] * len(items)
        errors: list[tuple[int, BaseException]] = []
        done = 0
        for fut in as_completed(futures):
            i = index[fut.key]
            if fut.status == "error":
                errors.append((i, fut.exception()))
            else:
                results[i] = fut.result()
            done += 1
            if progress:
                progress(stage, done, len(items))
        if errors:
            i, first = sorted(errors, key=lambda e: e[0])[0]
            raise TaskError(f"{len(errors)} of {len(items)} {stage} tasks failed; first (task {i}): {first}") from first
        return results


def current_worker() -> Any:
    """The Dask worker running this code, or None outside a worker."""
    try:
        from distributed import get_worker

        return get_worker()
    except (ImportError, ValueError):
        return None


@contextmanager
def worker_compute() -> Iterator[Any]:
    """Inside a chunk task: torch threads = the worker's threads (never oversubscribe), and
    Captum's per-call notices about the hooks it sets (and removes) kept out of the logs."""
    import warnings

    worker = current_worker()
    if worker is not None:
        from xaiflow.device import set_torch_threads

        set_torch_threads(worker.state.nthreads)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=r"Setting (forward, )?backward hooks", category=UserWarning)
        yield worker


class TaskError(RuntimeError):
    """One or more Dask tasks failed; finished tasks' work is kept."""
