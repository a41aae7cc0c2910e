"""The expert annotation store (``annotations/<dataset>``): real Zarr store, real synthetic images."""

from __future__ import annotations

import threading

import numpy as np
import pytest
import xarray as xr
from conftest import synthetic_dataset

from xaiflow import annotations as ann


@pytest.fixture(scope="module")
def workspace(tmp_path_factory):
    from xaiflow.config import parse_config
    from xaiflow.ingest import ingest_dataset

    ws = tmp_path_factory.mktemp("annotations") / "ws.zarr"
    ingest_dataset(parse_config({"datasets": [synthetic_dataset(size=32)]}).datasets[0], ws)
    return ws


@pytest.fixture
def fresh(workspace):
    """The workspace with no annotations (each test starts from none)."""
    from xaiflow import store

    store.delete_group(workspace, ann.annotation_group("syn"))
    return workspace


def _ids(ws) -> list[str]:
    return xr.open_zarr(ws, group="images/syn", consolidated=False)["sample"].values.tolist()


def _box(y0: int, y1: int, x0: int, x1: int) -> np.ndarray:
    region = np.zeros((32, 32), bool)
    region[y0:y1, x0:x1] = True
    return region


def test_round_trip_and_plain_xarray(fresh):
    ids = _ids(fresh)
    ann.write_annotation(fresh, "syn", ids[4], "alice", label="lamellae", confidence=0.75, region=_box(2, 10, 3, 20),
                         seconds=12.5)
    ds = xr.open_zarr(fresh, group="annotations/syn", consolidated=False)  # plain xarray, no xaiflow reader
    assert ds.sizes == {"sample": len(ids), "annotator": 1, "y": 32, "x": 32}
    assert ds["sample"].values.tolist() == ids
    images = xr.open_zarr(fresh, group="images/syn", consolidated=False)
    assert ds["label"].values.tolist() == images["label"].values.tolist()
    assert ds["split"].values.tolist() == images["split"].values.tolist()
    assert ds["region"].dtype == np.uint8 and ds["region"].encoding["chunks"] == (1, 1, 32, 32)
    cell = ds.sel(sample=ids[4], annotator="alice")
    np.testing.assert_array_equal(cell["region"].values, _box(2, 10, 3, 20).astype(np.uint8))
    assert str(cell["annotated_class"].values) == "lamellae"
    assert float(cell["confidence"]) == 0.75 and float(cell["seconds"]) == 12.5
    assert bool(cell["done"]) and str(cell["annotated_at"].values).endswith("+00:00")
    other = ds.sel(sample=ids[5], annotator="alice")
    assert not bool(other["done"]) and str(other["annotated_class"].values) == ""
    assert np.isnan(float(other["confidence"])) and int(other["region"].sum()) == 0
    assert ds.attrs["classes"] == ["particles", "lamellae", "network"] and "provenance" in ds.attrs
    assert ann.annotated_samples(fresh, "syn", "alice") == {ids[4]}
    assert ann.annotated_samples(fresh, "syn", "nobody") == set()
    opened = ann.open_annotations(fresh, "syn")
    assert opened["done"].values.sum() == 1 and opened["region"].sel(sample=ids[4]).sum() == 8 * 17


def test_resubmission_replaces(fresh):
    ids = _ids(fresh)
    ann.write_annotation(fresh, "syn", ids[0], "alice", label="network", confidence=0.2, region=_box(0, 16, 0, 16),
                         seconds=5)
    ann.write_annotation(fresh, "syn", ids[0], "alice", label="particles", confidence=0.9,
                         region=_box(20, 22, 20, 22).astype(np.uint8), seconds=7)
    ds = ann.open_annotations(fresh, "syn")
    assert ds.sizes["annotator"] == 1
    cell = ds.sel(sample=ids[0], annotator="alice")
    assert str(cell["annotated_class"].values) == "particles" and float(cell["confidence"]) == pytest.approx(0.9)
    assert int(cell["region"].sum()) == 4 and int(cell["region"][21, 21]) == 1


