"""Splits given by the data: a CSV split column and the synthetic source's ``splits``, kept by ingest;
the synthetic shortcut whose probability differs in the test split. Real files, real Zarr stores;
listing-only checks where no pixel is needed."""

from __future__ import annotations

import numpy as np
import pytest
from pydantic import ValidationError

from conftest import folder_config, synthetic_dataset, write_folder_dataset
from xaiflow import schema, store
from xaiflow.config import parse_config
from xaiflow.ingest import IngestError, ingest_dataset
from xaiflow.sources.synthetic import CLASSES, ShortcutSpec, SyntheticConfig, SyntheticSource, class_corner


def _dataset(cfg: dict):
    return parse_config({"datasets": [cfg]}).datasets[0]


def _with_split_column(root, values: list[str]) -> None:
    """Add a ``fold`` column to the folder dataset's labels.csv (one value per data row)."""
    lines = (root / "labels.csv").read_text().splitlines()
    assert len(lines) - 1 == len(values)
    rows = [lines[0] + ",fold"] + [f"{line},{v}" for line, v in zip(lines[1:], values)]
    (root / "labels.csv").write_text("\n".join(rows) + "\n")


def _folder_split(root, name: str = "tiny") -> dict:
    return folder_config(root, name, source={"columns": {"file": "file", "label": "label", "group": "specimen",
                                                         "split": "fold"}})


def test_ingest_keeps_a_csv_split_column(tmp_path):
    root = write_folder_dataset(tmp_path / "data")  # 4 specimens x 3 images
    # the lab's held-out design: specimens 0 and 3 test, 1 val, 2 train
    folds = ["test"] * 3 + ["val"] * 3 + ["train"] * 3 + ["test"] * 3
    _with_split_column(root, folds)
    ws = tmp_path / "ws.zarr"
    ingest_dataset(_dataset(_folder_split(root)), ws)
    images = store.open_group(ws, "images/tiny")
    assert list(store.strings(images[schema.SPLIT].values)) == folds
    assert "fold" not in images.coords and "given by the source" in images.attrs["provenance"]["splits"]

    own = tmp_path / "own.zarr"  # the same data without the column setting: ingest splits by specimen
    ingest_dataset(_dataset(folder_config(root)), own)
    images = store.open_group(own, "images/tiny")
    assert list(store.strings(images[schema.SPLIT].values)) != folds
    assert "assigned by specimen" in images.attrs["provenance"]["splits"]


@pytest.mark.parametrize("cell, message", [("tst", "'tst'"), ("", "given for 11 of 12 samples"),
                                           ("test", "specimen 'spec1' is in two splits: train (labels.csv row 5)")])
def test_a_bad_or_missing_split_cell_is_refused_naming_its_row(tmp_path, cell, message):
    root = write_folder_dataset(tmp_path / "data")
    folds = ["train"] * 12
    folds[4] = cell  # the fifth data row: line 6 of the CSV
    _with_split_column(root, folds)
    ws = tmp_path / "ws.zarr"
    with pytest.raises(IngestError) as err:
        ingest_dataset(_dataset(_folder_split(root)), ws)
    assert message in str(err.value) and "labels.csv row 6" in str(err.value) and "'tiny'" in str(err.value)
    assert not store.group_exists(ws, "images/tiny")  # refused before anything is written


def test_synthetic_splits_are_whole_specimens_and_ingest_keeps_them(tmp_path):
    ws = tmp_path / "ws.zarr"
    cfg = synthetic_dataset(specimens_per_class=4, images_per_specimen=2, splits={"train": 2, "val": 1, "test": 1})
    ingest_dataset(_dataset(cfg), ws)
    images = store.open_group(ws, "images/syn")
    splits, groups = store.strings(images[schema.SPLIT].values), store.strings(images[schema.GROUP].values)
    expected = {0: "train", 1: "train", 2: "val", 3: "test"}  # specimen order
    assert all(s == expected[int(g.rsplit("-s", 1)[1])] for s, g in zip(splits, groups))
    assert "given by the source" in images.attrs["provenance"]["splits"]


def test_synthetic_splits_must_cover_the_specimens():
    with pytest.raises(ValidationError, match="add up to specimens_per_class"):
        SyntheticConfig(specimens_per_class=4, splits={"train": 2, "val": 1, "test": 2})
    with pytest.raises(ValidationError, match="test_probability needs splits"):
        SyntheticConfig(shortcut={"probability": 1.0, "test_probability": 0.25})


def test_shortcut_probability_differs_in_the_test_split():
    """Marker at the class's corner in every train/val image, at a uniformly drawn corner in test."""
    cfg = SyntheticConfig(specimens_per_class=10, images_per_specimen=10, splits={"train": 4, "val": 1, "test": 5},
                          shortcut=ShortcutSpec(probability=1.0, test_probability=0.25))
    refs = SyntheticSource(cfg).list_samples()  # listing only: no pixel is drawn
    split = np.array([r.metadata["split"] for r in refs])
    has = np.array([r.metadata["has_shortcut"] for r in refs])
    assert has[split != "test"].all()
    test = split == "test"
    assert test.sum() == 200 and abs(has[test].mean() - 0.25) < 0.1  # binomial sd 0.03
    corners = [r.metadata["shortcut_position"] for r, t in zip(refs, test) if t]
    assert min(corners.count(class_corner(c)) for c in CLASSES) > 25  # each corner ~50 times: uninformative


def test_unset_new_settings_leave_old_configs_and_hashes_unchanged():
    """Workspaces ingested before the split and per-split shortcut settings existed stay current."""
    old = synthetic_dataset(shortcut={"probability": 0.9})
    dumped = _dataset(old).model_dump(mode="json")
    assert "splits" not in dumped["source"] and dumped["source"]["shortcut"] == {"probability": 0.9, "size": 8,
                                                                                 "intensity": 1.0}
    folder = _dataset(folder_config("/nonexistent")).model_dump(mode="json")
    assert "split" not in folder["source"]["columns"]
