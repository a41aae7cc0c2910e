"""The workspace for a plain xarray/zarr user: every group a workspace holds opens with ``xr.open_zarr(ws,
group=g)`` (default ``consolidated=None``) and ``zarr.open_group`` in a fresh process that never imports
xaiflow, with warnings as errors: consolidated metadata kept fresh, correct dims, CF ``long_name``/``units``,
integer samples with ``sample_id``, y/x pixel and physical coordinates, OME-Zarr (NGFF 0.5) metadata on
the image and mask groups, checked against the spec's JSON schemas. And a workspace written before all
this (string ``sample`` index) still opens through xaiflow as it did."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import ome_zarr_io
import pytest
import xarray as xr
from ome_zarr_io import OMEZarrValidator

from xaiflow import annotations, store
from xaiflow import human as hm
from xaiflow.attribution.engine import run_attribution
from xaiflow.config import AttributionConfig
from xaiflow.features.extract import extract_features
from xaiflow.metrics.runner import run_metrics
from xaiflow.plugins import PluginSpec
from xaiflow.predict import predict_dataset
from xaiflow.studies.report import store_study


@pytest.fixture(scope="module")
def workspace(learned, client, tmp_path_factory):
    """A copy of the shared ``learned`` workspace (images, masks, a model) with one group of every other
    kind, each made by xaiflow's own writer: predictions, maps, a metric, features, a study, annotations
    and a human-vs-model study."""
    source, model = learned
    ws = tmp_path_factory.mktemp("plain") / "ws.zarr"
    # only the images and masks: other tests of this process may have added groups to the shared workspace
    shutil.copytree(source, ws, ignore=lambda d, names: [n for n in names if Path(d) == Path(source)
                                                          and n not in ("images", "masks", "zarr.json")])
    store.consolidate(ws)
    shutil.copytree(store.models_dir(source), store.models_dir(ws))
    predict_dataset(ws, model, "syn", client=client)
    run_attribution(ws, AttributionConfig(dataset="syn", model=model, device="cpu", splits=["test"],
                                          methods=[PluginSpec(name="saliency")]), client=client)
    run_metrics(ws, "syn", model, ["sparseness"], device="cpu", client=client)
    extract_features(ws, "syn", "lbp", client=client)
    store_study(ws, "syn", "toy", xr.Dataset({"accuracy": (("k",), np.array([0.5, 0.75]))}, coords={"k": [1, 2]}))
    images = store.open_group(ws, "images/syn")
    masks = store.open_group(ws, "masks/syn")
    test = np.flatnonzero(store.strings(images.split.values) == "test")[:2]
    for i in test:
        annotations.write_annotation(ws, "syn", str(images.sample.values[i]), "alice", confidence=1.0, seconds=3,
                                     label=str(images.label.values[i]), region=masks.mask.values[i] == 1)
    hm.run_study(ws, "syn", model, n_boot=20, seed=0)
    return ws, model


#: run in a fresh interpreter with -W error: opens every group with plain xarray and zarr, reports what it saw
PLAIN_READER = textwrap.dedent('''
    import json, sys
    import numpy as np, xarray as xr, zarr

    ws, groups = sys.argv[1], json.loads(sys.argv[2])
    seen = {}
    for g in groups:
        ds = xr.open_zarr(ws, group=g)  # consolidated=None: xarray's default, warns without consolidated metadata
        z = zarr.open_group(ws, path=g, mode="r")
        info = {"sizes": dict(ds.sizes), "dims": {k: list(v.dims) for k, v in ds.variables.items()},
                "attrs": {k: {a: str(v.attrs[a]) for a in ("long_name", "units") if a in v.attrs}
                          for k, v in ds.variables.items()},
                "group_attrs": json.loads(json.dumps(dict(z.attrs))), "arrays": sorted(z.array_keys()),
                "sample_dtype": str(ds["sample"].dtype) if "sample" in ds.coords else None}
        if "sample_id" in ds.coords:  # each sample's number (its position in the dataset) with its id
            info["numbered"] = dict(zip(ds["sample"].values.tolist(), ds["sample_id"].values.tolist()))
            n = int(ds["sample"][-1])
            info["sel"] = [int(ds.sel(sample=n)["sample"]), str(ds.sel(sample=n)["sample_id"].values),
                           int(ds.set_xindex("sample_id").sel(sample_id=info["numbered"][n])["sample"])]
        if "split" in ds.coords and "predicted" in ds:  # open_zarr's coordinates are dask: compute a condition
            eager = xr.open_dataset(ws, group=g, engine="zarr")  # lazy numpy, no dask
            info["test_predicted"] = [int(eager.predicted.where(eager.split == "test", drop=True).sizes["sample"]),
                                      int(ds.predicted.where((ds.split == "test").compute(), drop=True).sizes["sample"])]
            info["test_count"] = int((ds["split"].values == "test").sum())
        if "y_um" in ds.coords:
            info["y_um_row1"] = float(ds["y_um"].isel(sample=0, y=1))
        for name in ("image", "mask"):
            if name in ds:
                info["yx"] = [ds[name].isel(sample=0)["y"].values[:2].tolist(), ds["x"].values[-1].item()]
        seen[g] = info
    print(json.dumps({"groups": seen, "xaiflow_imported": "xaiflow" in sys.modules}))
''')


def plain_view(ws, groups: list[str]) -> dict:
    """What a fresh process without xaiflow sees, with every warning an error."""
    done = subprocess.run([sys.executable, "-W", "error", "-c", PLAIN_READER, str(ws), json.dumps(groups)],
                          capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode == 0, done.stderr[-3000:]
    out = json.loads(done.stdout)
    assert not out["xaiflow_imported"]
    return out["groups"]


def test_every_group_opens_with_plain_xarray_without_warning(workspace):
    ws, model = workspace
    groups = store.list_groups(ws)
    kinds = {g.split("/")[0] for g in groups}
    assert {"images", "masks", "predictions", "saliency", "metrics", "features", "studies", "annotations",
            "human"} <= kinds, groups
    seen = plain_view(ws, groups)
    n = store.open_group(ws, "images/syn").sizes["sample"]
    ids = store.strings(store.open_group(ws, "images/syn").sample.values)
    for g, info in seen.items():
        if g.startswith("studies/"):
            continue
        # integer positions on disk, ids beside them; sel(sample=...) and the id index work
        assert info["sample_dtype"] == "int64", g
        assert info["dims"]["sample_id"] == ["sample"], g
        assert all(ids[int(k)] == v for k, v in info["numbered"].items()), g  # one number, one micrograph
        last = int(list(info["numbered"])[-1])
        assert info["sel"] == [last, ids[last], last], g
        if info["sizes"]["sample"] == n:  # a group of every sample: 0..N-1 in the images' order
            assert list(map(int, info["numbered"])) == list(range(n)), g
        for name, dims in info["dims"].items():  # no stray dimension named after a per-sample variable
            assert name not in info["sizes"] or dims == [name], (g, name, dims)
        for name in info["dims"]:  # CF attrs on every variable
            assert "long_name" in info["attrs"][name], (g, name)
        for dim in ("y", "x"):
            if dim in info["sizes"]:
                assert info["dims"][dim] == [dim] and info["attrs"][dim]["units"] == "1", g
                assert info["dims"][dim + "_um"] == ["sample", dim] and info["attrs"][dim + "_um"]["units"] == "um", g
    images = seen["images/syn"]
    assert images["sizes"] == {"sample": n, "y": 48, "x": 48}
    assert images["attrs"]["image"] == {"long_name": "micrograph intensity", "units": "1"}
    assert images["attrs"]["um_per_px"]["units"] == "um" and "pixel size" in images["attrs"]["um_per_px"]["long_name"]
    assert images["yx"] == [[0, 1], 47] and "yincrease=False" in images["attrs"]["y"]["long_name"]
    um = float(store.open_group(ws, "images/syn").um_per_px.values[0])
    assert images["y_um_row1"] == pytest.approx(um)
    predictions = seen[f"predictions/syn/{model}"]
    assert set(predictions["sizes"]) == {"sample", "class"} and predictions["dims"]["split"] == ["sample"]
    assert predictions["test_predicted"] == [predictions["test_count"]] * 2  # where(split == "test", drop=True)
    assert predictions["test_count"] > 0
    assert predictions["attrs"]["logits"]["units"] == "1"
    assert set(seen["studies/syn/toy"]["sizes"]) == {"k"}  # a study keeps its own dims
    assert seen[f"saliency/syn/{model}"]["sizes"]["sample"] == n  # B's tidy array: only what this store owns


def test_image_and_mask_groups_carry_valid_ngff_metadata(workspace):
    """OME-Zarr 0.5: the group attributes validate against the spec's JSON schemas (image, and label for the
    masks); the axes name the array's dimensions; the y/x scale is the shared pixel size in micrometres."""
    ws, _ = workspace
    import zarr

    validator = OMEZarrValidator("0.5")
    images = dict(zarr.open_group(str(ws), path="images/syn", mode="r").attrs)
    masks = dict(zarr.open_group(str(ws), path="masks/syn", mode="r").attrs)
    assert validator.validate_image_metadata(images)
    assert validator.validate_image_metadata(masks) and validator.validate_label_metadata(masks)
    assert validator.get_validation_errors(images, "ome_zarr") == []
    for group in ("images/syn", "masks/syn"):  # the fileset too: versions, levels, axes against the arrays
        report = ome_zarr_io.validate(str(ws / group))
        assert report.is_valid and [a["name"] for a in report.axes] == ["sample", "y", "x"], str(report)
    multiscale = images["ome"]["multiscales"][0]
    array = zarr.open_array(str(ws), path=f"images/syn/{multiscale['datasets'][0]['path']}", mode="r")
    assert [a["name"] for a in multiscale["axes"]] == list(array.metadata.dimension_names) == ["sample", "y", "x"]
    assert [a.get("type") for a in multiscale["axes"]] == [None, "space", "space"]
    um = float(store.open_group(ws, "images/syn").um_per_px.values[0])
    assert multiscale["datasets"][0]["coordinateTransformations"] == [{"type": "scale", "scale": [1.0, um, um]}]
    assert multiscale["axes"][1]["unit"] == "micrometer"
    label = masks["ome"]["image-label"]
    assert label["source"] == {"image": "../../images/syn"}
    assert [p["class"] for p in label["properties"]] == ["matrix", "structure", "shortcut"]


