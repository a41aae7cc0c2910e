"""Feature reduction: reducer contract over the registry, and the k95 study on features whose
informative columns are known."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import zarr

from xaiflow import store

from xaiflow.studies.config import CVConfig, ReductionConfig
from xaiflow.studies.data import FeatureTable
from xaiflow.studies.reduction import REDUCERS, default_ks, family_table, k_table, run_reduction, survivor_table
from xaiflow.studies.report import store_study


def planted(seed: int = 0, informative: int = 2, noise: int = 30) -> FeatureTable:
    """3 classes x 6 specimens x 4 images; only the first ``informative`` features carry the class."""
    rng = np.random.default_rng(seed)
    y = np.repeat(["a", "b", "c"], 24)
    groups = np.array([f"{c}{i // 4}" for c, i in zip(y, np.tile(np.arange(24), 3))])
    centres = 4.0 * np.eye(3)[:, :informative]  # a triangle: linearly separable one-vs-rest
    signal = centres[np.unique(y, return_inverse=True)[1]] + rng.normal(0, 0.7, (72, informative))
    X = np.concatenate([signal, rng.normal(0, 1, (72, noise))], axis=1)
    # numpy strings, as read from the workspace, beside str, as made from extractor keys
    labels = list(np.array([f"good{i}" for i in range(informative)] + [f"noise{i}" for i in range(noise)]))
    families = ["good"] * informative + list(np.array(["noise"] * noise))
    return FeatureTable(name="planted", dataset="toy", X=X, labels=labels, families=families,
                        samples=np.array([f"s{i}" for i in range(72)]), y=y, groups=groups,
                        coords=pd.DataFrame({"label": y}))


@pytest.mark.parametrize("name", REDUCERS.names())
def test_reducer_contract(name):
    t = planted()
    reducer = REDUCERS.get(name)().fit(t.X[:48], t.y[:48], seed=0)
    assert reducer.max_k() >= 5
    for k in (1, 5):
        assert reducer.transform(t.X[48:], k).shape == (24, k)
        w = reducer.weights(k)
        assert w.shape == (32,) and (w >= 0).all() and w.sum() == pytest.approx(1)
    again = REDUCERS.get(name)().fit(t.X[:48], t.y[:48], seed=0)
    np.testing.assert_allclose(again.transform(t.X[48:], 3), reducer.transform(t.X[48:], 3))


def test_default_ks():
    assert default_ks(1) == [1]
    ks = default_ks(600)
    assert ks[0] == 1 and ks[-1] == 600 and len(ks) <= 13 and ks == sorted(set(ks))


def test_k95_finds_the_planted_features(client, tmp_path):
    t = planted()
    cfg = ReductionConfig(classifier="logistic_regression", ks=[1, 2, 4, 8, 16], top=2)
    ds = run_reduction([t], cfg, CVConfig(folds=3), client=client)
    zarr.open_group(str(tmp_path / "ws.zarr"), mode="a", zarr_format=3)
    stored = store.open_group(tmp_path / "ws.zarr", store_study(tmp_path / "ws.zarr", "toy", "reduction", ds))
    assert list(store.strings(stored.survivor_label.values)) == list(ds.survivor_label.values)
    assert ds.balanced_accuracy.shape == (1, 3, 6, 3) and list(ds.k.values) == [1, 2, 4, 8, 16, 32]
    assert ds.full_mean.item() > 0.9
    table = k_table(ds).set_index("reduction")
    for method in ("rf_importance", "mutual_information"):
        assert table.loc[method, "k95"] <= 2, table  # the two informative features suffice
        assert table.loc[method, "top_families"].startswith("good 100%")
    # PCA ignores the labels: 30 noise directions of unit variance hide the two informative ones
    assert table.loc["pca", "k95"] > table.loc["rf_importance", "k95"]
    survivors = survivor_table(ds)
    ranked = survivors[survivors.reduction == "rf_importance"]
    assert set(ranked.label) <= {"good0", "good1"} and ranked.weight.sum() == pytest.approx(1, abs=0.01)
    fam = family_table(ds)
    assert fam.groupby("reduction").share.sum().to_numpy() == pytest.approx(1)
    curve = ds["mean"].sel(feature_set="planted", reduction="rf_importance").values
    assert curve[-1] == pytest.approx(ds.full_mean.item(), abs=0.05) and curve[0] > 0.5


def test_unreached_target_is_reported(client):
    t = planted(informative=0, noise=6)  # nothing to learn: the full accuracy is chance
    cfg = ReductionConfig(classifier="logistic_regression", methods=["mutual_information"], ks=[1, 3], target=1.0)
    ds = run_reduction([t], cfg, CVConfig(folds=3), client=client)
    reached = float(ds.k_target.sel(feature_set="planted", reduction="mutual_information"))
    assert np.isnan(reached) == any("no k reaches" in n for n in ds.attrs["notes"])
