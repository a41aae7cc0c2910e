"""One protocol for chunked work over a dataset: plan, pending chunks, run one chunk, finalize.

Every stage that writes per-sample results into the workspace (ingest, predictions, features,
attribution maps, metrics; next, concept activations and uncertainty passes) is a
:class:`ChunkJob`, built by its module's ``prepare`` function on the client:

1. **plan** (client): validate everything that can be validated before any work, create or
   extend the output group (values empty, flags false, ``status: incomplete``), and list the
   chunks that still have work: :attr:`ChunkJob.chunks` (:func:`pending_chunks`), out of
   :attr:`ChunkJob.n_chunks`;
2. **run one chunk** (a worker, any order, retried at will): :meth:`ChunkJob.run_chunk` reads
   the chunk's inputs, computes what is not done, writes the chunk's region of the output and
   then its done flags. The chunks are the image chunks (``chunk_size`` samples), so no two
   tasks write one Zarr chunk: parallel workers, retries and a killed run are all safe;
3. **finalize** (client): :meth:`ChunkJob.finalize` sums up the chunks' results, records
   provenance and marks the group ``status: complete``.

:func:`run_job` runs a job on a Dask client (one task per pending chunk, progress per chunk);
``xaiflow_flows/jobs.py`` runs any job as Prefect tasks that each cover a group of chunks sized to ~30 s
of work, every chunk still its own Dask task inside (:func:`run_chunk_group`). Re-running a
finished job finds no pending chunk; re-running a killed one computes only what is missing.

Done flags, one scheme: a boolean array per output, indexed by sample first (and by the
output's own item dimensions after that: method, metric), chunked like the samples, set
after the values it flags are stored. A group with one output calls it ``done``
(:data:`xaiflow.schema.DONE`); the saliency group has ``done(sample, xai_method)``, a column per method key.
Groups written before this scheme kept one flag per chunk (``chunk_done``); they are read as
such and converted when a job resumes them (:func:`xaiflow.store.resume_flags`).
"""

from __future__ import annotations

import dataclasses
import math
import re
import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar

import numpy as np

from xaiflow import schema, store
from xaiflow.plugins import load_plugins
from xaiflow.runtime import ProgressFn, current_worker, map_tasks


@dataclass(frozen=True)
class Chunk:
    """Samples ``start:stop`` (chunk ``index`` of the images), and what the plan knows for them
    (``payload``: e.g. the selected samples and their targets, or the source items to read)."""

    index: int
    start: int
    stop: int
    payload: Any = None


@dataclass(frozen=True)
class ChunkJob(ABC):
    """A planned chunked job (see the module docstring). Subclasses are frozen dataclasses adding
    the plan's fields; they are pickled to the workers, so they hold settings and paths, not data."""

    #: what the job does, for progress and task names ("write", "attribute", ...); a job may make it a
    #: property (e.g. naming its extractor)
    stage: ClassVar[str]
    workspace: str
    #: chunks that still have work
    chunks: tuple[Chunk, ...] = field(kw_only=True)
    #: chunks of the dataset (done or not)
    n_chunks: int = field(kw_only=True)

    @property
    def resources(self) -> dict[str, float] | None:
        """Dask resources every chunk task needs (e.g. ``{"GPU": 1}``), None for any worker."""
        return None

    @property
    def skipped(self) -> int:
        """Chunks that had nothing left to do."""
        return self.n_chunks - len(self.chunks)

    def shipped(self) -> ChunkJob:
        """The job as its chunk tasks receive it: without the chunk list (each task gets its own
        chunk), so a task's arguments do not grow with the size of the dataset."""
        return dataclasses.replace(self, chunks=())  # type: ignore[type-var]

    @abstractmethod
    def run_chunk(self, chunk: Chunk) -> Any:
        """Compute and write one chunk (on a worker); returns a small, picklable summary."""

    @abstractmethod
    def finalize(self, results: list[Any]) -> Any:
        """Sum up the chunks' summaries, record provenance, mark the output complete (on the client)."""


def chunk_count(n: int, size: int) -> int:
    return math.ceil(n / size)


