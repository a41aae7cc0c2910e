"""The issue's checks on a subset of the real UHCS micrographs: texture and CNN features give
grouped-CV tables, a magnification split gives a generalization matrix, reduction names k95."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from xaiflow.config import TrainConfig, load_config
from xaiflow.features.config import FeaturesConfig
from xaiflow.features.extract import extract_all
from xaiflow.ingest import ingest_dataset
from xaiflow.studies.config import StudyConfig
from xaiflow.studies.run import classification_study, generalization_study, reduction_study
from xaiflow.training import train_model
from conftest import REPO

pytestmark = [pytest.mark.uhcs, pytest.mark.slow]


@pytest.fixture(scope="module")
def workspace(tmp_path_factory, uhcs_dir, client):
    torch.set_num_threads(1)
    cfg = load_config(REPO / "configs" / "uhcs_studies.yaml", data_dir=uhcs_dir).datasets[0]
    cfg = cfg.model_copy(update={"geometry": cfg.geometry.model_copy(update={"size": (64, 64)}),
                                 "source": cfg.source.model_copy(update={"max_per_group_label": 2})})
    ws = tmp_path_factory.mktemp("uhcs") / "ws.zarr"
    ingest_dataset(cfg, ws, client=client)
    model = train_model(ws, TrainConfig(dataset="uhcs", epochs=3, batch_size=16, model_params={"widths": [8, 16, 32]},
                                        device="cpu", threads=1))["model_id"]
    features = FeaturesConfig(dataset="uhcs", model=model, extractors=[
        {"name": "glcm"}, {"name": "lbp"}, {"name": "twopoint"},
        {"name": "cnn", "params": {"layers": ["block2", "block3"], "pooling": ["mean", "max"]}}])
    extract_all(ws, features, client=client)
    return ws, features


STUDIES = {"cv": {"folds": 3, "classifiers": ["logistic_regression"]},
           "feature_sets": {"texture": ["glcm", "lbp", "twopoint"], "cnn": ["cnn"]}}


def test_grouped_cv_tables_for_texture_and_cnn_features(workspace, client, tmp_path):
    ws, features = workspace
    result = classification_study(ws, features, StudyConfig(**STUDIES), out_dir=tmp_path, client=client)
    table = result.headline.set_index(["feature_set", "classifier"])
    assert {"texture", "cnn"} <= set(table.index.get_level_values(0))
    chance = table.chance.iloc[0]
    assert table.loc[("texture", "logistic_regression"), "balanced_accuracy_mean"] > chance + 0.15
    assert table.loc[("cnn", "logistic_regression"), "balanced_accuracy_mean"] > chance
    assert (table.balanced_accuracy_std > 0).any()
    assert any("trained on 'uhcs'" in n for n in result.notes)  # CNN features from a model that saw these specimens


def test_magnification_split_and_reduction(workspace, client, tmp_path):
    ws, features = workspace
    studies = StudyConfig(**STUDIES, generalization={
        "domains": [{"name": "high_mag", "dataset": "uhcs", "threshold": {"coord": "source_um_per_px", "below": 0.1}},
                    {"name": "low_mag", "dataset": "uhcs",
                     "threshold": {"coord": "source_um_per_px", "at_least": 0.1}}],
        "feature_sets": ["texture"]},
        reduction={"feature_sets": ["texture"], "ks": [2, 8, 32], "methods": ["rf_importance", "pca"],
                   "classifier": "logistic_regression"})
    gen = generalization_study(ws, studies, out_dir=tmp_path, client=client).ds
    assert list(gen.train_domain.values) == ["high_mag", "low_mag"]
    assert "network" not in gen.attrs["classes"]  # only at low magnification: the confound, left out
    assert np.isfinite(gen["mean"].values).all() and (gen.n_test.values > 0).all()
    red = reduction_study(ws, features, studies, out_dir=tmp_path, client=client)
    k95 = red.headline.set_index("reduction")["k95"]
    assert k95.notna().any() and (k95.dropna() <= 94).all()
    assert (tmp_path / "uhcs_reduction.png").is_file() and (tmp_path / "uhcs_generalization.png").is_file()
