import numpy as np
import pytest

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
