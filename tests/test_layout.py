"""Zarr v3 shards along samples (xaiflow.layout): fewer files, the same values, a task per shard."""

import os
import shutil

import numpy as np
import pytest
import zarr

from conftest import synthetic_dataset, train_tiny
from xaiflow import layout, store
from xaiflow.attribution.engine import run_attribution
from xaiflow.config import AttributionConfig, parse_config
from xaiflow.ingest import ingest_dataset
from xaiflow.saliency import open_saliency


def files(path) -> int:
    return sum(len(names) for _, _, names in os.walk(path))


def test_auto_shards_only_arrays_of_many_chunks_and_bounds_bytes_and_cost():
    assert layout.chunks_per_shard("auto", 63 * 64, 64, 4096) == 1  # few chunks: a file per chunk
    assert layout.chunks_per_shard("auto", 10_000, 64, 4096) == layout.MAX_CHUNKS_PER_SHARD
    big = 4 * 1024 * 1024  # 1024 px float32 maps: 256 MiB per chunk of 64
    assert layout.chunks_per_shard("auto", 10_000, 64, big) == 1
    assert layout.chunks_per_shard("auto", 10_000, 64, 4096, evaluations_per_sample=500) == 2  # LIME 500
    assert layout.chunks_per_shard(5, 10, 64, 4096) == 5  # an explicit setting wins
    assert layout.sample_encoding(8, 1, (4, 4)) == {"chunks": (8, 4, 4)}
    assert layout.sample_encoding(8, 3, (4, 4)) == {"chunks": (8, 4, 4), "shards": (24, 4, 4)}


@pytest.fixture(scope="module")
def sharded(tmp_path_factory, client):
    """(sharded, flat) workspaces of the same 72 images (chunks of 2): the first in shards of 4 chunks,
    with a model trained on it; the flat one unsharded."""
    root = tmp_path_factory.mktemp("layout")
    ws, flat = root / "ws.zarr", root / "flat.zarr"
    for path, shard_chunks in ((ws, 4), (flat, 1)):
        data = {**synthetic_dataset(chunk_size=2, specimens_per_class=4, images_per_specimen=6),
                "shard_chunks": shard_chunks}
        ingest_dataset(parse_config({"datasets": [data]}).datasets[0], path, client=client)
    return ws, flat, train_tiny(ws)


def test_images_in_shards_hold_the_same_values_in_fewer_files(sharded):
    ws, flat, _ = sharded
    image = zarr.open_array(str(ws), path="images/syn/image", mode="r")
    assert image.chunks[0] == 2 and image.shards[0] == 8
    assert layout.write_unit(ws, "images/syn/image") == 8 and layout.write_unit(flat, "images/syn/image") == 2
    a, b = store.open_group(ws, "images/syn"), store.open_group(flat, "images/syn")
    n = a.sizes["sample"]
    assert files(ws / "images/syn/image") == -(-n // 8) + 1 and files(flat / "images/syn/image") == n // 2 + 1
    np.testing.assert_array_equal(a.image.values, b.image.values)
    assert a.image.data.chunksize[0] == 2  # reads (and Dask) still see the chunks
    whole = store.open_group(ws, "images/syn", by_shard=True)  # for whole-collection queries: a task per shard file
    assert whole.image.data.chunksize[0] == 8 and whole.split.chunks is None  # coordinates read eagerly, once
    np.testing.assert_array_equal(whole.image.values, a.image.values)


def test_maps_in_shards_equal_unsharded_maps_one_task_per_shard(sharded, client, tmp_path):
    ws, _, model = sharded
    other = tmp_path / "other.zarr"
    shutil.copytree(ws, other)
    shutil.copytree(store.models_dir(ws), store.models_dir(other))
    cfg = {"dataset": "syn", "methods": ["saliency", "grad_cam"], "device": "cpu", "splits": ["train", "val", "test"]}
    res = run_attribution(ws, AttributionConfig(**cfg, shard_chunks=3), client=client)
    flat = run_attribution(other, AttributionConfig(**cfg, shard_chunks=1), client=client)
    n = store.open_group(ws, "images/syn").sizes["sample"]
    assert (res.chunks_run, flat.chunks_run) == (-(-n // 6), n // 2)  # a task per shard of 3 chunks of 2
    maps = zarr.open_array(str(ws), path=f"saliency/syn/{model}/saliency", mode="r")
    assert maps.chunks[0] == 2 and maps.shards[0] == 6
    group, flat_group = ws / f"saliency/syn/{model}", other / f"saliency/syn/{model}"
    assert files(group) < files(flat_group) / 2  # every array: a file per 6 samples instead of per 2
    a, b = open_saliency(ws, "syn", model), open_saliency(other, "syn", model)
    assert a.attrs["status"] == "complete" and bool(a.done.all())
    np.testing.assert_array_equal(a.saliency.values, b.saliency.values)
    # a method added later goes into the group's shards (a shard holds one method's maps)
    run_attribution(ws, AttributionConfig(**{**cfg, "methods": ["input_x_gradient"]}, shard_chunks=1), client=client)
    maps = zarr.open_array(str(ws), path=f"saliency/syn/{model}/saliency", mode="r")
    assert maps.shape[1] == 3 and maps.shards[:2] == (6, 1)
