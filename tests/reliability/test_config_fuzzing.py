"""Config fuzzing (hypothesis): every invalid run config or cluster profile is refused with a message
naming the file and the field, never another exception; the CLI shows such errors without a traceback."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cli_run import run as cli_in_process
from conftest import synthetic_dataset
from xaiflow.clusters import ClusterProfileError, load_cluster_profile
from xaiflow.config import ConfigError, parse_config

VALID: dict[str, Any] = {
    "datasets": [synthetic_dataset(), {"name": "folder", "source": {"kind": "folder", "root": "data", "csv": "l.csv",
                                                                      "columns": {"file": "f", "label": "l"}},
                                       "geometry": {"size": [64, 64], "mode": "crop"}, "chunk_size": 8}],
    "train": {"dataset": "syn", "epochs": 2, "model_params": {"widths": [4, 8]}, "augment": {"crop": 24}},
    "attribution": {"dataset": "syn", "methods": ["saliency", {"name": "integrated_gradients", "key": "ig",
                                                               "params": {"n_steps": 8}}], "splits": ["test"]},
    "features": {"dataset": "syn", "model": {"train": "this"}, "extractors": [{"name": "glcm"}]},
    "studies": {"dataset": "syn", "cv": {"folds": 2}, "feature_sets": {"texture": ["glcm"]},
                "reduction": {"feature_sets": ["texture"], "methods": ["pca"]}},
}
PROFILE: dict[str, Any] = {"kind": "local", "threads_per_worker": 1, "n_workers": 2, "memory_limit": "auto",
                           "dashboard_address": "127.0.0.1:0"}

#: values a hostile or careless config may hold where something else belongs
VALUES = st.one_of(st.none(), st.booleans(), st.integers(-10**15, 10**15), st.floats(allow_nan=True),
                   st.text(max_size=12), st.lists(st.integers(-5, 5), max_size=3),
                   st.dictionaries(st.text(max_size=6), st.integers(), max_size=2))


def _leaves(node: Any, path: tuple = ()) -> list[tuple]:
    """Paths of every value (and every mapping, where a key can be added) of a config."""
    out = [path]
    if isinstance(node, dict):
        for k, v in node.items():
            out += _leaves(v, (*path, k))
    elif isinstance(node, list):
        for i, v in enumerate(node):
            out += _leaves(v, (*path, i))
    return out


@st.composite
def mutated(draw: Any, base: dict[str, Any]) -> tuple[dict[str, Any], tuple]:
    """``base`` with one value replaced by an arbitrary one, or an unknown key added to one mapping."""
    data = copy.deepcopy(base)
    path = draw(st.sampled_from([p for p in _leaves(base) if p]))
    parent = data
    for part in path[:-1]:
        parent = parent[part]
    if isinstance(parent[path[-1]], dict) and draw(st.booleans()):
        parent[path[-1]]["no_such_setting"] = draw(VALUES)
        return data, (*path, "no_such_setting")
    parent[path[-1]] = draw(VALUES)
    return data, path


def _named(message: str, path: tuple) -> bool:
    """The message names the field: one of the path's names (a list index alone names nothing)."""
    names = [str(p) for p in path if not isinstance(p, int)]
    return any(name in message for name in names) or not names


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(case=mutated(VALID))
def test_an_invalid_run_config_names_the_file_and_the_field(case, tmp_path):
    data, path = case
    try:
        parse_config(data, origin="fuzz.yaml", base_dir=tmp_path)
    except ConfigError as e:
        message = str(e)
        assert "fuzz.yaml" in message, message
        assert _named(message, path), f"{path}: {message}"


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(case=mutated(PROFILE))
def test_an_invalid_cluster_profile_names_the_file_and_the_field(case, tmp_path):
    data, path = case
    profile = tmp_path / "site.yaml"
    profile.write_text(yaml.safe_dump(data))
    try:
        load_cluster_profile(str(profile))
    except ClusterProfileError as e:
        message = str(e)
        assert str(profile) in message, message
        assert _named(message, path) or "kind" in message, f"{path}: {message}"


@pytest.mark.slow
@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(case=mutated(VALID))
def test_the_cli_shows_config_errors_without_a_traceback(case, tmp_path):
    data, _ = case
    config = tmp_path / "run.yaml"
    config.write_text(yaml.safe_dump(data))
    res = cli_in_process("train", config, "-w", Path(tmp_path) / "empty.zarr", "--no-predict")
    assert res.returncode == 2, res.stdout + res.stderr  # refused, or no images to train on: never a crash
    assert "Traceback" not in res.stderr and "error:" in res.stderr, res.stderr[-2000:]
