"""The features, generalization and reduction flows under Prefect's test harness (thin wrappers:
the library does the work; the flows return its tables)."""

from __future__ import annotations

import pytest
import yaml

from conftest import synthetic_dataset
from xaiflow import store

pytestmark = pytest.mark.prefect

CONFIG = {
    "datasets": [synthetic_dataset(n, specimens_per_class=2, images_per_specimen=2, classes=("particles", "network"),
                                   chunk_size=4, condition=c, condition_name=n)
                 for n, c in (("a", {}), ("b", {"scale": 2.0}))],
    "features": {"dataset": ["a", "b"], "extractors": [{"name": "lbp", "params": {"radii": [1]}}]},
    "studies": {"dataset": "a", "cv": {"folds": 2, "classifiers": ["logistic_regression"]},
                "generalization": {"domains": [{"dataset": "a"}, {"dataset": "b"}]},
                "reduction": {"ks": [2], "classifier": "logistic_regression", "methods": ["pca"]}},
}


def test_feature_and_study_flows(prefect_harness, tmp_path):
    from xaiflow_flows.features import features_flow
    from xaiflow_flows.ingest import ingest_flow
    from xaiflow_flows.studies import generalization_flow, reduction_flow

    config = tmp_path / "run.yaml"
    config.write_text(yaml.safe_dump(CONFIG))
    ws = str(tmp_path / "ws.zarr")
    ingest_flow(config_path=str(config), workspace=ws, cluster="threads")
    tables = features_flow(config_path=str(config), workspace=ws, cluster="threads")
    assert sorted(tables) == ["a", "b"] and tables["a"][0]["feature_set"] == "lbp"
    assert store.open_group(ws, "features/b/lbp").sizes["sample"] == 8
    gen = generalization_flow(config_path=str(config), workspace=ws, cluster="threads")
    assert gen["group"] == "studies/a+b/generalization" and len(gen["matrix"]) == 4
    red = reduction_flow(config_path=str(config), workspace=ws, cluster="threads")
    assert red["group"] == "studies/a/reduction" and red["summary"][0]["reduction"] == "pca"
    assert all(p.startswith(str(tmp_path)) for p in red["files"])
