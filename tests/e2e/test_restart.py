"""The Prefect UI across a restart, as a user meets it with ``deploy/demo.py``.

A first session (a subprocess: a Prefect server with its database where demo.py keeps it, and the
figure server on the configured fixed port) records a flow run that publishes an image artifact of a
figure in the workspace's figure folder, and registers the pipeline deployment; then everything
stops. ``deploy/demo.py --keep`` starts it all again on the same database (a new Prefect server
process, a Dask cluster, the figure server on the same port), runs the pipeline (nothing left to do:
the workspace is already ingested) and keeps everything up. Headless Chromium then opens the earlier
run's image artifact (the image loads) and the deployment's Custom run form (choice lists); the
printed dashboard link answers; SIGTERM to demo.py stops every process it started. (serve.py's
SIGTERM: tests/e2e/test_ui.py, on the served deployment it already has.)

The demo's ``local`` cluster profile is redefined with one worker (``$XAIFLOW_CLUSTER_DIR``, as a site
would), which keeps real worker processes for the SIGTERM check at half the start-up cost.
"""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import psutil
import pytest
import yaml
from services import REPO, api_json, base_env, free_port, log_tail

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

#: the first session, run as its own process (Prefect caches its clients per process)
FIRST_SESSION = r"""
import json, sys
from pathlib import Path

sys.path.insert(0, sys.argv[1])
from local import figure_roots, figure_server, prefect_server
from PIL import Image

from xaiflow.config import load_config
from xaiflow.ingest import ingest

config, ws, port = sys.argv[2], Path(sys.argv[3]), int(sys.argv[4])
ingest(load_config(config), ws)
figure = figure_roots(ws)[1] / "restart check.png"
figure.parent.mkdir(parents=True, exist_ok=True)
Image.new("RGB", (64, 48), (200, 30, 30)).save(figure)
with figure_server(figure_roots(ws)), prefect_server(port, home=ws.parent / "prefect-home"):
    from prefect import flow

    from xaiflow_flows.artifacts import publish_figure
    from xaiflow_flows.pipeline import pipeline_flow

    @flow(name="figure-once", flow_run_name="figure-once")
    def figure_once() -> str:
        return publish_figure(figure, "restart-check")

    state = figure_once(return_state=True)
    deployment = pipeline_flow.to_deployment(name="restart-form").apply()
    print(json.dumps({"flow_run": str(state.state_details.flow_run_id), "url": state.result(),
                      "deployment": str(deployment)}))
"""


@dataclass
class Demo:
    proc: subprocess.Popen
    log: Path
    ui: str
    dashboard: str
    figures_port: int
    first: dict  # the first session's flow run, image URL and deployment id

    @property
    def api(self) -> str:
        return f"{self.ui}/api"

    def tree(self) -> list[psutil.Process]:
        """demo.py and every process it started (the Prefect server, the Dask workers)."""
        try:
            me = psutil.Process(self.proc.pid)
            return [me, *me.children(recursive=True)]
        except psutil.NoSuchProcess:
            return []


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    work = tmp_path_factory.mktemp("restart")
    config, ws = work / "run.yaml", work / "ws.zarr"
    config.write_text(yaml.safe_dump({"datasets": [{
        "name": "syn", "chunk_size": 6, "geometry": {"size": [32, 32]},
        "source": {"kind": "synthetic", "specimens_per_class": 2, "images_per_specimen": 1, "size": [32, 32],
                   "classes": ["particles", "lamellae", "network"]}}]}))
    port, figures_port = free_port(), free_port()
    (work / "cluster").mkdir()
    (work / "cluster" / "local.yaml").write_text(yaml.safe_dump({
        "kind": "local", "n_workers": 1, "threads_per_worker": 1, "dashboard_address": "127.0.0.1:0"}))
    env = {**base_env(), "XAIFLOW_FIGURES_PORT": str(figures_port), "XAIFLOW_CLUSTER_DIR": str(work / "cluster")}
    first = subprocess.run([sys.executable, "-c", FIRST_SESSION, str(REPO / "deploy"), str(config), str(ws),
                            str(port)], env=env, cwd=REPO, capture_output=True, text=True, timeout=300)
    assert first.returncode == 0, first.stderr[-3000:]
    recorded = json.loads(first.stdout.strip().splitlines()[-1])

    log = work / "demo.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen([sys.executable, str(REPO / "deploy" / "demo.py"), "--config", str(config),
                                 "--workspace", str(ws), "--port", str(port), "--keep"], env=env, cwd=REPO,
                                stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                start_new_session=True)
    started: list[psutil.Process] = []
    try:
        deadline = time.monotonic() + 300
        while "Kept up until Ctrl-C" not in log.read_text() and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.5)
        text = log.read_text()
        assert "Kept up until Ctrl-C" in text, f"demo.py did not come up (code {proc.poll()}):\n{log_tail(log)}"
        ui = re.search(r"Prefect UI:\s+(\S+)", text).group(1)
        dashboard = re.search(r"Dask dashboard:\s+(\S+)", text).group(1)
        result = Demo(proc, log, ui, dashboard, figures_port, recorded)
        started = result.tree()
        yield result
    finally:  # whatever the SIGTERM test left (or everything, when a test before it failed)
        for p in [*started, *Demo(proc, log, "", "", 0, {}).tree()]:
            try:
                p.kill()
            except psutil.NoSuchProcess:
                pass
        proc.wait(timeout=60)