def test_two_annotators_at_once(fresh):
    """Two new annotators submitting concurrently (threads): both get their own column, nothing is lost."""
    ids = _ids(fresh)
    errors: list[Exception] = []

    def submit(name: str, sample: str, label: str) -> None:
        try:
            ann.write_annotation(fresh, "syn", sample, name, label=label, confidence=1.0, region=_box(0, 4, 0, 4),
                                 seconds=1)
        except Exception as exc:  # noqa: BLE001 - reported by the assertion below
            errors.append(exc)

    threads = [threading.Thread(target=submit, args=("alice", ids[1], "particles")),
               threading.Thread(target=submit, args=("bob", ids[1], "lamellae")),
               threading.Thread(target=submit, args=("carol", ids[2], "network"))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    ds = ann.open_annotations(fresh, "syn")
    assert sorted(ds["annotator"].values.tolist()) == ["alice", "bob", "carol"]
    assert ds["region"].shape == (len(ids), 3, 32, 32)
    got = {(a, str(ds["annotated_class"].sel(sample=s, annotator=a).values))
           for a, s in (("alice", ids[1]), ("bob", ids[1]), ("carol", ids[2]))}
    assert got == {("alice", "particles"), ("bob", "lamellae"), ("carol", "network")}
    assert int(ds["done"].sum()) == 3
    assert ann.annotated_samples(fresh, "syn", "bob") == {ids[1]}


def test_crash_before_done_leaves_cell_not_done(fresh, monkeypatch):
    """A submission that fails after its region is stored (a write to a missing array, a real zarr error) is
    not counted, and a failed re-annotation no longer counts the earlier one either."""
    ids = _ids(fresh)
    ann.write_annotation(fresh, "syn", ids[0], "alice", label="network", confidence=1, region=_box(0, 2, 0, 2),
                         seconds=1)
    monkeypatch.setattr(ann, "CELL_VARIABLES", (ann.ANNOTATED_CLASS, "no_such_array"))
    for sample in (ids[3], ids[0]):
        with pytest.raises(KeyError):
            ann.write_annotation(fresh, "syn", sample, "alice", label="lamellae", confidence=0.5,
                                 region=_box(0, 8, 0, 8), seconds=2)
    ds = xr.open_zarr(fresh, group="annotations/syn", consolidated=False)
    assert not ds["done"].sel(annotator="alice").values.any()
    assert ann.annotated_samples(fresh, "syn", "alice") == set()
    assert int(ds["region"].sel(sample=ids[3], annotator="alice").sum()) == 64  # written, but not done
    monkeypatch.undo()
    ann.write_annotation(fresh, "syn", ids[3], "alice", label="lamellae", confidence=0.5, region=_box(0, 8, 0, 8),
                         seconds=2)
    assert ann.annotated_samples(fresh, "syn", "alice") == {ids[3]}


@pytest.mark.parametrize(("change", "message"), [
    ({"dataset": "nope"}, "unknown dataset 'nope'"),
    ({"sample": "no-such-sample"}, "unknown sample id 'no-such-sample'"),
    ({"label": "martensite"}, "class 'martensite' is not one of"),
    ({"region": np.zeros((16, 32), bool)}, "region has shape (16, 32)"),
    ({"region": np.full((32, 32), 255, np.uint8)}, "region values must be 0 or 1"),
    ({"confidence": 1.5}, "confidence 1.5 is outside [0, 1]"),
    ({"confidence": float("nan")}, "confidence nan is not a finite number"),
    ({"seconds": -1}, "seconds -1.0 is negative"),
    ({"annotator": "../etc"}, "annotator id '../etc' is not valid"),
    ({"annotator": "x" * 65}, "is not valid"),
])
def test_bad_input_is_refused_and_nothing_is_written(workspace, change, message):
    from xaiflow import store

    args = {"dataset": "syn", "sample": _ids(workspace)[1], "annotator": "zed", "label": "particles",
            "confidence": 0.5, "region": _box(0, 4, 0, 4), "seconds": 3.0, **change}
    with pytest.raises(ann.AnnotationError) as info:
        ann.write_annotation(workspace, args.pop("dataset"), args.pop("sample"), args.pop("annotator"), **args)
    assert message in str(info.value)
    if store.group_exists(workspace, "annotations/syn"):
        assert "zed" not in ann.open_annotations(workspace, "syn")["annotator"].values.tolist()


def test_reading_without_annotations_says_how_to_make_them(fresh):
    with pytest.raises(ann.AnnotationError, match="xaiflow annotate"):
        ann.open_annotations(fresh, "syn")
    assert ann.annotated_samples(fresh, "syn", "alice") == set()
    with pytest.raises(ann.AnnotationError, match="unknown dataset"):
        ann.annotated_samples(fresh, "other", "alice")
