"""Feature-extraction throughput: Dask workers (one task per image chunk, as `xaiflow features`
runs) against a plain single-process loop over the same images, in the same run.

Both compute the same features from the same stored images; the Dask path also writes them
(``features/<dataset>/<name>``) to a scratch copy of the workspace's images, so the workspace
itself is left as it was. The scratch workspace's model catalog holds a copy of the ``--model``
checkpoint, which the CNN extractor is given by its id, as in a run config. The cluster is
started before the clock runs (its start-up time is printed apart). Prints images/s and the
ratio per extractor and in total, and the load average (the machine may be shared).

    .venv/bin/python benchmarks/features.py -w ws.zarr [--model <model id>] [--workers 2]

``-w`` must hold ``images/uhcs`` (``xaiflow ingest configs/uhcs.yaml -w ws.zarr``); without
``--model`` the CNN extractor runs a seeded, untrained small_cnn (the same compute).
"""

from __future__ import annotations

import argparse
import os
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from xaiflow import schema, store
from xaiflow.device import available_cpus, set_torch_threads
from xaiflow.features.extract import extract_features, make_extractor
from xaiflow.models import build_model
from xaiflow.models.catalog import ModelCatalog
from xaiflow.models.checkpoint import save_checkpoint
from xaiflow.runtime import ClusterConfig, dask_client

EXTRACTORS = {
    "glcm": {"distances": [1, 2, 4, 8, 16]},
    "lbp": {"radii": [1, 2, 3]},
    "twopoint": {"r_max": 48},
    "cnn": {"layers": ["block2", "block3", "block4"], "pooling": ["mean", "max"]},
}


#: id of the seeded, untrained small_cnn checkpoint put into the scratch workspace when no --model is given
UNTRAINED = "untrained-small-cnn"


def scratch_copy(workspace: str, dataset: str, target: Path, model: str | None) -> tuple[str, str]:
    """A workspace holding only a copy of ``images/<dataset>`` (zarr v3: folders + zarr.json) and one
    model in its catalog: a copy of the workspace's ``model`` (an id or unique prefix), else a seeded,
    untrained small_cnn. Returns the scratch workspace and the model's id there."""
    src = Path(workspace)
    (target / schema.IMAGES).mkdir(parents=True)
    for rel in ("zarr.json", f"{schema.IMAGES}/zarr.json"):
        shutil.copy(src / rel, target / rel)
    shutil.copytree(src / schema.IMAGES / dataset, target / schema.IMAGES / dataset)
    models = ModelCatalog(target).directory
    if model is None:
        torch.manual_seed(0)
        save_checkpoint(models / UNTRAINED, build_model("small_cnn", 6), {"train": {}})
        return str(target), UNTRAINED
    entry = ModelCatalog(workspace).get(model)
    shutil.copytree(entry.directory, models / entry.model_id)
    return str(target), entry.model_id


def plain_loop(workspace: str, dataset: str, name: str, params: dict) -> float:
    """Seconds for one process reading every chunk and transforming it, one after the other."""
    images = store.open_group(workspace, schema.group_path(schema.IMAGES, dataset))[schema.IMAGE]
    chunk = images.data.chunksize[0]
    start = time.perf_counter()
    extractor = make_extractor(workspace, name, params)
    for i in range(0, images.shape[0], chunk):
        extractor.transform(images.data[i:i + chunk].compute(scheduler="synchronous"))
    return time.perf_counter() - start


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("-w", "--workspace", required=True)
    ap.add_argument("--dataset", default="uhcs")
    ap.add_argument("--model", default=None, help="model id in the workspace (default: untrained small_cnn)")
    ap.add_argument("--workers", type=int, default=available_cpus())
    args = ap.parse_args()
    n = store.open_group(args.workspace, schema.group_path(schema.IMAGES, args.dataset)).sizes[schema.SAMPLE]
    with tempfile.TemporaryDirectory() as tmp:
        ws, model = scratch_copy(args.workspace, args.dataset, Path(tmp) / "scratch.zarr", args.model)
        threads = set_torch_threads(None)
        print(f"{n} images of {args.dataset}; plain loop: 1 process, torch threads {threads}; "
              f"dask: {args.workers} worker processes x 1 thread; load average {os.getloadavg()[0]:.1f}")
        t0 = time.perf_counter()
        with dask_client(ClusterConfig(kind="local", n_workers=args.workers, threads_per_worker=1,
                                       dashboard_address=None)) as client:
            print(f"cluster start-up {time.perf_counter() - t0:.1f} s (not counted)")
            print(f"{'extractor':<10}{'plain img/s':>12}{'dask img/s':>12}{'ratio':>8}")
            totals = np.zeros(2)
            for name, params in EXTRACTORS.items():
                params = {**params, "model": model} if name == "cnn" else params  # a model id of the catalog
                plain = plain_loop(ws, args.dataset, name, params)
                start = time.perf_counter()
                extract_features(ws, args.dataset, name, params, client=client)
                dask = time.perf_counter() - start
                totals += (plain, dask)
                print(f"{name:<10}{n / plain:>12.1f}{n / dask:>12.1f}{plain / dask:>7.2f}x")
            print(f"{'all':<10}{4 * n / totals[0]:>12.1f}{4 * n / totals[1]:>12.1f}{totals[0] / totals[1]:>7.2f}x"
                  f"   (load average now {os.getloadavg()[0]:.1f})")


if __name__ == "__main__":
    main()
