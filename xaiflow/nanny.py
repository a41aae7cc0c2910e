"""The nanny of xaiflow's local worker processes: Dask's, with time to let a worker exit.

When a ``LocalCluster`` closes (the CLI's :func:`xaiflow.runtime.dask_client`, or a Prefect
``DaskTaskRunner`` started from a cluster profile), Dask retires the workers and then closes each
nanny with ``Nanny.close()``'s default of 5 s: the worker process gets 4 s to exit and is then
killed, with the warning ``Worker process still alive after 4.0 seconds, killing``. A worker that
has loaded torch on a busy machine often needs longer, so every run printed that warning (and
sometimes a worker's heartbeat traceback while it was being killed) although nothing failed.
:class:`PatientNanny` gives it :data:`WORKER_CLOSE_TIMEOUT` instead; a worker that hangs is still
killed, only later. Dask imports it by name (``worker_class`` of :func:`xaiflow.clusters.cluster_spec`),
so ``import xaiflow`` does not import ``distributed``.
"""

from __future__ import annotations

from typing import Literal

from distributed import Nanny

#: seconds a worker process gets to exit when its cluster closes, before it is killed
WORKER_CLOSE_TIMEOUT = 30.0


class PatientNanny(Nanny):
    """A ``distributed.Nanny`` whose ``close()`` waits up to :data:`WORKER_CLOSE_TIMEOUT` for the worker."""

    async def close(self, timeout: float = WORKER_CLOSE_TIMEOUT,  # type: ignore[override]
                    reason: str = "nanny-close") -> Literal["OK"]:
        return await super().close(timeout=timeout, reason=reason)