def test_ngff_scale_is_unitless_where_pixel_sizes_differ():
    from xaiflow import ngff

    ds = xr.Dataset({"image": (("sample", "y", "x"), np.zeros((2, 4, 4), np.uint8))},
                    coords={"um_per_px": ("sample", [0.1, 0.2])})
    multiscale = ngff.image_attrs(ds, "images/mixed")["multiscales"][0]
    assert multiscale["datasets"][0]["coordinateTransformations"][0]["scale"] == [1.0, 1.0, 1.0]
    assert "unit" not in multiscale["axes"][1]
    assert OMEZarrValidator("0.5").validate_image_metadata({"ome": ngff.image_attrs(ds, "images/mixed")})


def test_xaiflow_readers_give_string_sample_ids(workspace):
    ws, model = workspace
    images = store.open_group(ws, "images/syn")
    ids = store.strings(images.sample.values)
    assert images.sample.dtype.kind in "OTU" and "sample_id" not in images.coords and "y_um" not in images.coords
    assert images.sel(sample=ids[2]).label.values == images.label.values[2]
    assert "ome" not in images.attrs  # stored for NGFF readers only: a dataset made from the images must not copy it
    tree = store.open_workspace(ws)
    assert store.strings(tree[f"predictions/syn/{model}"].ds.sample.values).tolist() == ids.tolist()
    assert annotations.open_annotations(ws, "syn").sample.values.tolist() == ids.tolist()
    again = store.for_disk(images)  # idempotent round trip
    assert again.sample.values.tolist() == list(range(len(ids))) and store.from_disk(again).sample.values.tolist() == \
        ids.tolist()


