"""Ingestion into a real Zarr workspace through a real Dask cluster (worker processes)."""

import shutil

import numpy as np
import pytest
import zarr
from PIL import Image

import xaiflow
from xaiflow import schema, store
from xaiflow.config import parse_config
from xaiflow.ingest import IngestError, ingest_dataset
from conftest import folder_config, write_folder_dataset


def dataset(cfg: dict):
    return parse_config({"datasets": [cfg]}).datasets[0]


def test_folder_ingest_coords_splits_and_provenance(folder_dataset, tmp_path, client):
    ws = tmp_path / "ws.zarr"
    res = ingest_dataset(dataset(folder_config(folder_dataset)), ws, client=client)
    assert (res.status, res.n_samples) == ("written", 12)
    ds = xaiflow.open_workspace(ws)["images/tiny"].ds
    schema.validate_images(ds, "images/tiny")
    assert ds.image.shape == (12, 32, 32) and ds.image.dtype == np.uint8
    assert ds.attrs["classes"] == ["a", "b"]
    assert set(ds.detector.values) == {"SE", "BSE"}
    # 48x64 source -> centred 48x48 window resampled to 32x32: pixel size grows by 1.5
    np.testing.assert_allclose(ds.um_per_px.values, ds.source_um_per_px.values * 1.5)
    assert set(ds.tile_x0.values) == {8} and set(ds.tile_h.values) == {48}
    prov = ds.attrs["provenance"]
    assert prov["xaiflow_version"] == xaiflow.__version__ and len(prov["config_hash"]) == 64
    # every specimen sits in exactly one split
    pairs = {(g, s) for g, s in zip(ds.group.values, ds.split.values)}
    assert len(pairs) == len(set(ds.group.values)) == 4
    # stored pixels equal the resampled source image
    src = np.asarray(Image.open(folder_dataset / "img/s1_2.png"))[:, 8:56]
    expected = np.asarray(Image.fromarray(src).resize((32, 32), Image.Resampling.BILINEAR))
    np.testing.assert_array_equal(ds.image.sel(sample="s1_2").values, expected)


def test_folder_ingest_stored_for_plain_xarray(folder_dataset, tmp_path, client):
    """On disk: integer samples with the ids beside them, pixel and per-sample physical coordinates (this
    folder mixes two pixel sizes), CF attributes (a metadata column named as one), and OME-Zarr axes
    without a unit (no pixel size shared by all samples)."""
    import xarray as xr

    ws = tmp_path / "ws.zarr"
    ingest_dataset(dataset(folder_config(folder_dataset)), ws, client=client)
    plain = xr.open_zarr(ws, group="images/tiny").load()
    ids = store.strings(store.open_group(ws, "images/tiny").sample.values)
    assert plain.sample.values.tolist() == list(range(12)) and plain.sample_id.values.tolist() == ids.tolist()
    um = plain.um_per_px.values
    assert len(set(um.tolist())) == 2
    np.testing.assert_allclose(plain.y_um.values, um[:, None] * np.arange(32))
    assert plain.x_um.dims == ("sample", "x") and plain.x_um.attrs["units"] == "um"
    assert plain.detector.attrs == {"long_name": "detector"}
    np.testing.assert_array_equal(plain.image.sel(sample=5).values, store.open_group(ws, "images/tiny").image[5])
    scale = store.group_attrs(ws, "images/tiny")["ome"]["multiscales"][0]
    assert scale["datasets"][0]["coordinateTransformations"][0]["scale"] == [1.0, 1.0, 1.0]
    assert "unit" not in scale["axes"][1]


