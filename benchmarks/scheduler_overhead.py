"""Scheduler overhead per task at cluster-like task counts, simulated on one machine.

A Dask LocalCluster of many single-thread worker processes (default 16) runs tasks that do no
work, so the wall time is the orchestration: the scheduler's bookkeeping, messages to and from
workers and the client's result handling. Two shapes, at each task count:

* ``dask``: plain ``client.map`` of a no-op (the floor Dask itself sets);
* ``xaiflow``: a no-op :class:`xaiflow.jobs.ChunkJob` through :func:`xaiflow.jobs.run_job`, the path
  every xaiflow stage takes (task keys, retries, per-chunk progress, finalize).

It prints seconds, tasks/s and ms per task; docs/scaling.md uses the numbers to size chunks and
Prefect task groups for 10^6 images on 100 GPU workers (Dask's guidance: ~1 ms of scheduler time
per task, so tasks should run for well over 100 ms).

    .venv/bin/python benchmarks/scheduler_overhead.py [--workers 16] [--tasks 10000 100000]
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from xaiflow.jobs import Chunk, ChunkJob, run_job
from xaiflow.runtime import configure_dask


def noop(i: int) -> int:
    return i


@dataclass(frozen=True)
class NoopJob(ChunkJob):
    """A chunk job whose chunks do nothing: what is left is the protocol's own cost."""

    stage = "noop"

    def run_chunk(self, chunk: Chunk) -> int:
        return chunk.index

    def finalize(self, results: list[Any]) -> int:
        return len(results)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--workers", type=int, default=16, help="single-thread worker processes (default 16)")
    ap.add_argument("--tasks", type=int, nargs="+", default=[10_000, 100_000])
    args = ap.parse_args()
    configure_dask()
    from distributed import Client, LocalCluster

    with LocalCluster(n_workers=args.workers, threads_per_worker=1, processes=True, host="127.0.0.1",
                      dashboard_address=None, silence_logs=logging.ERROR) as cluster, Client(cluster) as client:
        client.wait_for_workers(args.workers)
        client.gather(client.map(noop, range(100), pure=False))  # warm: connections, imports
        print(f"{args.workers} single-thread workers on {os.cpu_count()} cores\n")
        print("| tasks | path | s | tasks/s | ms per task |")
        print("|---|---|---|---|---|")
        for n in args.tasks:
            tick = time.perf_counter()
            futures = client.map(noop, range(n), pure=False)
            client.gather(futures)
            del futures
            dask_s = time.perf_counter() - tick
            print(f"| {n:,} | dask (client.map) | {dask_s:.1f} | {n / dask_s:,.0f} | {1000 * dask_s / n:.2f} |",
                  flush=True)
            job = NoopJob(workspace="", chunks=tuple(Chunk(i, i, i + 1) for i in range(n)), n_chunks=n)
            tick = time.perf_counter()
            assert run_job(job, client=client) == n
            job_s = time.perf_counter() - tick
            print(f"| {n:,} | xaiflow (run_job) | {job_s:.1f} | {n / job_s:,.0f} | {1000 * job_s / n:.2f} |",
                  flush=True)
    print(f"\nload average {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()
