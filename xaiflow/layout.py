"""The files of a group: Zarr chunks inside Zarr v3 shards, along samples.

A chunk (``chunk_size`` samples) is what a read fetches and what Dask sees when a group is
opened; a shard is one file holding consecutive chunks of an array. Without shards every chunk
of every array is a file of its own: images in chunks of 64 are 157 files per 10^4 images, and
each attribution method adds a chunk to four arrays per image chunk (maps, targets, non-finite and
done flags: the saliency group chunks them (S, 1, ...) along its method axis, :mod:`xaiflow.saliency`),
so eleven methods write ~7,000 files per 10^4 images and over a million at 10^6, more than shared
cluster file systems handle well. The maps are sharded along samples like any array; the flags and
targets of a method are one chunk per shard of samples.

A write must cover whole shards: a partial write rewrites the shard's file, so two tasks writing
one shard would race. So the shard is a write job's unit (one chunk task per shard, see
:mod:`xaiflow.jobs`), and a group's arrays share one shard size along samples. Small groups are
not sharded (a task per chunk keeps every worker busy on a few hundred images); from
:data:`AUTO_FROM_CHUNKS` chunks on, ``auto`` puts up to :data:`MAX_CHUNKS_PER_SHARD` chunks and
about :data:`SHARD_BYTES` in a shard, and attribution maps of expensive methods fewer (at most
:data:`EVALS_PER_SHARD` model evaluations per shard). Groups written before shards existed (or small ones) have
none: their unit is the chunk, as before.
"""

from __future__ import annotations

import math
import os
from typing import Literal

import zarr

from xaiflow import store

#: ``auto`` shards arrays of at least this many chunks
AUTO_FROM_CHUNKS = 64
#: ``auto``: chunks per shard at most (a shard is one task's writes)
MAX_CHUNKS_PER_SHARD = 16
#: ``auto``: bytes of one shard at most (one task holds a shard of each array it writes)
SHARD_BYTES = 64 * 2**20
#: ``auto``: model evaluations one shard's task runs at most (attribution: Grad-CAM at 64 px chunks
#: gets the full 16 chunks per shard, LIME with 500 samples 2, occlusion with 576 windows 1)
EVALS_PER_SHARD = 65_536

ShardSetting = int | Literal["auto"]


def chunks_per_shard(setting: ShardSetting, n_samples: int, chunk_size: int, sample_bytes: int,
                     evaluations_per_sample: int = 1) -> int:
    """Chunks per shard for an array of ``n_samples`` samples of ``sample_bytes`` each, written by tasks
    that run ``evaluations_per_sample`` model evaluations per sample: ``setting`` when it is a
    number, else the ``auto`` rule of the module docstring, with at most :data:`EVALS_PER_SHARD`
    evaluations per shard (an expensive method's task stays short). 1: no shards."""
    if setting != "auto":
        return max(1, int(setting))
    n_chunks = math.ceil(n_samples / chunk_size)
    if n_chunks < AUTO_FROM_CHUNKS:
        return 1
    by_bytes = SHARD_BYTES // max(1, chunk_size * sample_bytes)
    by_cost = EVALS_PER_SHARD // max(1, chunk_size * evaluations_per_sample)
    return int(max(1, min(MAX_CHUNKS_PER_SHARD, by_bytes, by_cost)))


def sample_encoding(chunk_size: int, per_shard: int, item_shape: tuple[int, ...]) -> dict[str, tuple[int, ...]]:
    """The Zarr encoding of an array indexed by sample, then ``item_shape``: chunks of ``chunk_size``
    samples, in shards of ``per_shard`` chunks when that is more than one."""
    encoding = {"chunks": (chunk_size, *item_shape)}
    if per_shard > 1:
        encoding["shards"] = (chunk_size * per_shard, *item_shape)
    return encoding


def write_unit(workspace: str | os.PathLike[str], path: str) -> int:
    """Samples one write covers in the stored array at ``path`` (e.g. ``images/uhcs/image``): its
    shard along samples, or its chunk when it has no shards."""
    arr = zarr.open_array(store.location(workspace), path=path, mode="r", zarr_format=3)
    return int((arr.shards or arr.chunks)[0])


def chunk_unit(workspace: str | os.PathLike[str], path: str) -> int:
    """Samples in one chunk (not shard) of the stored array at ``path``: the unit of groups computed for a
    subset of samples, which stay unsharded (a task per image chunk, files only where samples were chosen)."""
    return int(zarr.open_array(store.location(workspace), path=path, mode="r", zarr_format=3).chunks[0])