def test_reingest_is_idempotent_and_other_config_refused(folder_dataset, tmp_path, client):
    ws = tmp_path / "ws.zarr"
    cfg = dataset(folder_config(folder_dataset))
    ingest_dataset(cfg, ws, client=client)
    chunk_files = sorted((ws / "images/tiny/image").rglob("*"))
    mtimes = [p.stat().st_mtime_ns for p in chunk_files]
    assert ingest_dataset(cfg, ws, client=client).status == "up-to-date"
    assert [p.stat().st_mtime_ns for p in chunk_files] == mtimes
    other = dataset(folder_config(folder_dataset, geometry={"size": [24, 24]}))
    with pytest.raises(IngestError, match="different config.*--overwrite"):
        ingest_dataset(other, ws, client=client)
    assert store.open_group(ws, "images/tiny").image.shape[1:] == (32, 32)
    assert ingest_dataset(other, ws, overwrite=True, client=client).status == "written"
    assert store.open_group(ws, "images/tiny").image.shape[1:] == (24, 24)


def test_killed_ingest_resumes_only_missing_chunks(folder_dataset, tmp_path, client):
    ws = tmp_path / "ws.zarr"
    cfg = dataset(folder_config(folder_dataset))
    ingest_dataset(cfg, ws, client=client)
    full = store.open_group(ws, "images/tiny").image.values
    # simulate a run killed after chunk 0: chunks 1-2 (samples 4-11) unflagged and zeroed, status incomplete
    group = "images/tiny"
    store.write_region(ws, group, schema.DONE, 4, np.zeros(8, bool))
    store.write_region(ws, group, schema.IMAGE, 4, np.zeros((8, 32, 32), np.uint8))
    store.set_attrs(ws, group, status=schema.STATUS_INCOMPLETE)
    with pytest.raises(store.WorkspaceError, match="incomplete"):
        store.open_group(ws, group)
    chunk0 = ws / group / "image" / "c" / "0" / "0" / "0"
    before = chunk0.stat().st_mtime_ns
    res = ingest_dataset(cfg, ws, client=client)
    assert res.status == "resumed"
    assert chunk0.stat().st_mtime_ns == before  # the finished chunk was not rewritten
    np.testing.assert_array_equal(store.open_group(ws, group).image.values, full)


def test_corrupt_image_raises_naming_file_and_writes_nothing(folder_dataset, tmp_path, client):
    bad = folder_dataset / "img/s2_1.png"
    bad.write_bytes(bad.read_bytes()[:60])  # truncated PNG
    ws = tmp_path / "ws.zarr"
    with pytest.raises(IngestError) as e:
        ingest_dataset(dataset(folder_config(folder_dataset)), ws, client=client)
    assert "s2_1.png" in str(e.value) and "labels.csv row" in str(e.value)
    assert not store.group_exists(ws, "images/tiny")


def test_skip_records_bad_items_and_ingests_the_rest(folder_dataset, tmp_path, client):
    (folder_dataset / "img/s0_0.png").write_bytes(b"not a png at all")
    (folder_dataset / "img/s3_1.png").unlink()
    ws = tmp_path / "ws.zarr"
    res = ingest_dataset(dataset(folder_config(folder_dataset, on_error="skip")), ws, client=client)
    assert (res.n_samples, res.n_skipped) == (10, 2)
    ds = store.open_group(ws, "images/tiny")
    assert "s0_0" not in ds.sample.values and "s3_1" not in ds.sample.values
    decode, missing = ds.attrs["skipped"]
    assert decode["id"] == "s0_0" and decode["file"].endswith("s0_0.png") and "not a readable image" in decode["reason"]
    assert missing["id"] == "s3_1" and "row 12: image file" in missing["reason"] and "does not exist" in missing["reason"]


def test_failed_overwrite_keeps_existing_dataset(folder_dataset, tmp_path, client):
    ws = tmp_path / "ws.zarr"
    ingest_dataset(dataset(folder_config(folder_dataset)), ws, client=client)
    before = store.open_group(ws, "images/tiny").image.values
    (folder_dataset / "img/s3_2.png").write_bytes(b"broken")
    with pytest.raises(IngestError, match="s3_2.png"):
        ingest_dataset(dataset(folder_config(folder_dataset, chunk_size=8)), ws, overwrite=True, client=client)
    np.testing.assert_array_equal(store.open_group(ws, "images/tiny").image.values, before)


