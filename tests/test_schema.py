import numpy as np
import pytest
import xarray as xr

from xaiflow import schema, store
from xaiflow.config import parse_config
from xaiflow.ingest import ingest_dataset
from conftest import folder_config


@pytest.fixture
def images(folder_dataset, tmp_path, client):
    ws = tmp_path / "ws.zarr"
    ingest_dataset(parse_config({"datasets": [folder_config(folder_dataset)]}).datasets[0], ws, client=client)
    return store.open_group(ws, "images/tiny").load()


def test_valid_group_passes(images):
    schema.validate_images(images, "images/tiny")


@pytest.mark.parametrize("break_it, variable, problem", [
    (lambda ds: ds.drop_vars("label"), "label", "is missing"),
    (lambda ds: ds.assign(image=ds.image.astype("int64")), "image", "dtype int64"),
    (lambda ds: ds.assign(image=ds.image.transpose("x", "y", "sample")), "image", "has dims"),
    (lambda ds: ds.assign_coords(split=("sample", np.where(ds.split == "train", "training", ds.split))), "split", "unknown split names"),
    (lambda ds: ds.assign_coords(split=("sample", np.array(["train"] * 11 + ["test"], object))), "split", "in two splits"),
    (lambda ds: ds.assign_coords(label_index=ds.label_index + 5), "label_index", "values outside"),
])
def test_violations_name_group_variable_problem(images, break_it, variable, problem):
    with pytest.raises(schema.SchemaError) as e:
        schema.validate_images(break_it(images), "images/tiny")
    assert e.value.group == "images/tiny" and e.value.variable == variable and problem in str(e.value)


def test_incomplete_group_is_refused(images):
    ds = images.copy()
    ds.attrs["status"] = "incomplete"
    with pytest.raises(schema.SchemaError, match="not complete"):
        schema.validate_images(ds, "images/tiny")


def test_masks_must_match_images(images):
    masks = images[["sample"]].assign(mask=(("sample", "y", "x"), np.zeros(images.image.shape, np.uint8)))
    masks.attrs.update(mask_classes=["matrix", "carbide"], status="complete")
    schema.validate_masks(masks, images)
    with pytest.raises(schema.SchemaError, match="shape 32x16 differs"):
        schema.validate_masks(masks.isel(x=slice(0, 16)), images)
    with pytest.raises(schema.SchemaError, match="sample ids differ"):
        schema.validate_masks(masks.isel(sample=slice(1, None)), images)


def test_group_names_are_checked():
    assert schema.group_path("images", "uhcs") == "images/uhcs"
    with pytest.raises(ValueError, match="invalid name"):
        schema.group_path("images", "a/b")


def test_stored_form_round_trip(images):
    """store.for_disk: integer samples (the positions given, else 0..N-1) with the ids in sample_id, y/x and
    per-sample physical coordinates, CF attributes from schema.CF_ATTRS unless the writer set its own;
    store.from_disk gives xaiflow's string index back; both idempotent."""
    ids = store.strings(images.sample.values).tolist()
    stored = store.for_disk(images.assign(image=images.image.assign_attrs(long_name="mine")))
    assert stored.sample.values.tolist() == list(range(12)) and stored.sample_id.values.tolist() == ids
    assert stored.image.attrs["long_name"] == "mine" and stored.image.attrs["units"] == "1"  # the writer's wins
    assert stored.um_per_px.attrs == {"long_name": schema.CF_ATTRS["um_per_px"][0], "units": "um"}
    np.testing.assert_allclose(stored.x_um.values, images.um_per_px.values[:, None] * np.arange(32))
    assert stored.y.values.tolist() == list(range(32)) and stored.y.attrs["units"] == "1"
    xr.testing.assert_identical(store.for_disk(stored), stored)
    back = store.from_disk(stored)
    assert store.strings(back.sample.values).tolist() == ids and not {"sample_id", "y_um", "x_um"} & set(back.coords)
    xr.testing.assert_identical(store.from_disk(back), back)
    subset = store.for_disk(images.isel(sample=[3, 7]), positions=[3, 7])
    assert subset.sample.values.tolist() == [3, 7] and subset.sample_id.values.tolist() == [ids[3], ids[7]]


def test_cf_units_are_udunits_spellings():
    """Units a CF reader (cf_units / UDUNITS-2) parses: no ad-hoc spellings such as "um/px" or "px"."""
    units = {u for _, u in schema.CF_ATTRS.values() if u is not None}
    assert units <= {"1", "um", "s"}, units
    assert all(long_name and long_name[0].islower() for long_name, _ in schema.CF_ATTRS.values())


def test_every_stored_name_of_the_inspections_and_metric_curves_gets_a_long_name():
    """CF long_name by name (schema.CF_ATTRS) or, for a metric's curves, by suffix with the metric named."""
    from xaiflow.schema import cf_attrs

    assert cf_attrs("road_random_morf_curve")["long_name"].startswith("road: model output along random orders")
    assert cf_attrs("region_perturbation_random_curve")["long_name"].startswith("region_perturbation: ")
    assert cf_attrs("road_fraction") == {"long_name": "road: fraction of the image perturbed", "units": "1"}
    for name in ("score", "cav_accuracy", "fis_map", "k_target", "survivor_weight", "pass_index", "transform"):
        assert cf_attrs(name)["long_name"], name
    assert cf_attrs("_curve") == {} and cf_attrs("unknown_name") == {}
