"""Deployment definitions and the loopback figure server (no Prefect server needed)."""

import importlib
import os
import sys
import urllib.request
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "deploy"))


def test_prefect_yaml_entrypoints_are_flows_and_parameters_validate():
    from prefect import Flow

    from xaiflow_flows.pipeline import PipelineParams

    spec = yaml.safe_load((REPO / "prefect.yaml").read_text())
    names = [d["name"] for d in spec["deployments"]]
    assert names[0] == "pipeline" and len(set(names)) == len(names)
    for d in spec["deployments"]:
        path, _, attr = d["entrypoint"].partition(":")
        module = importlib.import_module(path.removesuffix(".py").replace("/", "."))
        assert isinstance(getattr(module, attr), Flow)
        assert d["work_pool"]["name"] == "xaiflow-process"
        params = PipelineParams.model_validate(d.get("parameters", {}).get("params", {}))
        assert params.stages and params.config_path == "configs/quickstart.yaml"


def test_serve_registers_every_flow_once():
    from prefect import Flow

    import serve

    flows = serve.flows()
    assert tuple(flows) == serve.DEPLOYMENTS
    assert all(isinstance(f, Flow) for f in flows.values())
    assert len({f.name for f in flows.values()}) == len(flows)
    # --cluster: every deployment's default cluster (the pipeline's inside its typed form)
    defaults = {name: serve.default_parameters(f, "tcp://127.0.0.1:8786") for name, f in flows.items()}
    assert defaults["pipeline"] == {"params": {"cluster": "tcp://127.0.0.1:8786"}}
    assert all(d == {"cluster": "tcp://127.0.0.1:8786"} for n, d in defaults.items() if n not in ("pipeline", "report", "human"))


def test_figure_server_serves_figures_at_the_artifact_url(tmp_path, monkeypatch):
    from xaiflow_flows.artifacts import artifact_key, figure_url
    from local import figure_server

    monkeypatch.delenv("XAIFLOW_FIGURES_URL", raising=False)
    monkeypatch.delenv("XAIFLOW_FIGURES_ROOT", raising=False)
    figure = tmp_path / "reports" / "m 1" / "examples.png"
    figure.parent.mkdir(parents=True)
    figure.write_bytes(b"\x89PNG fake")
    outside = tmp_path.parent / "elsewhere.png"
    assert figure_url(figure) == figure.resolve().as_uri()  # no server: a file:// URL
    with figure_server(tmp_path) as base:
        assert base.startswith("http://127.0.0.1:")
        url = figure_url(figure)
        assert url == f"{base}/reports/m%201/examples.png"
        with urllib.request.urlopen(url, timeout=10) as r:
            assert r.read() == b"\x89PNG fake"
        assert figure_url(outside).startswith("file://")  # not under the served root
    assert "XAIFLOW_FIGURES_URL" not in os.environ and "XAIFLOW_FIGURES_ROOT" not in os.environ  # restored
    assert artifact_key("Feature classification", "uhcs_small") == "feature-classification-uhcs-small"


@pytest.mark.parametrize("bad", ["gpu", "cuda:x", "CPU"])
def test_pipeline_params_refuse_a_bad_device(bad):
    from pydantic import ValidationError

    from xaiflow_flows.pipeline import PipelineParams

    with pytest.raises(ValidationError, match="device"):
        PipelineParams(device=bad)
    with pytest.raises(ValidationError, match="stages"):
        PipelineParams(stages=["ingest", "explain"])


def test_demo_on_a_workspace_of_another_config_says_so_before_starting_anything(tmp_path):
    """A returning user's workspace made by an earlier quick-start config: one clear error, exit 2,
    before any server starts (ingest would refuse the changed dataset halfway through the run)."""
    import subprocess

    from cli_run import run
    from conftest import write_tiny_run_config

    config = write_tiny_run_config(tmp_path)
    ws = tmp_path / "ws.zarr"
    assert run("ingest", str(config), "-w", str(ws), "--cluster", "threads").returncode == 0
    changed = yaml.safe_load(config.read_text())
    changed["datasets"][0]["source"]["seed"] = 99
    other = tmp_path / "other.yaml"
    other.write_text(yaml.safe_dump(changed))
    res = subprocess.run([sys.executable, str(REPO / "deploy" / "demo.py"), "--config", str(other),
                          "--workspace", str(ws)], capture_output=True, text=True, timeout=300)
    assert res.returncode == 2, res.stderr[-2000:]
    assert "holds dataset(s) syn made with another config" in res.stderr and "Traceback" not in res.stderr
    assert "Prefect UI" not in res.stdout  # nothing was started
