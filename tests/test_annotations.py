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
    return xr.open_zarr(ws, group="images/syn")["sample_id"].values.tolist()  # stored: ids beside positions


def _box(y0: int, y1: int, x0: int, x1: int) -> np.ndarray:
    region = np.zeros((32, 32), bool)
    region[y0:y1, x0:x1] = True
    return region


def test_round_trip_and_plain_xarray(fresh):
    ids = _ids(fresh)
    ann.write_annotation(fresh, "syn", ids[4], "alice", label="lamellae", confidence=0.75, region=_box(2, 10, 3, 20),
                         seconds=12.5)
    ds = xr.open_zarr(fresh, group="annotations/syn")  # plain xarray, no xaiflow reader
    assert ds.sizes == {"sample": len(ids), "annotator": 1, "y": 32, "x": 32}
    assert ds["sample"].values.tolist() == list(range(len(ids))) and ds["sample_id"].values.tolist() == ids
    ds = ds.set_xindex("sample_id")  # select by id
    images = xr.open_zarr(fresh, group="images/syn")
    assert ds["label"].values.tolist() == images["label"].values.tolist()
    assert ds["split"].values.tolist() == images["split"].values.tolist()
    assert ds["region"].dtype == np.uint8 and ds["region"].encoding["chunks"] == (1, 1, 32, 32)
    cell = ds.sel(sample_id=ids[4], annotator="alice")
    np.testing.assert_array_equal(cell["region"].values, _box(2, 10, 3, 20).astype(np.uint8))
    assert str(cell["annotated_class"].values) == "lamellae"
    assert float(cell["confidence"]) == 0.75 and float(cell["seconds"]) == 12.5
    assert bool(cell["done"]) and str(cell["annotated_at"].values).endswith("+00:00")
    other = ds.sel(sample_id=ids[5], annotator="alice")
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
    assert int(ds["region"].isel(sample=3).sel(annotator="alice").sum()) == 64  # written, but not done
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


def _ingest(ws, **dataset) -> list[str]:
    from xaiflow.config import parse_config
    from xaiflow.ingest import ingest_dataset

    cfg = parse_config({"datasets": [synthetic_dataset(size=32, chunk_size=4, images_per_specimen=1, **dataset)]})
    ingest_dataset(cfg.datasets[0], ws, overwrite=True)
    return _ids(ws)


def test_reingest_with_other_samples_is_refused_and_loses_nothing(tmp_path):
    """The review's reproduction: annotate, re-ingest (--overwrite) with other samples, annotate again. The
    new submission is refused with a message saying what to do (no zarr error, nothing written to another
    sample), a session cannot start on the old answers, the stored annotation is intact; ingesting the same
    samples again (same config) makes the annotations usable again."""
    from xaiflow.annotate.session import AnnotationSession

    ws = tmp_path / "ws.zarr"
    ids0 = _ingest(ws, specimens_per_class=2)
    ann.write_annotation(ws, "syn", ids0[0], "alice", label="particles", confidence=1, region=_box(0, 8, 0, 8),
                         seconds=1)
    before = ann.open_annotations(ws, "syn").load()
    reasons = {"3 image(s) not in the annotations", "another config"}
    for changed, reason in (({"specimens_per_class": 3}, reasons),  # more samples
                            ({"specimens_per_class": 2, "seed": 7}, {"another config"})):  # same ids, new images
        ids1 = _ingest(ws, **changed)
        for sample in (ids1[-1], ids0[0]):
            with pytest.raises(ann.StaleAnnotationsError, match="was made for other images") as info:
                ann.write_annotation(ws, "syn", sample, "alice", label="network", confidence=1,
                                     region=_box(0, 32, 0, 32), seconds=1)
            message = str(info.value)
            assert "move the folder" in message and "ingest the same samples again" in message
            assert all(r in message for r in reason), message
        with pytest.raises(ann.StaleAnnotationsError):
            AnnotationSession(ws, "syn", "alice")
        after = ann.open_annotations(ws, "syn").load()
        xr.testing.assert_identical(after, before)  # nothing stored was touched, no annotator added
    _ingest(ws, specimens_per_class=2)  # the same samples and config again: go on
    ann.write_annotation(ws, "syn", ids0[1], "alice", label="network", confidence=0.5, region=_box(0, 2, 0, 2),
                         seconds=2)
    assert ann.annotated_samples(ws, "syn", "alice") == {ids0[0], ids0[1]}



