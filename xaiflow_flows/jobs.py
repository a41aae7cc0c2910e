"""Any chunked job of the library as Prefect tasks sized to the work.

The library plans a job (:mod:`xaiflow.jobs`); :func:`run_chunks` is the ``runner`` the stage
flows hand to library calls (``ingest_dataset(..., runner=run_chunks)``, ``run_attribution(...)``),
in place of the library's own Dask loop.

Orchestration costs: each Prefect task run is a few round trips to the server (~0.2 s here), so
one task per chunk would spend about an hour of orchestration and ~450 MB of server database on
10^6 images in chunks of 64. So a Prefect task (``<kind>-chunks``, e.g. ``attribute-chunks``)
covers a group of chunks: a job of up to two chunks per worker is one task; else one chunk per
worker runs first as plain Dask tasks on the flow's cluster (:func:`probe_chunk`: every worker
imports the job's code, its model and Prefect at once, instead of one after the other as the
Prefect tasks reach them) and their measured seconds size the groups: every further task covers
enough chunks for about :data:`TASK_SECONDS` of work (:func:`group_size`). Inside a task every chunk is still a Dask task of its own on the
flow's cluster (``attribute_chunk`` on the dashboard; :func:`xaiflow.jobs.run_chunk_group`): every
worker works for every task, Dask retries a failed chunk, a retried Prefect task redoes only its
unfinished chunks (chunks are idempotent and flag what they finished), and the task's log follows
its chunks. The progress artifact advances by each finished task's chunks. The job is finalized
when every task has finished; a failed chunk fails the flow run after every other chunk has run
and leaves the output ``incomplete`` for a re-run to resume.
"""

from __future__ import annotations

from functools import lru_cache
from typing import Any

from prefect import Task, get_run_logger, task, unmapped
from prefect.cache_policies import NO_CACHE
from prefect.futures import PrefectFuture, as_completed

from xaiflow_flows.artifacts import Progress, artifact_key
from xaiflow_flows.runners import flow_client
from xaiflow.jobs import Chunk, ChunkJob, ChunkOutcome, timed_chunk, job_kind, run_chunk_group
from xaiflow.plugins import load_plugins
from xaiflow.runtime import TaskError, map_tasks

#: seconds of (measured) chunk work one Prefect task covers: 10-60 s keeps orchestration a few
#: percent of the work and still gives retries and progress a useful grain
TASK_SECONDS = 30.0
#: chunk-progress lines a task logs at most
_LOG_LINES = 10


def group_size(chunk_seconds: float, target: float = TASK_SECONDS) -> int:
    """Chunks per task for ``target`` seconds of work at ``chunk_seconds`` per chunk (at least 1)."""
    return max(1, int(target / max(chunk_seconds, 1e-3)))


@lru_cache(maxsize=None)  # one per kind of job
def chunks_task(kind: str) -> Task[..., Any]:
    """The Prefect task that runs a group of chunks of a ``kind`` job (``attribute``, ``write``, ...),
    named ``<kind>-chunks``; its chunks run as ``<kind>_chunk`` tasks on the Dask scheduler."""

    def run(chunks: list[Chunk], job: ChunkJob) -> list[ChunkOutcome]:
        logger = get_run_logger()
        every = max(1, len(chunks) // _LOG_LINES)

        def progress(stage: str, done: int, total: int) -> None:
            if done % every == 0 or done == total:
                logger.info("%s: %d/%d chunks of this task (chunks %d-%d)", stage, done, total,
                            chunks[0].index, chunks[-1].index)

        load_plugins()  # a worker process looks plugins up by name (methods, metrics): register $XAIFLOW_PLUGINS
        return run_chunk_group(job, chunks, progress=progress)

    run.__name__ = run.__qualname__ = f"{kind}_chunks"
    return task(run, name=f"{kind}-chunks", retries=1, retry_delay_seconds=2, cache_policy=NO_CACHE)


def _n_workers() -> int:
    try:
        return max(1, len(flow_client().scheduler_info()["workers"]))
    except RuntimeError:  # not on a DaskTaskRunner: the group runs in the task's own process
        return 1


def _collect(futures: list[PrefectFuture[Any]], sizes: dict[int, int], progress: Progress,
             outcomes: list[ChunkOutcome], failed: list[BaseException]) -> None:
    """Wait for ``futures``; keep their chunks' outcomes or their errors (every task runs to its end)."""
    for fut in as_completed(futures):
        try:
            outcomes.extend(fut.result())
        except Exception as e:
            failed.append(e)
        progress.advance(sizes[id(fut)])


def probe_chunk(chunk: Chunk, job: ChunkJob) -> ChunkOutcome:
    """One chunk, timed, as a plain Dask task: defined here so that unpickling it on a worker also
    imports Prefect, which the worker needs for the Prefect tasks that follow."""
    return timed_chunk(chunk, job)


def _probe(job: ChunkJob, chunks: list[Chunk], outcomes: list[ChunkOutcome], failed: list[BaseException]) -> None:
    """Run ``chunks`` (one per worker) as plain Dask tasks on the flow's cluster: every worker imports
    the job's code and Prefect at once, in parallel, and their seconds size the Prefect tasks."""
    try:
        try:
            client = flow_client()
        except RuntimeError:  # not on a DaskTaskRunner: here, one after the other
            outcomes.extend(run_chunk_group(job, chunks))
            return
        outcomes.extend(map_tasks(probe_chunk, chunks, client=client, stage=job.stage, retries=1,
                                  resources=job.resources, name=f"{job_kind(job)}_chunk", job=job.shipped()))
    except Exception as e:  # kept like a failed task's: every other chunk still runs
        failed.append(e)


def run_chunks(job: ChunkJob) -> Any:
    """Run every pending chunk of ``job`` in Prefect tasks sized to the work (module docstring), then
    finalize it; returns what the job's ``finalize`` returns."""
    chunks = list(job.chunks)
    progress = Progress(f"{artifact_key(job.stage)}-progress", len(chunks), f"chunks of {job.stage}")
    run_group, shipped = chunks_task(job_kind(job)), job.shipped()
    outcomes: list[ChunkOutcome] = []
    failed: list[BaseException] = []
    workers = _n_workers()
    if len(chunks) <= 2 * workers:  # a few chunks: one task
        groups = [chunks] if chunks else []
    else:  # one chunk per worker measures the work (and warms every worker), the rest is grouped by it
        _probe(job, chunks[:workers], outcomes, failed)
        progress.advance(workers)
        size = group_size(min(o.seconds for o in outcomes)) if outcomes else workers
        rest = chunks[workers:]
        groups = [rest[i:i + size] for i in range(0, len(rest), size)]
    if groups:
        futures = run_group.map(groups, job=unmapped(shipped))
        _collect(futures, {id(f): len(g) for f, g in zip(futures, groups)}, progress, outcomes, failed)
    if failed:
        raise TaskError(f"{len(failed)} {job.stage} tasks failed; first: {failed[0]}") from failed[0]
    return job.finalize([o.result for o in sorted(outcomes, key=lambda o: o.index)])
