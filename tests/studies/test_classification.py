"""Classifiers (contract over the registry), specimen-grouped folds, and the classification study
on features extracted into a real workspace."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import zarr

from conftest import ingest_synthetic
from xaiflow import store
from xaiflow.features.config import FeaturesConfig
from xaiflow.features.extract import extract_all
from xaiflow.scores import balanced_accuracy
from xaiflow.studies.classify import CLASSIFIERS, fit_predict, grouped_folds
from xaiflow.studies.config import CVConfig, StudyConfig
from xaiflow.studies.data import StudyError, load_feature_table
from xaiflow.studies.run import classification_study


def blobs(seed: int = 0, n: int = 60, classes: int = 3, f: int = 5) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    y = np.repeat(np.array([f"c{i}" for i in range(classes)]), n // classes)
    centres = rng.normal(0, 4, (classes, f))
    return centres[np.unique(y, return_inverse=True)[1]] + rng.normal(0, 1, (n, f)), y


@pytest.mark.parametrize("name", CLASSIFIERS.names())
def test_classifier_contract(name):
    X, y = blobs()
    pred = fit_predict(name, 0, X[::2], y[::2], X[1::2])
    assert pred.shape == (30,) and set(pred) <= set(y)
    assert balanced_accuracy(y[1::2], pred) > 0.9
    np.testing.assert_array_equal(pred, fit_predict(name, 0, X[::2], y[::2], X[1::2]))  # seeded
    assert CLASSIFIERS.get(name)().get_params() == CLASSIFIERS.get(name)().get_params()


def test_balanced_accuracy_by_hand():
    y = np.array(["a", "a", "a", "b"])
    assert balanced_accuracy(y, np.array(["a", "a", "b", "b"])) == pytest.approx((2 / 3 + 1) / 2)
    assert balanced_accuracy(y, np.array(["a"] * 4)) == pytest.approx(0.5)  # majority = chance


def test_grouped_folds_keep_specimens_apart_and_handle_small_classes(caplog):
    y = np.array(["a"] * 12 + ["b"] * 12 + ["c"] * 6 + ["d"] * 2)
    groups = np.array([f"a{i // 2}" for i in range(12)] + [f"b{i // 2}" for i in range(12)]
                      + [f"c{i // 2}" for i in range(6)] + ["d0", "d0"])
    folds = grouped_folds(y, groups, CVConfig(folds=5))
    assert folds.n_splits == 3 and folds.classes == ["a", "b", "c"] and folds.dropped_classes == {"d": 1}
    assert any("folds reduced from 5 to 3" in n for n in folds.notes) and "dropped class 'd'" in caplog.text
    covered = np.concatenate([te for _, te in folds.splits])
    assert sorted(covered) == list(range(30))  # every kept sample is tested exactly once
    for train, test in folds.splits:
        assert not set(groups[train]) & set(groups[test])
        assert set(y[train]) == {"a", "b", "c"}
    dropped = grouped_folds(y, groups, CVConfig(folds=5, small_classes="drop"))
    assert dropped.n_splits == 5 and dropped.classes == ["a", "b"] and set(dropped.dropped_classes) == {"c", "d"}
    with pytest.raises(StudyError, match="needs two classes with >= 2 specimens.*'d': 1"):
        grouped_folds(y[y != "a"][-8:], groups[y != "a"][-8:], CVConfig(folds=5))


@pytest.fixture(scope="module")
def workspace(tmp_path_factory, client):
    ws = tmp_path_factory.mktemp("classify") / "ws.zarr"
    ingest_synthetic(ws, client, specimens_per_class=4, size=40, chunk_size=12)
    features = FeaturesConfig(dataset="syn", extractors=[{"name": "glcm"}, {"name": "lbp"},
                                                         {"name": "twopoint", "params": {"r_max": 12}}])
    extract_all(ws, features, client=client)
    return ws, features


def test_classification_study_table_group_and_files(workspace, client, tmp_path):
    ws, features = workspace
    studies = StudyConfig(cv=CVConfig(folds=3, classifiers=["logistic_regression", "linear_svm"]),
                          feature_sets={"texture": ["glcm", "lbp", "twopoint"]})
    result = classification_study(ws, features, studies, out_dir=tmp_path, client=client)
    table = result.headline
    assert list(table.feature_set.unique()) == ["texture", "glcm", "lbp", "twopoint"]
    assert list(table.n_features[table.classifier == "linear_svm"]) == [24 + 54 + 12, 24, 54, 12]
    texture = table[table.feature_set == "texture"]
    assert (texture.balanced_accuracy_mean > 0.8).all() and np.allclose(table.chance, 1 / 3)
    assert (table.balanced_accuracy_std >= 0).all() and (table.folds == 3).all()
    ds = store.open_group(ws, "studies/syn/classification")
    assert ds.balanced_accuracy.shape == (4, 2, 3) and ds.attrs["status"] == "complete"
    assert int(ds.confusion.sel(feature_set="texture", classifier="linear_svm").sum()) == 36
    assert list(store.strings(ds.true_class.values)) == ["lamellae", "network", "particles"]
    folds = pd.read_csv(tmp_path / "syn_classification_folds.csv")
    assert len(folds) == 4 * 2 * 3 and folds.balanced_accuracy.between(0, 1).all()
    assert (tmp_path / "syn_classification.png").stat().st_size > 10_000


def test_features_with_nan_are_a_clear_error(workspace, tmp_path):
    import shutil

    ws = tmp_path / "copy.zarr"
    shutil.copytree(workspace[0], ws)
    arr = zarr.open_array(str(ws), path="features/syn/lbp/features", mode="r+")
    arr[5, 3] = np.nan
    with pytest.raises(StudyError, match=r"features/syn/lbp has NaN/inf features in 1 of 36 samples \(e.g. \['"):
        load_feature_table(ws, "syn", "lbp", ["lbp"])
    with pytest.raises(StudyError, match="features/syn/hog, which does not exist.*run `xaiflow features`"):
        classification_study(ws, None, StudyConfig(dataset="syn", feature_sets={"x": ["hog"]}))