@pytest.mark.parametrize(
    "edit, overrides, message",
    [
        (lambda root: (root / "img/s1_0.png").unlink(), {}, r"labels.csv row 5: image file .*s1_0.png does not exist"),
        (None, {"source": {"columns": {"file": "file", "label": "lable"}}}, r"column 'lable' \(columns.label\) not found; available columns: file, label"),
        (None, {"source": {"classes": ["a"]}}, r"labels.csv row 5: unknown label 'b'; expected one of \['a'\]"),
        (None, {"geometry": {"size": [64, 64], "mode": "crop"}}, r"s0_0.png: image of 48x64 px is smaller than the requested crop 64x64"),
        (lambda root: (root / "labels.csv").write_text("file,label\nimg/s0_0.png,a\n,b\n"), {"source": {"columns": {"file": "file", "label": "label"}}}, r"row 3: column 'file' is empty"),
        (lambda root: (root / "labels.csv").write_text((root / "labels.csv").read_text().replace("detector", "sample_id", 1)),
         {"source": {"columns": {"file": "file", "label": "label", "metadata": ["sample_id"]}}},
         r"metadata column 'sample_id' clashes with a reserved coordinate name"),
    ],
    ids=["missing-file", "misnamed-column", "unknown-label", "smaller-than-crop", "empty-cell", "reserved-column"],
)
def test_bad_input_errors(folder_dataset, tmp_path, client, edit, overrides, message):
    if edit:
        edit(folder_dataset)
    cfg = folder_config(folder_dataset)
    for key, value in overrides.items():
        cfg[key] = {**cfg[key], **value}
    with pytest.raises(IngestError, match=message):
        ingest_dataset(dataset(cfg), tmp_path / "ws.zarr", client=client)
    assert not store.group_exists(tmp_path / "ws.zarr", "images/tiny")


def test_target_um_per_px_resamples_to_one_pixel_size(tmp_path, client):
    root = write_folder_dataset(tmp_path / "d", size=(96, 96))
    cfg = folder_config(root, geometry={"size": [32, 32], "target_um_per_px": 0.25})
    ingest_dataset(dataset(cfg), tmp_path / "ws.zarr", client=client)
    ds = store.open_group(tmp_path / "ws.zarr", "images/tiny")
    np.testing.assert_allclose(ds.um_per_px.values, 0.25)
    # 0.1 um/px sources need 80 px windows, 0.2 um/px sources need 40 px
    assert set(zip(ds.source_um_per_px.values.round(3), ds.tile_h.values)) == {(0.1, 80), (0.2, 40)}
    too_fine = folder_config(root, name="t2", geometry={"size": [32, 32], "target_um_per_px": 0.5})
    with pytest.raises(IngestError, match="smaller than the field of view"):
        ingest_dataset(dataset(too_fine), tmp_path / "ws.zarr", client=client)


def test_panorama_tiles_stitch_back(tmp_path, client):
    rng = np.random.default_rng(1)
    pano = rng.integers(0, 65535, (100, 140), dtype=np.uint16)
    (tmp_path / "p").mkdir()
    import tifffile

    tifffile.imwrite(tmp_path / "p" / "site.tif", pano)
    cfg = {"name": "pano", "source": {"kind": "panorama", "root": str(tmp_path / "p"), "tile": [40, 40], "overlap": 8},
           "geometry": {"size": [40, 40]}, "dtype": "uint16", "chunk_size": 5}
    ingest_dataset(dataset(cfg), tmp_path / "ws.zarr", client=client)
    ds = store.open_group(tmp_path / "ws.zarr", "images/pano")
    canvas = np.zeros_like(pano)
    for img, y0, x0 in zip(ds.image.values, ds.tile_y0.values, ds.tile_x0.values):
        canvas[y0:y0 + 40, x0:x0 + 40] = img
    np.testing.assert_array_equal(canvas, pano)  # every pixel covered, at the right place
    assert ds.sizes["sample"] == 3 * 5  # y: 0,32,60; x: 0,32,64,96,100


