"""Generalization matrix on synthetic data with a known domain shift, domain rules, CNN rows and
clear errors (real workspace, real Dask worker processes, real small CNNs)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from pydantic import ValidationError

from conftest import folder_config, synthetic_dataset, train_tiny, write_folder_dataset
from xaiflow import store
from xaiflow.config import parse_config
from xaiflow.features.extract import extract_features
from xaiflow.ingest import ingest_dataset
from xaiflow.studies.config import CVConfig, DomainSpec, GeneralizationConfig, StudyConfig
from xaiflow.studies.data import StudyError, select_domain
from xaiflow.studies.generalization import run_generalization, summary_table
from xaiflow.studies.run import generalization_study

TEXTURE = {"texture": ["glcm", "lbp", "twopoint"]}
#: a strong acquisition change: 2x magnification, blur, noise, lower contrast, brighter
SHIFT = {"scale": 2.0, "blur_sigma": 1.0, "noise_std": 0.1, "contrast": 0.7, "brightness": 0.1}


def synthetic(name: str, condition: dict) -> dict:
    return synthetic_dataset(name, specimens_per_class=4, size=48, chunk_size=12, condition=condition,
                             condition_name=name)


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def workspace(tmp_path_factory, client):
    """Two synthetic datasets, same specimens (one seed), two acquisition conditions; texture features."""
    ws = tmp_path_factory.mktemp("shift") / "ws.zarr"
    for d in parse_config({"datasets": [synthetic("clean", {}), synthetic("shifted", SHIFT)]}).datasets:
        ingest_dataset(d, ws, client=client)
        for name in TEXTURE["texture"]:
            extract_features(ws, d.name, name, client=client)
    return ws


def two_domains(**kw) -> GeneralizationConfig:
    return GeneralizationConfig(domains=[{"dataset": "clean"}, {"dataset": "shifted"}], **kw)


def test_in_domain_beats_cross_domain_under_a_known_shift(workspace, client, tmp_path):
    cv = CVConfig(folds=4, classifiers=["random_forest", "logistic_regression"])
    studies = StudyConfig(cv=cv, feature_sets=TEXTURE, generalization=two_domains())
    result = generalization_study(workspace, studies, out_dir=tmp_path, client=client)
    ds = result.ds
    assert list(ds.model.values) == ["texture/random_forest", "texture/logistic_regression"]
    assert ds.balanced_accuracy.shape == (2, 2, 2, 4)
    assert (ds.n_test.values == 36).all()  # every sample is tested once per cell (its held-out fold)
    for m in ds.model.values:
        mean = ds["mean"].sel(model=m).values
        assert mean[0, 0] > 0.9  # clean in-domain: the classes are easy
        for a in range(2):  # trained on either condition, the own condition scores best
            assert mean[a, a] > mean[a, 1 - a] + 0.15, (m, mean)
    summary = summary_table(ds)
    assert (summary.in_domain > summary.cross_domain + 0.2).all(), summary
    # stored, tabulated and drawn
    assert result.group == "studies/clean+shifted/generalization"
    stored = store.open_group(workspace, result.group)
    np.testing.assert_allclose(stored["mean"].values, ds["mean"].values)
    matrix = pd.read_csv(tmp_path / "clean+shifted_generalization_matrix.csv")
    assert len(matrix) == 8 and set(matrix.columns) >= {"model", "train_domain", "test_domain", "in_domain",
                                                        "balanced_accuracy_mean", "balanced_accuracy_std"}
    assert (tmp_path / "clean+shifted_generalization.png").stat().st_size > 10_000


def test_cnn_rows_use_held_out_specimens_and_reuse_predictions(workspace, client):
    ids = {d: train_tiny(workspace, d, epochs=3, batch_size=8, lr=3e-3) for d in ("clean", "shifted")}
    cfg = two_domains(feature_sets=[], cnn_models={"clean": [ids["clean"]], "shifted": [ids["shifted"]]})
    ds = run_generalization(workspace, cfg, CVConfig(folds=4), client=client)
    assert list(ds.model.values) == ["cnn"]
    images = store.open_group(workspace, "images/clean")
    held_out = int((store.strings(images.split.values) == "test").sum())  # same specimens in both datasets
    assert (ds.n_test.sel(model="cnn").values == held_out).all() and held_out > 0
    assert np.isfinite(ds["mean"].values).all() and ((0 <= ds["mean"].values) & (ds["mean"].values <= 1)).all()
    cross = f"predictions/shifted/{ids['clean']}"
    assert store.group_exists(workspace, cross)  # written for the cross-domain cell
    stamp = (workspace / cross / "zarr.json").stat().st_mtime_ns
    again = run_generalization(workspace, cfg, CVConfig(folds=4), client=client)
    assert (workspace / cross / "zarr.json").stat().st_mtime_ns == stamp  # reused, not recomputed
    np.testing.assert_array_equal(again["mean"].values, ds["mean"].values)


def test_rule_domains_within_one_dataset(tmp_path, client):
    """Detector SE vs BSE of one dataset; each specimen is imaged with both, so folds group them."""
    root = write_folder_dataset(tmp_path / "data", n_specimens=8, per_specimen=4, size=(40, 40))
    ws = tmp_path / "ws.zarr"
    ingest_dataset(parse_config({"datasets": [folder_config(root)]}).datasets[0], ws, client=client)
    extract_features(ws, "tiny", "lbp", client=client)
    cfg = GeneralizationConfig(domains=[{"name": "SE", "dataset": "tiny", "where": {"detector": "SE"}},
                                        {"name": "BSE", "dataset": "tiny", "where": {"detector": ["BSE"]}}])
    ds = run_generalization(ws, cfg, CVConfig(folds=2, classifiers=["logistic_regression"]), client=client)
    assert list(ds.domain_samples.values) == [16, 16] and list(ds.domain_specimens.values) == [8, 8]
    assert (ds.n_test.values == 16).all()
    assert ((0 <= ds["mean"].values) & (ds["mean"].values <= 1)).all()


def test_select_domain_rules():
    coords = pd.DataFrame({"detector": ["SE", "BSE", "", "SE"], "source_um_per_px": [0.05, 0.1, 0.2, 1.0],
                           "magnification": [1000.0, 500.0, 200.0, 100.0]})
    pick = lambda **kw: select_domain(coords, DomainSpec(dataset="d", **kw)).tolist()  # noqa: E731
    assert pick(where={"detector": "SE"}) == [True, False, False, True]
    assert pick(where={"detector": ["BSE", ""]}) == [False, True, True, False]
    assert pick(threshold={"coord": "source_um_per_px", "below": 0.1}) == [True, False, False, False]
    assert pick(threshold={"coord": "source_um_per_px", "at_least": 0.1}) == [False, True, True, True]
    assert pick(where={"detector": "SE", "magnification": 100}) == [False, False, False, True]
    with pytest.raises(StudyError, match=r"no coordinate 'lens'; coordinates: \['detector'"):
        pick(where={"lens": "x"})
    with pytest.raises(StudyError, match="threshold needs a numeric coordinate"):
        pick(threshold={"coord": "detector", "below": 1})
    assert DomainSpec(dataset="u", threshold={"coord": "um_per_px", "below": 0.1}).label() == "u[um_per_px<0.1]"


def test_one_domain_is_refused():
    with pytest.raises(ValidationError, match="at least two domains.*got 1: clean"):
        GeneralizationConfig(domains=[{"dataset": "clean"}])
    with pytest.raises(ValidationError, match="exactly one of `below` and `at_least`"):
        DomainSpec(dataset="x", threshold={"coord": "um_per_px"})
    with pytest.raises(ValidationError, match="cnn_models names unknown domain"):
        two_domains(cnn_models={"elsewhere": ["m"]})


@pytest.mark.parametrize("domains, message", [
    ([{"name": "p", "dataset": "clean", "where": {"label": "particles"}}, {"dataset": "shifted"}],
     "domain 'p' has a single class \\('particles', 12 samples\\)"),
    ([{"name": "a", "dataset": "clean"},
      {"name": "b", "dataset": "clean", "where": {"label": ["network", "lamellae"]}}],
     "domains 'a' and 'b' share 24 samples"),
    ([{"name": "a", "dataset": "clean", "where": {"split": "test"}}, {"dataset": "shifted"}],
     "share fewer than two classes with >= 2 specimens"),
    ([{"name": "a", "dataset": "clean", "where": {"condition": "nope"}}, {"dataset": "shifted"}],
     "domain 'a' selects no sample"),
])
def test_bad_domains_are_clear_errors(workspace, domains, message):
    with pytest.raises(StudyError, match=message):
        run_generalization(workspace, GeneralizationConfig(domains=domains), CVConfig(), TEXTURE)


def test_features_extracted_differently_are_not_compared(workspace, client):
    extract_features(workspace, "clean", "lbp", {"radii": [1]}, key="lbp_r1", client=client)
    extract_features(workspace, "shifted", "lbp", {"radii": [2]}, key="lbp_r1", client=client)
    with pytest.raises(StudyError, match="extracted with other settings for dataset 'shifted'"):
        run_generalization(workspace, two_domains(feature_sets=["lbp_r1"]), CVConfig(), {})