def test_a_workspace_written_before_keeps_opening(workspace, tmp_path):
    """A group in the layout before the stored form (string ``sample`` index, no ``sample_id``, no y/x
    coordinates, not consolidated) opens through xaiflow as before, and a new group made from it is stored
    in the new form."""
    ws, model = workspace
    images = store.open_group(ws, "images/syn").drop_vars(["y", "x"])
    old = tmp_path / "old.zarr"
    images.to_zarr(old, group="images/syn", consolidated=False, zarr_format=3)
    shutil.copytree(store.models_dir(ws), store.models_dir(old))
    stored = xr.open_zarr(old, group="images/syn", consolidated=False)
    assert stored.sample.dtype.kind in "OTU" and "sample_id" not in stored.coords  # the old layout indeed
    reopened = store.open_group(old, "images/syn")
    assert store.strings(reopened.sample.values).tolist() == store.strings(images.sample.values).tolist()
    tree = store.open_workspace(old)
    assert store.strings(tree["images/syn"].ds.sample.values).tolist() == store.strings(images.sample.values).tolist()
    group = predict_dataset(old, model, "syn")
    assert xr.open_zarr(old, group=group)["sample"].dtype == np.int64  # consolidated by the new write
    assert store.strings(store.open_group(old, group).sample.values).tolist() == \
        store.strings(images.sample.values).tolist()


def test_xaiflow_never_trusts_consolidated_metadata(tmp_path):
    """A group written behind xaiflow's back (plain to_zarr, no consolidation) is missing from the root's
    consolidated metadata, which a plain reader trusts; xaiflow's own readers list and open it all the
    same, and store.consolidate brings the plain view up to date."""
    import warnings

    import zarr

    ws = tmp_path / "ws.zarr"
    study = xr.Dataset({"accuracy": (("k",), np.array([0.5, 0.75]))}, coords={"k": [1, 2]})
    store.write_group(ws, "studies/x/a", study)
    study.to_zarr(ws, group="studies/x/b", mode="w", consolidated=False, zarr_format=3)
    with pytest.raises(KeyError):
        zarr.open_consolidated(str(ws), mode="r")["studies/x/b"]
    assert store.list_groups(ws) == ["studies/x/a", "studies/x/b"]
    xr.testing.assert_identical(store.open_group(ws, "studies/x/b", check_complete=False).load(), study)
    store.consolidate(ws)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert xr.open_zarr(ws, group="studies/x/b").accuracy.values.tolist() == [0.5, 0.75]