def test_synthetic_ingest_writes_aligned_masks(tmp_path, client):
    cfg = {"name": "syn", "source": {"kind": "synthetic", "specimens_per_class": 2, "images_per_specimen": 2,
                                     "size": [64, 64], "shortcut": {"probability": 1.0}},
           "geometry": {"size": [64, 64]}, "chunk_size": 4}
    ingest_dataset(dataset(cfg), tmp_path / "ws.zarr", client=client)
    images = store.open_group(tmp_path / "ws.zarr", "images/syn")
    masks = store.open_group(tmp_path / "ws.zarr", "masks/syn")
    schema.validate_masks(masks, images, "masks/syn")
    assert masks.attrs["mask_classes"][0] == "matrix"
    img, mask = images.image.values.astype(float), masks.mask.values
    assert (mask == 1).any(axis=(1, 2)).all() and (mask == 2).any(axis=(1, 2)).all()
    assert img[mask == 1].mean() > img[mask == 0].mean()
    assert len(images.attrs["classes"]) >= 4


def test_mask_folder_matched_by_file_name(folder_dataset, tmp_path, client):
    (folder_dataset / "masks").mkdir()
    for png in (folder_dataset / "img").glob("*.png"):
        m = np.zeros((48, 64), np.uint8)
        m[:, 32:] = 1
        Image.fromarray(m).save(folder_dataset / "masks" / png.name)
    cfg = folder_config(folder_dataset, source={"masks": {"dir": "masks", "classes": ["matrix", "carbide"]}})
    ingest_dataset(dataset(cfg), tmp_path / "ws.zarr", client=client)
    masks = store.open_group(tmp_path / "ws.zarr", "masks/tiny").mask.values
    assert (masks[:, :, 16:] == 1).all() and (masks[:, :, :15] == 0).all()
    (folder_dataset / "masks" / "s0_1.png").unlink()  # a micrograph without a mask is "not annotated"
    ingest_dataset(dataset({**cfg, "name": "tiny2"}), tmp_path / "ws.zarr", client=client)
    masks = store.open_group(tmp_path / "ws.zarr", "masks/tiny2")
    assert masks.has_mask.sel(sample="s0_1").item() is False and int(masks.has_mask.sum()) == 11


def test_resume_converts_a_group_with_per_chunk_flags(folder_dataset, tmp_path, client):
    """Groups written before per-sample flags hold `chunk_done(chunk)`: a resumed ingest converts
    them to `done(sample)` (each sample takes its chunk's flag) and rewrites only unflagged chunks."""
    ws = tmp_path / "ws.zarr"
    cfg = dataset(folder_config(folder_dataset))
    ingest_dataset(cfg, ws, client=client)
    group = "images/tiny"
    full = store.open_group(ws, group).image.values
    root = zarr.open_group(str(ws), path=group, mode="r+", zarr_format=3)
    shutil.rmtree(ws / group / schema.DONE)  # the old layout: one flag per chunk, chunk 0 written
    root.create_array(schema.LEGACY_CHUNK_DONE, shape=(3,), chunks=(1,), dtype=bool,
                      dimension_names=("chunk",))[:] = [True, False, False]
    store.write_region(ws, group, schema.IMAGE, 4, np.zeros((8, 32, 32), np.uint8))
    store.set_attrs(ws, group, status=schema.STATUS_INCOMPLETE)
    chunk0 = ws / group / "image" / "c" / "0" / "0" / "0"
    before = chunk0.stat().st_mtime_ns
    assert ingest_dataset(cfg, ws, client=client).status == "resumed"
    assert chunk0.stat().st_mtime_ns == before
    ds = store.open_group(ws, group)
    np.testing.assert_array_equal(ds.image.values, full)
    assert ds[schema.DONE].values.all() and schema.LEGACY_CHUNK_DONE not in ds and "chunk" not in ds.dims
