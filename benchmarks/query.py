"""Aggregate-query throughput: xaiflow.aggregate (lazy xarray + Dask) against zarr + numpy, same run.

The query: the per-class mean of mass-normalized |maps| (``group_maps(ds, by="label")``) over
every sample with maps for every method. The reference reads each method's raw saliency array
with zarr alone, chunk by chunk, keeps the done samples, normalizes and accumulates per class
in a numpy loop (the least one would write by hand). Both results are compared. Then the peak
Python memory (tracemalloc: numpy buffers included) of ``method_agreement`` is printed against
the size of the maps it reads.

    .venv/bin/python benchmarks/query.py -w /tmp/ws1.zarr --dataset uhcs --model <model id> [--repeat 2]

The workspace needs ``saliency/<dataset>/<model>`` (``xaiflow attribute``).
"""

from __future__ import annotations

import argparse
import os
import time
import tracemalloc

import numpy as np
import zarr

from xaiflow import schema
from xaiflow.aggregate import PIXELS, group_maps, method_agreement
from xaiflow import store
from xaiflow.saliency import DONE, MAPS, METHOD, open_saliency, saliency_group


def reference(workspace: str, dataset: str, model: str, methods: list[str], classes: list[str]) -> np.ndarray:
    """(class, method, y, x) class means with zarr + numpy only."""
    root = zarr.open_group(workspace, mode="r", path=saliency_group(dataset, model))
    labels = np.asarray(zarr.open_group(workspace, mode="r", path=schema.group_path(schema.IMAGES, dataset))
                        [schema.LABEL_INDEX][:])
    axis = list(store.strings(root[METHOD][:]))
    cols = [axis.index(m) for m in methods]
    done = np.all(root[DONE][:][:, cols], axis=1)
    out = None
    counts = np.bincount(labels[done], minlength=len(classes))
    arr = root[MAPS]
    chunk = arr.chunks[0]
    for mi, col in enumerate(cols):
        for s0 in range(0, arr.shape[0], chunk):
            keep = np.flatnonzero(done[s0:s0 + chunk])
            if not len(keep):
                continue
            block = np.abs(arr[s0:s0 + chunk, col][keep])
            if out is None:
                out = np.zeros((len(classes), len(methods), *block.shape[1:]))
            block /= block.sum(axis=(1, 2), keepdims=True)
            for k in np.unique(labels[s0:s0 + chunk][keep]):
                out[k, mi] += block[labels[s0:s0 + chunk][keep] == k].sum(0)
    return out / np.maximum(counts, 1)[:, None, None, None]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("-w", "--workspace", required=True)
    ap.add_argument("--dataset", default="uhcs")
    ap.add_argument("--model", required=True)
    ap.add_argument("--repeat", type=int, default=2, help="runs of each; the fastest is kept")
    args = ap.parse_args()

    ds = open_saliency(args.workspace, args.dataset, args.model)
    methods = [str(m) for m in ds[METHOD].values]
    classes = [str(c) for c in ds.attrs[schema.ATTR_CLASSES]]
    done = ds["done"].all(METHOD).values
    n, (h, w) = int(done.sum()), ds["saliency"].shape[2:]
    read_mb = n * len(methods) * h * w * 4 / 1e6
    full_mb = ds["saliency"].nbytes / 1e6
    print(f"{args.workspace}: {n} samples with maps x {len(methods)} methods x {h}x{w} float32 = {read_mb:.0f} MB "
          f"of maps read (array {full_mb:.0f} MB incl. unwritten chunks); load average {os.getloadavg()[0]:.1f}")

    t_query, t_ref = [], []
    for _ in range(args.repeat):  # interleaved, so a change of machine load hits both
        t = time.perf_counter()
        q = group_maps(open_saliency(args.workspace, args.dataset, args.model), by=schema.LABEL).compute()
        t_query.append(time.perf_counter() - t)
        t = time.perf_counter()
        ref = reference(args.workspace, args.dataset, args.model, methods, classes)
        t_ref.append(time.perf_counter() - t)
    present = [classes.index(str(g)) for g in q[q.dims[0]].values]
    diff = float(np.nanmax(np.abs(q.transpose(q.dims[0], METHOD, *PIXELS).values - ref[present])))
    tq, tr = min(t_query), min(t_ref)
    print(f"per-class mean query: xaiflow.aggregate {tq:.2f} s ({read_mb / tq:.0f} MB/s), zarr + numpy {tr:.2f} s "
          f"({read_mb / tr:.0f} MB/s); ratio (throughput aggregate / reference) {tr / tq:.2f} (target >= 0.5); "
          f"max abs difference {diff:.1e}")

    tracemalloc.start()
    t = time.perf_counter()
    agree = method_agreement(open_saliency(args.workspace, args.dataset, args.model)).compute()
    elapsed = time.perf_counter() - t
    peak = tracemalloc.get_traced_memory()[1] / 1e6
    tracemalloc.stop()
    print(f"method_agreement ({len(methods)}x{len(methods)}, {agree.attrs['n_samples']} samples): {elapsed:.1f} s, "
          f"peak traced memory {peak:.0f} MB = {peak / read_mb:.2f}x the {read_mb:.0f} MB of maps read "
          f"({peak / full_mb:.2f}x the {full_mb:.0f} MB array); load average {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()