def test_an_earlier_runs_image_artifact_loads_after_a_restart(demo, browser, tmp_path):
    from selenium.webdriver.support.ui import WebDriverWait

    url = demo.first["url"]
    assert url.startswith(f"http://127.0.0.1:{demo.figures_port}/") and url.endswith("/restart%20check.png")
    body = {"artifacts": {"flow_run_id": {"any_": [demo.first["flow_run"]]}}}
    (artifact,) = api_json("POST", f"{demo.api}/artifacts/filter", json=body)
    assert (artifact["key"], artifact["type"], artifact["data"]) == ("restart-check", "image", url)
    browser.get(f"{demo.ui}/artifacts/artifact/{artifact['id']}")
    width = WebDriverWait(browser, 60).until(lambda d: d.execute_script(
        "const img = [...document.images].find(i => i.src === arguments[0]);"
        "return img && img.complete ? img.naturalWidth : 0;", url))
    browser.save_screenshot(str(tmp_path / "artifact-after-restart.png"))
    assert width == 64  # the figure's pixels, served again after the restart


def test_the_custom_run_form_offers_choice_lists(demo, browser, tmp_path):
    from selenium.webdriver.support.ui import WebDriverWait

    from xaiflow.clusters import profile_names

    browser.get(f"{demo.ui}/deployments/deployment/{demo.first['deployment']}/run")
    WebDriverWait(browser, 60).until(lambda d: d.find_elements("xpath", "//select[option[@value='local']]"))
    selects = browser.execute_script(
        "return [...document.querySelectorAll('select')].map(s => [...s.options].map(o => o.value))")
    assert sorted(profile_names()) in selects  # cluster: a choice list of the profiles
    assert ["auto", "cpu", "cuda", "mps"] in selects  # device
    assert any({"grad_cam", "saliency"} <= set(values) for values in selects)  # methods: a multi-select
    text = browser.find_element("tag name", "body").text
    assert "Scheduler Address" in text and "Data Dir" in text and "Property is type" not in text
    cluster = browser.find_element("xpath", "//select[option[@value='local']]")
    browser.execute_script("arguments[0].scrollIntoView({block: 'center'});", cluster)
    shot = tmp_path / "custom-run-form.png"
    browser.save_screenshot(str(shot))
    assert shot.stat().st_size > 10_000


def test_the_dashboard_link_answers_while_the_ui_is_kept_up(demo):
    import httpx

    assert httpx.get(demo.dashboard, timeout=30).status_code == 200


def _closed(url: str) -> bool:
    host, port = re.match(r"https?://([^:/]+):(\d+)", url).groups()
    with socket.socket() as s:
        return s.connect_ex((host, int(port))) != 0


def test_sigterm_stops_everything_demo_started(demo):
    tree = demo.tree()
    commands = [" ".join(p.cmdline()) for p in tree]
    assert any("prefect server start" in c for c in commands) and len(tree) >= 3, commands  # + a Dask worker
    os.kill(demo.proc.pid, signal.SIGTERM)
    assert demo.proc.wait(timeout=90) == 0  # kept up: SIGTERM ends it like Ctrl-C
    _, alive = psutil.wait_procs(tree, timeout=30)
    assert not alive, [" ".join(p.cmdline()) for p in alive]
    for url in (demo.ui, demo.dashboard, f"http://127.0.0.1:{demo.figures_port}"):
        assert _closed(url), url
    assert "Traceback" not in demo.log.read_text(), log_tail(demo.log)
