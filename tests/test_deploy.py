"""Deployment definitions and the loopback figure server (no Prefect server needed)."""

import importlib
import os
import sys
import urllib.error
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
    from xaiflow_flows.pipeline import PipelineParams

    flows = serve.flows()
    assert tuple(flows) == serve.DEPLOYMENTS
    assert all(isinstance(f, Flow) for f in flows.values())
    assert len({f.name for f in flows.values()}) == len(flows)
    # --cluster: every deployment's default cluster (the pipeline's inside its typed form: an address as
    # scheduler_address, a profile name as cluster), valid for the form
    defaults = {name: serve.default_parameters(f, "tcp://127.0.0.1:8786") for name, f in flows.items()}
    assert defaults["pipeline"] == {"params": {"scheduler_address": "tcp://127.0.0.1:8786"}}
    assert all(d == {"cluster": "tcp://127.0.0.1:8786"} for n, d in defaults.items()
               if n not in ("pipeline", "report", "human"))
    assert serve.default_parameters(flows["pipeline"], "threads") == {"params": {"cluster": "threads"}}
    for cluster in ("tcp://127.0.0.1:8786", "threads"):
        assert PipelineParams.model_validate(serve.default_parameters(flows["pipeline"], cluster)["params"])


def test_figure_server_serves_figures_at_the_artifact_url_across_restarts(tmp_path, monkeypatch):
    """The artifact URL holds the fixed port and the figure's absolute path, so a figure server started
    later (a restart, or serve.py with a wider root) serves the same URL; nothing outside its roots."""
    from urllib.parse import quote

    from local import figure_roots, figure_server, free_port
    from xaiflow_flows.artifacts import artifact_key, figure_url

    monkeypatch.delenv("XAIFLOW_FIGURES_URL", raising=False)
    monkeypatch.delenv("XAIFLOW_FIGURES_ROOT", raising=False)
    reports, figures = figure_roots(tmp_path / "ws.zarr")
    assert (reports.name, figures.name) == ("ws.reports", "ws.figures")
    figure, page = reports / "m 1" / "class_means.png", reports / "m 1" / "report.html"
    figure.parent.mkdir(parents=True)
    figure.write_bytes(b"\x89PNG fake")
    page.write_text("<html>report</html>")
    (tmp_path / "ws.zarr").mkdir()
    (tmp_path / "ws.zarr" / "image.png").write_bytes(b"\x89PNG not a report figure")
    assert figure_url(figure) == figure.resolve().as_uri()  # no server: a file:// URL
    port = free_port()
    monkeypatch.setenv("XAIFLOW_FIGURES_PORT", str(port))  # the configured fixed port
    with figure_server([reports, figures]) as base:
        assert base == f"http://127.0.0.1:{port}"
        url = figure_url(figure)
        assert url == f"{base}{quote(str(figure.resolve()))}"
        with urllib.request.urlopen(url, timeout=10) as r:
            assert r.read() == b"\x89PNG fake"
        with urllib.request.urlopen(figure_url(page), timeout=10) as r:
            assert r.read() == b"<html>report</html>"
        assert figure_url(tmp_path / "ws.zarr" / "image.png").startswith("file://")  # not a report/figure folder
        with pytest.raises(urllib.error.HTTPError, match="404"):
            urllib.request.urlopen(f"{base}{quote(str(tmp_path / 'ws.zarr' / 'image.png'))}", timeout=10)
        with pytest.raises(OSError, match=f"127.0.0.1:{port}.*XAIFLOW_FIGURES_PORT"), figure_server([figures]):
            pass  # the port is taken: one clear error naming the setting
    assert "XAIFLOW_FIGURES_URL" not in os.environ and "XAIFLOW_FIGURES_ROOT" not in os.environ  # restored
    with figure_server([tmp_path]), urllib.request.urlopen(url, timeout=10) as r:  # a later server, wider root
        assert r.read() == b"\x89PNG fake"
    monkeypatch.setenv("XAIFLOW_FIGURES_PORT", "http")
    with pytest.raises(ValueError, match="XAIFLOW_FIGURES_PORT"), figure_server([figures]):
        pass
    assert artifact_key("Feature classification", "uhcs_small") == "feature-classification-uhcs-small"


@pytest.mark.parametrize("bad", [{"device": "gpu"}, {"device": "cuda:x"}, {"device": "CPU"},
                                 {"cluster": "tcp://127.0.0.1:8786"}, {"scheduler_address": "127.0.0.1"},
                                 {"methods": ["gradcam"]}, {"metrics": ["roads"]},
                                 {"stages": ["ingest", "explain"]}])
def test_pipeline_params_refuse_what_the_form_does_not_offer(bad):
    from pydantic import ValidationError

    from xaiflow_flows.pipeline import PipelineParams

    with pytest.raises(ValidationError, match=next(iter(bad))):
        PipelineParams(**bad)


def test_pipeline_params_empty_fields_mean_the_config():
    from xaiflow_flows.pipeline import PipelineParams

    p = PipelineParams()
    assert (p.methods, p.metrics, p.data_dir, p.report_out, p.dask_cluster) == ([], [], "", "", "local")
    p = PipelineParams(cluster="threads", scheduler_address="tcp://127.0.0.1:8786", methods=["grad_cam"])
    assert p.dask_cluster == "tcp://127.0.0.1:8786" and p.methods == ["grad_cam"]


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