def pending_chunks(pending: np.ndarray, size: int,
                   payload: Callable[[int, int], Any] | None = None) -> tuple[Chunk, ...]:
    """The chunks of ``size`` samples holding a True of ``pending`` (one bool per sample), each
    with ``payload(start, stop)`` when given."""
    n = len(pending)
    chunks = []
    for index in range(chunk_count(n, size)):
        start, stop = index * size, min(n, (index + 1) * size)
        if pending[start:stop].any():
            chunks.append(Chunk(index, start, stop, payload(start, stop) if payload else None))
    return tuple(chunks)


def resume_or_lay_out(workspace: str, group: str, provenance: dict[str, Any], *, overwrite: bool,
                      lay_out: Callable[[], None], error: type[Exception]) -> np.ndarray:
    """The per-sample ``done`` flags of the group a job is about to write: the stored ones when the group
    exists with the same settings (``provenance``); laid out anew (none done) by ``lay_out`` when it does
    not, or with ``overwrite``. A group made with other settings is refused with ``error``, naming each
    difference: resuming it would mix two results in one group."""
    if store.group_exists(workspace, group) and not overwrite:
        stored = store.group_attrs(workspace, group).get(schema.ATTR_PROVENANCE) or {}
        changed = {k: (stored.get(k), v) for k, v in provenance.items() if stored.get(k) != v}
        if changed:
            said = ", ".join(f"{k} {old!r} (asked: {new!r})" for k, (old, new) in changed.items())
            raise error(f"{group} was made with other settings: {said}; pass --overwrite (overwrite=True) to "
                        "replace it")
    else:
        store.delete_group(workspace, group)
        lay_out()
    return store.resume_flags(workspace, group)


def _run_chunk(chunk: Chunk, job: ChunkJob) -> Any:
    load_plugins()  # a worker process looks plugins up by name (methods, metrics): register $XAIFLOW_PLUGINS
    return job.run_chunk(chunk)


@dataclass(frozen=True)
class ChunkOutcome:
    """What one chunk of a group returned (:func:`run_chunk_group`), and its seconds on the worker."""

    index: int
    seconds: float
    result: Any


def timed_chunk(chunk: Chunk, job: ChunkJob) -> ChunkOutcome:
    """Run one chunk (plugins loaded) and time it on the worker: the measure orchestration sizes its tasks by."""
    tick = time.perf_counter()
    result = _run_chunk(chunk, job)
    return ChunkOutcome(chunk.index, time.perf_counter() - tick, result)


def run_chunk_group(job: ChunkJob, chunks: Sequence[Chunk], *, progress: ProgressFn | None = None,
                    retries: int = 1) -> list[ChunkOutcome]:
    """Run ``chunks`` of ``job`` from inside a task that runs on a Dask worker, each chunk a Dask task
    of its own (``<kind>_chunk``, retried ``retries`` times) on that worker's cluster, while the
    calling task waits outside the worker's thread pool: one orchestration task (a Prefect task in
    ``xaiflow_flows/jobs.py``) covers many chunks and still uses every worker. Outside a worker the chunks
    run here, one after the other. Chunks already done cost a read of their flags: a retried group
    redoes only its unfinished chunks. Outcomes in chunk order; the first error is raised after
    every chunk has run."""
    chunks = list(chunks)
    if current_worker() is None:
        outcomes = []
        for i, chunk in enumerate(chunks):
            outcomes.append(timed_chunk(chunk, job))
            if progress:
                progress(job.stage, i + 1, len(chunks))
        return outcomes
    from distributed import worker_client

    with worker_client() as client:  # secedes: this task's thread leaves the pool while its chunks run
        return map_tasks(timed_chunk, chunks, client=client, progress=progress, stage=job.stage,
                         resources=job.resources, name=f"{job_kind(job)}_chunk", retries=retries, job=job.shipped())


def job_kind(job: ChunkJob) -> str:
    """The job's kind, for task names: "features glcm" -> features."""
    return re.match(r"\w+", job.stage).group(0)


def run_job(job: ChunkJob, *, client: Any = None, progress: ProgressFn | None = None) -> Any:
    """Run every pending chunk of ``job`` as one Dask task, then finalize it.

    Every chunk runs even if some fail (their work is kept); the first error is raised after,
    and the job is not finalized, so its group stays ``incomplete`` and a re-run resumes it.
    """
    results = map_tasks(_run_chunk, list(job.chunks), client=client, progress=progress, stage=job.stage,
                        resources=job.resources, name=f"{job_kind(job)}_chunk", job=job.shipped())
    return job.finalize(results)
