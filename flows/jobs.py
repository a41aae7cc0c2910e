"""Any chunked job of the library as Prefect tasks: one task per pending chunk, with retries and progress.

The library plans a job (:mod:`xaiflow.jobs`); :func:`run_chunks` is the ``runner`` the stage
flows hand to library calls (``ingest_dataset(..., runner=run_chunks)``, ``run_attribution(...)``),
in place of the library's own Dask loop. Each chunk becomes a Prefect task (``<kind>-chunk``,
e.g. ``attribute-chunk``; ``attribute_chunk`` on the Dask dashboard) sent to the flow's DaskTaskRunner, retried twice on failure (a chunk is idempotent: it writes
only its own region, then its flags); a progress artifact follows the chunks; the job is
finalized when every chunk task has finished, in chunk order. A failed chunk fails the flow run
after every other chunk has run, and leaves the output ``incomplete`` for a re-run to resume.
"""

from __future__ import annotations

import re
from contextlib import nullcontext
from functools import lru_cache
from typing import Any

import dask
from prefect import Task, task, unmapped
from prefect.cache_policies import NO_CACHE
from prefect.futures import as_completed

from flows.artifacts import Progress, artifact_key
from xaiflow.jobs import Chunk, ChunkJob
from xaiflow.plugins import load_plugins
from xaiflow.runtime import TaskError


@lru_cache(maxsize=None)  # one per kind of job
def chunk_task(kind: str) -> Task[..., Any]:
    """The Prefect task that runs one chunk of a ``kind`` job (``attribute``, ``write``, ...), named
    ``<kind>-chunk`` in Prefect and ``<kind>_chunk`` on the Dask scheduler and dashboard."""

    def run(chunk: Chunk, job: ChunkJob) -> Any:
        load_plugins()  # a worker process looks plugins up by name (methods, metrics): register $XAIFLOW_PLUGINS
        return job.run_chunk(chunk)

    run.__name__ = run.__qualname__ = f"{kind}_chunk"
    return task(run, name=f"{kind}-chunk", retries=2, retry_delay_seconds=2, cache_policy=NO_CACHE)


def run_chunks(job: ChunkJob) -> Any:
    """Run every pending chunk of ``job`` as a Prefect task on the flow's task runner, then finalize."""
    progress = Progress(f"{artifact_key(job.stage)}-progress", len(job.chunks), f"chunks of {job.stage}")
    kind = re.match(r"\w+", job.stage).group(0)  # "features glcm" -> features
    with dask.annotate(resources=job.resources) if job.resources else nullcontext():
        futures = chunk_task(kind).map(list(job.chunks), job=unmapped(job.shipped()))
    order = {id(f): i for i, f in enumerate(futures)}
    results: list[Any] = [None] * len(futures)
    failed = []
    for fut in as_completed(futures):
        try:
            results[order[id(fut)]] = fut.result()
        except Exception as e:  # every chunk runs to the end (its work is kept); the first error is raised below
            failed.append(e)
        progress.advance()
    if failed:
        raise TaskError(f"{len(failed)} of {len(futures)} {job.stage} chunk tasks failed; first: {failed[0]}") \
            from failed[0]
    return job.finalize(results)
