"""Where work runs: Dask clients from cluster profiles, and task mapping with progress.

All parallelism in xaiflow comes from Dask. Library functions take an optional
``distributed.Client``; without one they use the current default client, or start a
small in-process cluster for the call. Which cluster a profile starts is defined in
:mod:`xaiflow.clusters` (``configs/cluster/*.yaml``).

Environment fix applied before any cluster starts (see :func:`configure_dask`): Dask's
nanny sets ``MALLOC_TRIM_THRESHOLD_=65536`` in worker processes (and in the client's own
environment), which made torch on CPU ~1.9x slower here; we unset it.
"""

from __future__ import annotations

import logging
import os
import signal
import threading
import uuid
from contextlib import contextmanager
from typing import Any, Callable, Iterator, Sequence

import dask

from xaiflow.clusters import (  # noqa: F401  (profiles are part of the runtime's API)
    BUILTIN_PROFILES,
    ClusterConfig,
    ClusterProfileError,
    ClusterSpec,
    check_startable,
    cluster_spec,
    load_cluster_profile,
)
from xaiflow.errors import XaiflowError

log = logging.getLogger("xaiflow")

ProgressFn = Callable[[str, int, int], None]


def configure_dask() -> None:
    """Dask settings xaiflow relies on; must run before the first cluster starts (the nanny
    reads them when it is created, and writes them into this process's own environment)."""
    dask.config.set({"distributed.nanny.pre-spawn-environ.MALLOC_TRIM_THRESHOLD_": None})
    os.environ.pop("MALLOC_TRIM_THRESHOLD_", None)


def start_cluster(spec: ClusterSpec) -> Any:
    """Start the cluster of a :class:`ClusterSpec` (not for ``address`` specs)."""
    import importlib

    check_startable(spec)
    module, _, name = spec.cluster_class.rpartition(".")
    kwargs = {**spec.kwargs, **({"security": spec.tls.security()} if spec.tls else {})}
    cluster = getattr(importlib.import_module(module), name)(**kwargs)
    if spec.adapt:
        cluster.adapt(**spec.adapt)
    return cluster


#: how long a client waits for a scheduler address to answer
CONNECT_TIMEOUT = "10s"


def connect(address: str, security: Any = None) -> Any:
    """A client of the scheduler at ``address`` (with TLS ``security`` for ``tls://`` addresses); a
    :class:`ClusterProfileError` naming the address when it does not answer within
    :data:`CONNECT_TIMEOUT` (instead of a traceback, or waiting forever)."""
    from distributed import Client

    try:
        return Client(address, timeout=CONNECT_TIMEOUT, security=security)
    except (OSError, TimeoutError) as e:
        raise ClusterProfileError(f"cannot reach the Dask scheduler at {address} within {CONNECT_TIMEOUT} "
                                  f"({type(e).__name__}: {e}); is it running, and is the address right?") from None


@contextmanager
def _workers_ignore_ctrl_c() -> Iterator[None]:
    """Worker processes started in this block ignore SIGINT (they inherit the ignored signal). Ctrl-C
    reaches the terminal's whole process group: the command handles it once, closing the cluster,
    instead of every worker process printing its own KeyboardInterrupt traceback."""
    if threading.current_thread() is not threading.main_thread():  # signals belong to the main thread
        yield
        return
    before = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, before)


@contextmanager
def dask_client(profile: ClusterConfig | str | None = None) -> Iterator[Any]:
    """A ``distributed.Client`` for a profile (name, address, YAML path or ClusterConfig);
    clusters it starts are closed on exit."""
    from distributed import Client

    cfg = profile if isinstance(profile, ClusterConfig) else load_cluster_profile(profile)
    spec = cluster_spec(cfg)
    configure_dask()
    if spec.address:
        with connect(spec.address, spec.tls.security() if spec.tls else None) as client:
            yield client
        return
    local = spec.cluster_class == "distributed.LocalCluster"
    if local:
        # a failed task's traceback ("Compute Failed") is logged by the worker and raised again here as one
        # TaskError: keep the workers' logs for --verbose runs
        spec.kwargs["silence_logs"] = logging.WARNING if log.isEnabledFor(logging.INFO) else logging.CRITICAL
    # a local cluster's dashboard listens on loopback: say so in its link (Dask would print the host's address)
    link = {"distributed.dashboard.link": "{scheme}://127.0.0.1:{port}/status"} if local else {}
    with dask.config.set(link):
        with _workers_ignore_ctrl_c():
            cluster = start_cluster(spec)
        # the client closes first, so that it never talks to a closed scheduler; the cluster then retires its
        # workers, gives each process time to exit (xaiflow.nanny) and stops the scheduler last
        with cluster, Client(cluster) as client:
            log.info("dask cluster (%s): %s workers x %d threads, dashboard %s", cfg.kind,
                     spec.adapt or spec.n_workers, cfg.threads_per_worker, client.dashboard_link)
            try:
                yield client
            except KeyboardInterrupt:
                _quiet_shutdown()
                raise


def _quiet_shutdown() -> None:
    """Ctrl-C: the cluster is closed with tasks still running, and Dask and Tornado log what that
    cancels (lost keys, callbacks of cancelled futures, with tracebacks); the command reports the
    interruption once instead. ``--verbose`` keeps those logs."""
    if not log.isEnabledFor(logging.INFO):
        # and their children: Dask's logging config gives some their own level (tornado.application: error),
        # which a parent's level would not override
        quiet = ("distributed", "tornado", "asyncio")
        children = [n for n in logging.Logger.manager.loggerDict if n.startswith(tuple(f"{q}." for q in quiet))]
        for name in [*quiet, *children]:
            logging.getLogger(name).setLevel(logging.CRITICAL)


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
              resources: dict[str, float] | None = None, name: str | None = None, retries: int = 0,
              **kwargs: Any) -> list[Any]:
    """Run ``fn(item, **kwargs)`` for every item as one Dask task each; results in item order.

    ``resources`` (e.g. ``{"GPU": 1}``) restricts the tasks to workers that declare them; ``name``
    is the tasks' name on the scheduler and dashboard (default: the function's); ``retries``: how
    often Dask reruns a failed task (also on another worker when one died).

    All tasks run to the end even if some fail, so every finished chunk is kept; the first
    error is raised afterwards with the count of failed tasks.
    """
    from distributed import as_completed

    if not items:
        return []
    with client_or_default(client) as c, c.as_current():  # as_completed finds the current client
        token = uuid.uuid4().hex
        keys = [f"{name}-{token}-{i}" for i in range(len(items))] if name else None
        futures = c.map(fn, items, key=keys, pure=False, resources=resources, retries=retries, **kwargs)
        index = {f.key: i for i, f in enumerate(futures)}
        results: list[Any] = [None] * len(items)
        errors: list[tuple[int, BaseException]] = []
        done = 0
        # results are fetched by as_completed on the client's event loop as the tasks finish, and this
        # thread takes whatever arrived meanwhile: no round trip per task here, and a Ctrl-C lands in a
        # queue wait, not inside a call into the event loop (whose cancellation Dask logs as an error)
        for batch in as_completed(futures, with_results=True, raise_errors=False).batches():
            for fut, value in batch:
                if fut.status == "error":
                    errors.append((index[fut.key], fut.exception()))
                else:
                    results[index[fut.key]] = value
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


class TaskError(XaiflowError, RuntimeError):
    """One or more Dask tasks failed; finished tasks' work is kept."""
