"""`xaiflow features` and `xaiflow study ...` end to end (in-process via :mod:`cli_run`, threads
cluster), with the clear errors the issue asks for: bad layer, one domain, NaN features, missing
section. Results are checked on stdout, errors on stderr."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import yaml
import zarr
from cli_run import run

from conftest import synthetic_dataset
from xaiflow import store
from xaiflow.models import build_model
from xaiflow.models.checkpoint import save_checkpoint

pytestmark = pytest.mark.timeout(300)  # the commands run in this process: no subprocess timeout


def synthetic(name: str, condition: dict) -> dict:
    return synthetic_dataset(name, images_per_specimen=2, condition=condition, condition_name=name)


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


def write(path, config: dict):
    path.write_text(yaml.safe_dump(config))
    return str(path)


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("cli")
    config, ws = write(tmp / "run.yaml", CONFIG), str(tmp / "ws.zarr")
    assert run("ingest", config, "-w", ws, "--cluster", "threads").returncode == 0
    return tmp, config, ws


def test_features_and_studies_commands(setup):
    tmp, config, ws = setup
    res = run("features", config, "-w", ws, "--cluster", "threads")
    assert res.returncode == 0, res.stderr
    for group in ("features/clean/lbp", "features/shifted/twopoint"):
        assert group in res.stdout
    assert "clean: balanced accuracy, mean ± std over 2 specimen-grouped folds" in res.stdout
    assert "shifted: balanced accuracy" in res.stdout and "texture" in res.stdout
    again = run("features", config, "-w", ws, "--cluster", "threads", "--no-cv")
    assert again.returncode == 0 and again.stdout.count("up-to-date") == 4
    assert "balanced accuracy" not in again.stdout + again.stderr

    gen = run("study", "generalization", config, "-w", ws, "--cluster", "threads")
    assert gen.returncode == 0, gen.stderr
    assert "train \\ test" in gen.stdout and "in_domain" in gen.stdout and "*" in gen.stdout
    assert store.open_group(ws, "studies/clean+shifted/generalization").attrs["status"] == "complete"

    red = run("study", "reduction", config, "-w", ws, "--cluster", "threads", "--out", str(tmp / "figs"))
    assert red.returncode == 0, red.stderr
    assert "smallest k reaching 95%" in red.stdout and "mutual_information" in red.stdout
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
    res = run("features", config, "-w", ws, "--cluster", "threads")
    assert res.returncode == 2 and "no layer 'conv9'; valid layers: block1, block2, pool, head" in res.stderr
    assert "Traceback" not in res.stderr


def test_one_domain_nan_features_and_missing_sections(setup, tmp_path):
    _, config, ws = setup
    one = write(tmp_path / "one.yaml", {**CONFIG, "studies": {"generalization": {"domains": [{"dataset": "clean"}]}}})
    res = run("study", "generalization", one, "-w", ws, "--cluster", "threads")
    assert res.returncode == 2 and "studies.generalization.domains" in res.stderr
    assert "at least two domains" in res.stderr
    bare = write(tmp_path / "bare.yaml", {"datasets": CONFIG["datasets"]})
    res = run("study", "reduction", bare, "-w", ws)
    assert res.returncode == 2 and "no `studies.reduction:` section" in res.stderr
    res = run("features", bare, "-w", ws)
    assert res.returncode == 2 and "no `features:` section" in res.stderr
    zarr.open_array(ws, path="features/clean/lbp/features", mode="r+")[0, 0] = np.nan
    res = run("study", "reduction", config, "-w", ws, "--cluster", "threads")
    assert res.returncode == 2 and "features/clean/lbp has NaN/inf features in 1 of 18 samples" in res.stderr
