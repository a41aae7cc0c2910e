"""Concurrent region reads/writes and the per-process cache of opened arrays (real Zarr on disk)."""

import os
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
import zarr

from xaiflow import regions


def _store(path, n=32, chunk=8):
    root = zarr.open_group(str(path), mode="w", zarr_format=3)
    root.create_array("g/maps", shape=(n, 4, 4), chunks=(chunk, 4, 4), dtype="f4", fill_value=np.nan)
    root.create_array("g/done", shape=(n,), chunks=(chunk,), dtype="bool", fill_value=False)
    return root


def test_write_then_read_a_region_of_several_arrays(tmp_path):
    _store(tmp_path / "ws.zarr")
    arrays = regions.open_arrays(tmp_path / "ws.zarr", ["g/maps", "g/done"])
    maps = np.arange(8 * 16, dtype=np.float32).reshape(8, 4, 4)
    regions.write([arrays["g/maps"], arrays["g/done"]], slice(8, 16), [maps, np.ones(8, bool)])
    # a plain synchronous reader sees exactly what was written, and nothing outside the region
    sync_root = zarr.open_group(str(tmp_path / "ws.zarr"), mode="r", zarr_format=3)
    np.testing.assert_array_equal(sync_root["g/maps"][8:16], maps)
    assert np.isnan(sync_root["g/maps"][:8]).all() and np.isnan(sync_root["g/maps"][16:]).all()
    assert sync_root["g/done"][:].sum() == 8
    got_maps, got_done = regions.read([arrays["g/maps"], arrays["g/done"]], slice(8, 16))
    np.testing.assert_array_equal(got_maps, maps)
    assert got_done.all()
    with pytest.raises(ValueError, match="2 arrays but 1 values"):
        regions.write([arrays["g/maps"], arrays["g/done"]], slice(0, 8), [maps])


def test_opened_arrays_are_reused_until_their_metadata_changes(tmp_path):
    root = _store(tmp_path / "ws.zarr")
    first = regions.open_arrays(tmp_path / "ws.zarr", ["g/maps"])["g/maps"]
    assert regions.open_arrays(tmp_path / "ws.zarr", ["g/maps"])["g/maps"] is first
    # recreated with another shape (e.g. after --overwrite): the stale handle must not be used
    del root["g/maps"]
    root.create_array("g/maps", shape=(48, 4, 4), chunks=(8, 4, 4), dtype="f4", fill_value=0.0)
    again = regions.open_arrays(tmp_path / "ws.zarr", ["g/maps"])["g/maps"]
    assert again is not first and again.shape == (48, 4, 4)
    regions.write([again], slice(40, 48), [np.ones((8, 4, 4), np.float32)])
    assert zarr.open_array(str(tmp_path / "ws.zarr"), path="g/maps", mode="r", zarr_format=3)[40:48].sum() == 128


def test_missing_array_and_group_paths_are_named(tmp_path):
    _store(tmp_path / "ws.zarr")
    with pytest.raises(KeyError, match="g/nope"):
        regions.open_arrays(tmp_path / "ws.zarr", ["g/nope"])
    with pytest.raises(KeyError, match="g is a group, not an array"):
        regions.open_arrays(tmp_path / "ws.zarr", ["g"])


def test_opened_arrays_are_bounded_least_recently_used_first(tmp_path, monkeypatch):
    monkeypatch.setattr(regions, "MAX_OPENED", 3)
    root = zarr.open_group(str(tmp_path / "ws.zarr"), mode="w", zarr_format=3)
    paths = [f"a{i}" for i in range(5)]
    for i, p in enumerate(paths):
        root.create_array(p, shape=(4,), chunks=(4,), dtype="i4", fill_value=i)
    first = regions.open_arrays(tmp_path / "ws.zarr", paths[:3])
    # a0 used again: a1 is now the least recently used, and the first to go
    assert regions.open_arrays(tmp_path / "ws.zarr", ["a0"])["a0"] is first["a0"]
    regions.open_arrays(tmp_path / "ws.zarr", ["a3"])
    opened = regions._process().opened
    assert [key[1] for key in opened] == ["a2", "a0", "a3"]
    # one call wanting more arrays than the bound still gets all of them, with their data
    arrays = regions.open_arrays(tmp_path / "ws.zarr", paths)
    assert len(opened) == 3
    got = regions.read([arrays[p] for p in paths], slice(0, 4))
    assert [int(g[0]) for g in got] == [0, 1, 2, 3, 4]
    assert regions.open_arrays(tmp_path / "ws.zarr", ["a1"])["a1"] is not first["a1"]


def test_regions_from_several_threads_at_once(tmp_path):
    _store(tmp_path / "ws.zarr", n=64, chunk=4)
    ws, paths = tmp_path / "ws.zarr", ["g/maps", "g/done"]

    def write_then_read(k):
        arrays = regions.open_arrays(ws, paths)
        region = slice(4 * k, 4 * k + 4)
        maps = np.full((4, 4, 4), k, np.float32)
        regions.write([arrays["g/maps"], arrays["g/done"]], region, [maps, np.ones(4, bool)])
        return regions.read([arrays["g/maps"]], region)[0]

    with ThreadPoolExecutor(max_workers=8) as pool:
        back = list(pool.map(write_then_read, range(16)))
    for k, maps in enumerate(back):
        np.testing.assert_array_equal(maps, np.full((4, 4, 4), k, np.float32))
    stored = zarr.open_group(str(ws), mode="r", zarr_format=3)
    np.testing.assert_array_equal(stored["g/maps"][:, 0, 0], np.repeat(np.arange(16, dtype=np.float32), 4))
    assert stored["g/done"][:].all()


FORK_SCRIPT = """
import multiprocessing, sys
import numpy as np, zarr
from xaiflow import regions

ws = sys.argv[1]
root = zarr.open_group(ws, mode="w", zarr_format=3)
root.create_array("g/maps", shape=(32, 4, 4), chunks=(8, 4, 4), dtype="f4", fill_value=np.nan)
arrays = regions.open_arrays(ws, ["g/maps"])  # the parent's loop runs, its arrays are cached


def child():
    assert not regions._process().opened  # the parent's arrays belong to the parent's loop
    mine = regions.open_arrays(ws, ["g/maps"])
    regions.write([mine["g/maps"]], slice(0, 8), [np.full((8, 4, 4), 7, np.float32)])


proc = multiprocessing.get_context("fork").Process(target=child)
proc.start()
proc.join(timeout=60)
assert proc.exitcode == 0, proc.exitcode
assert (regions.read([arrays["g/maps"]], slice(0, 8))[0] == 7).all()
print("ok")
"""


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork")
def test_a_forked_child_starts_its_own_loop(tmp_path):
    """In a fresh interpreter (forking this test session, with its Dask and torch threads, is not
    what is under test): a child forked after the parent opened arrays uses a loop of its own."""
    res = subprocess.run([sys.executable, "-c", FORK_SCRIPT, str(tmp_path / "ws.zarr")], capture_output=True,
                         text=True, timeout=120)
    assert res.returncode == 0 and res.stdout.strip() == "ok", res.stderr[-2000:]
