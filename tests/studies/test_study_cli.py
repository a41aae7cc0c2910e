"""`xaiflow features` and `xaiflow study ...` end to end (typer's runner, in-process threads cluster),
with the clear errors the issue asks for: bad layer, one domain, NaN features, missing section."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import yaml
import zarr
from typer.testing import CliRunner

from xaiflow import store
from xaiflow.cli import app
from xaiflow.models import build_model
from xaiflow.models.checkpoint import save_checkpoint

runner = CliRunner()


def synthetic(name: str, condition: dict) -> dict:
    return {"name": name, "source": {"kind": "synthetic", "specimens_per_class": 3, "images_per_specimen": 2,
                                     "size": [32, 32], "classes": ["particles", "lamellae", "network"],
                                     "condition": condition, "condition_name": name},
            "geometry": {"size": [32, 32]}, "chunk_size": 6}


CONFIG = {
    "datasets": [synthetic("clean", {}), synthetic("shifted", {"scale": 2.0, "blur_sigma": 1.0, "noise_std": 0.1})],
    "features": {"dataset": ["clean", "shifted"],
                 "extractors": [{"name": "lbp", "params": {"radii": [1, 2]}},
                                {"name": "twopoint", "params": {"r_max": 8}}]},
    "studies": {"dataset": "clean", "cv": {"folds": 2, "classifiers": ["logistic_regression"]},
                "feature_sets": {"texture": ["lbp", "twopoint"]},
                "generalization": {"domains": [{"dataset": "clean"}, {"dataset": "shifted"}]},
                "reduction": {"ks": [1, 4], "classifier": "logistic_regression",
                              "methods": ["mutual_information", "pca"]}},
}


def invoke(*args: str):
    return runner.invoke(app, list(args))


def write(path, config: dict):
    path.write_text(yaml.safe_dump(config))
    return str(path)


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("cli")
    config, ws = write(tmp / "run.yaml", CONFIG), str(tmp / "ws.zarr")
    assert invoke("ingest", config, "-w", ws, "--cluster", "threads").exit_code == 0
    return tmp, config, ws


def test_features_and_studies_commands(setup):
    tmp, config, ws = setup
    res = invoke("features", config, "-w", ws, "--cluster", "threads")
    assert res.exit_code == 0, res.output
    for group in ("features/clean/lbp", "features/shifted/twopoint"):
        assert group in res.output
    assert "clean: balanced accuracy, mean ± std over 2 specimen-grouped folds" in res.output
    assert "shifted: balanced accuracy" in res.output and "texture" in res.output
    again = invoke("features", config, "-w", ws, "--cluster", "threads", "--no-cv")
    assert again.exit_code == 0 and again.output.count("up-to-date") == 4 and "balanced accuracy" not in again.output

    gen = invoke("study", "generalization", config, "-w", ws, "--cluster", "threads")
    assert gen.exit_code == 0, gen.output
    assert "train \\ test" in gen.output and "in_domain" in gen.output and "*" in gen.output
    assert store.open_group(ws, "studies/clean+shifted/generalization").attrs["status"] == "complete"

    red = invoke("study", "reduction", config, "-w", ws, "--cluster", "threads", "--out", str(tmp / "figs"))
    assert red.exit_code == 0, red.output
    assert "smallest k reaching 95%" in red.output and "mutual_information" in red.output
    assert sorted(p.name for p in (tmp / "figs").iterdir()) == [
        "clean_reduction.png", "clean_reduction_curve.csv", "clean_reduction_families.csv",
        "clean_reduction_features.csv", "clean_reduction_summary.csv"]
    assert (tmp / "ws.figures" / "clean_classification.png").is_file()  # the default --out


def test_unknown_layer_lists_valid_layers(setup):
    tmp, _, ws = setup
    torch.manual_seed(0)
    save_checkpoint(store.models_dir(ws) / "tiny", build_model("small_cnn", 3, widths=[4, 8]), {"train": {}})
    config = write(tmp / "layer.yaml", {**CONFIG, "features": {
        "dataset": "clean", "model": "tiny", "extractors": [{"name": "cnn", "params": {"layers": ["conv9"]}}]}})
    res = invoke("features", config, "-w", ws, "--cluster", "threads")
    assert res.exit_code == 2 and "no layer 'conv9'; valid layers: block1, block2, pool, head" in res.output
    assert "Traceback" not in res.output


def test_one_domain_nan_features_and_missing_sections(setup, tmp_path):
    _, config, ws = setup
    one = write(tmp_path / "one.yaml", {**CONFIG, "studies": {"generalization": {"domains": [{"dataset": "clean"}]}}})
    res = invoke("study", "generalization", one, "-w", ws, "--cluster", "threads")
    assert res.exit_code == 2 and "studies.generalization.domains" in res.output
    assert "at least two domains" in res.output
    bare = write(tmp_path / "bare.yaml", {"datasets": CONFIG["datasets"]})
    res = invoke("study", "reduction", bare, "-w", ws)
    assert res.exit_code == 2 and "no `studies.reduction:` section" in res.output
    res = invoke("features", bare, "-w", ws)
    assert res.exit_code == 2 and "no `features:` section" in res.output
    zarr.open_array(ws, path="features/clean/lbp/features", mode="r+")[0, 0] = np.nan
    res = invoke("study", "reduction", config, "-w", ws, "--cluster", "threads")
    assert res.exit_code == 2 and "features/clean/lbp has NaN/inf features in 1 of 18 samples" in res.output