def _rewrite(ws, group: str, ds: xr.Dataset) -> None:
    """Store ``ds`` as ``group`` with the annotations' per-cell chunks (plain xarray)."""
    ds = ds.copy()
    for v in ds.variables.values():
        v.encoding = {}
    encoding = {k: {"chunks": (1, 1, *ds[k].shape[2:])} for k in ds.data_vars}
    ds.to_zarr(str(ws), group=group, mode="w", consolidated=False, zarr_format=3, encoding=encoding)


def test_cells_are_found_by_sample_id_not_position(fresh):
    """A group whose samples are in another order than the images' (same samples): a submission lands in
    the row of its sample id."""
    ids = _ids(fresh)
    ann.write_annotation(fresh, "syn", ids[0], "alice", label="network", confidence=1, region=_box(0, 4, 0, 4),
                         seconds=1)
    stored = xr.open_zarr(fresh, group="annotations/syn", consolidated=False).load()
    _rewrite(fresh, "annotations/syn", stored.isel(sample=np.arange(len(ids))[::-1]))
    ann.write_annotation(fresh, "syn", ids[1], "alice", label="lamellae", confidence=0.5, region=_box(0, 2, 0, 3),
                         seconds=2)
    ds = ann.open_annotations(fresh, "syn")
    assert ds["sample"].values.tolist() == ids[::-1]
    assert ann.annotated_samples(fresh, "syn", "alice") == {ids[0], ids[1]}
    assert str(ds["annotated_class"].sel(sample=ids[1], annotator="alice").values) == "lamellae"
    assert int(ds["region"].sel(sample=ids[1], annotator="alice").sum()) == 6
    assert int(ds["region"].sel(sample=ids[0], annotator="alice").sum()) == 16


def test_reading_while_an_annotator_is_added(fresh):
    """Between resizing the arrays and extending the coordinate (what adding an annotator does, under the
    lock) a reader sees the annotators before it, then the new one once it is complete."""
    import zarr

    from xaiflow import store

    ids = _ids(fresh)
    ann.write_annotation(fresh, "syn", ids[2], "alice", label="network", confidence=1, region=_box(0, 4, 0, 4),
                         seconds=1)
    root = zarr.open_group(store.location(fresh), path="annotations/syn", mode="r+", zarr_format=3)
    for name, arr in root.arrays():  # the first half of _annotator_index's addition
        dims = arr.metadata.dimension_names or ()
        if name != "annotator" and "annotator" in dims:
            arr.resize((arr.shape[0], 2, *arr.shape[2:]))
    ds = ann.open_annotations(fresh, "syn")
    assert ds.sizes["annotator"] == 1 and ds["region"].shape == (len(ids), 1, 32, 32)
    assert ann.annotated_samples(fresh, "syn", "alice") == {ids[2]}
    root["annotator"].resize((2,))  # the second half
    root["annotator"][1] = "bob"
    ds = ann.open_annotations(fresh, "syn")
    assert ds["annotator"].values.tolist() == ["alice", "bob"] and not ds["done"].sel(annotator="bob").any()


def test_one_session_writes_one_submission_at_a_time(fresh, monkeypatch):
    """Two browser tabs of one annotator submitting the same image at once: the session's writes never
    overlap (each is timed out to 50 ms so two would overlap without the session's lock) and the stored
    cell is one whole submission (class, confidence and region of the same one), never a mix."""
    import time

    from xaiflow.annotate import session as session_module

    active, overlaps = [0], []
    real_write = session_module.write_annotation

    def timed_write(*args, **kwargs):  # the real write, held open a little longer
        active[0] += 1
        overlaps.append(active[0])
        try:
            time.sleep(0.05)
            real_write(*args, **kwargs)
        finally:
            active[0] -= 1

    monkeypatch.setattr(session_module, "write_annotation", timed_write)
    session = session_module.AnnotationSession(fresh, "syn", "alice")
    tabs = {"particles": (0.25, _box(0, 32, 0, 16)), "network": (0.75, _box(0, 8, 0, 32))}
    errors: list[Exception] = []

    def submit(label: str) -> None:
        confidence, region = tabs[label]
        try:
            for _ in range(3):
                session.submit(0, label=label, confidence=confidence, region=region, seconds=1)
        except Exception as exc:  # noqa: BLE001 - reported by the assertion below
            errors.append(exc)

    threads = [threading.Thread(target=submit, args=(label,)) for label in tabs]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors and len(overlaps) == 6 and max(overlaps) == 1
    cell = ann.open_annotations(fresh, "syn").sel(sample=session.sample_at(0), annotator="alice")
    label = str(cell["annotated_class"].values)
    assert bool(cell["done"]) and float(cell["confidence"]) == tabs[label][0]
    np.testing.assert_array_equal(cell["region"].values, tabs[label][1])
