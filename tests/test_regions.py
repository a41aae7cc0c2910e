"""Concurrent region reads/writes and the per-process cache of opened arrays (real Zarr on disk)."""

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
