"""What listens where, what the figure server hands out, and commands that must fail fast and clearly
instead of hanging or printing a traceback (a batch system that is not there, a scheduler that does not
answer, a server that wants a password, a missing extra, a checkpoint carrying code)."""

from __future__ import annotations

import hashlib
import json
import os
import shlex
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import psutil
import pytest
import torch

from reliability.conftest import assert_clean_error, cli, copy_workspace
from xaiflow import store

pytestmark = pytest.mark.slow
REPO = Path(__file__).resolve().parents[2]
LOOPBACK = ("127.0.0.1", "::1")


def _listening(pids: set[int]) -> set[tuple[str, int]]:
    return {(c.laddr.ip, c.laddr.port) for c in psutil.net_connections(kind="inet")
            if c.status == psutil.CONN_LISTEN and c.pid in pids}


@pytest.mark.parametrize("profile", ["threads", "local"])
def test_local_clusters_listen_on_loopback_only(profile):
    from xaiflow.runtime import dask_client

    with dask_client(profile) as client:
        me = psutil.Process()
        pids = {me.pid, *(p.pid for p in me.children(recursive=True))}
        sockets = _listening(pids)
        link = client.dashboard_link
    assert sockets and all(ip in LOOPBACK for ip, _ in sockets), sockets
    assert link.startswith("http://127.0.0.1:"), link


def test_the_figure_server_serves_figures_only(tmp_path):
    sys.path.insert(0, str(REPO / "deploy"))
    from local import figure_server

    (tmp_path / "reports" / "m").mkdir(parents=True)
    (tmp_path / "reports" / "m" / "fig.png").write_bytes(b"\x89PNG figure")
    (tmp_path / "prefect-home").mkdir()
    (tmp_path / "prefect-home" / "prefect.db").write_bytes(b"SQLite format 3\0 secrets")
    (tmp_path / ".hidden").mkdir()
    (tmp_path / ".hidden" / "fig.png").write_bytes(b"\x89PNG hidden")
    outside = tmp_path.parent / f"{tmp_path.name}-outside.png"
    outside.write_bytes(b"\x89PNG outside")
    (tmp_path / "reports" / "link.png").symlink_to(outside)
    with figure_server(tmp_path) as base:
        with urllib.request.urlopen(f"{base}/reports/m/fig.png", timeout=10) as r:
            assert r.read() == b"\x89PNG figure"
        for path in ("prefect-home/prefect.db", ".hidden/fig.png", "reports/link.png", "reports/", "",
                     "../" + outside.name, "reports/m/fig.png/..%2f..%2fprefect-home%2fprefect.db"):
            with pytest.raises(urllib.error.HTTPError) as err:
                urllib.request.urlopen(f"{base}/{path}", timeout=10)
            assert err.value.code == 404, path


def test_a_missing_batch_system_or_extra_is_named_at_once(tmp_path, trained):
    config, ws = trained
    ws = copy_workspace(ws, tmp_path / "ws.zarr")
    started = time.time()
    assert_clean_error(cli("attribute", config, "-w", ws, "--cluster", "slurm"), "sbatch", "not on PATH")
    assert_clean_error(cli("attribute", config, "-w", ws, "--cluster", "kubernetes"), "pip install 'xaiflow[k8s]'")
    assert time.time() - started < 60


def test_an_unreachable_scheduler_is_named_within_a_timeout(tmp_path, trained):
    config, ws = trained
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # a port nothing listens on
    started = time.time()
    res = cli("attribute", config, "-w", copy_workspace(ws, tmp_path / "ws.zarr"), "--cluster",
              f"tcp://127.0.0.1:{port}")
    assert_clean_error(res, f"tcp://127.0.0.1:{port}", "cannot reach the Dask scheduler")
    assert time.time() - started < 60


def test_a_checkpoint_carrying_code_is_listed_as_refused(tmp_path, trained):
    _, ws = trained
    ws = copy_workspace(ws, tmp_path / "ws.zarr")
    directory = next(p for p in store.models_dir(ws).iterdir() if not p.name.startswith("."))
    marker = tmp_path / "pwned"

    class Payload:
        def __reduce__(self):
            return (os.system, (f"touch {shlex.quote(str(marker))}",))

    weights = directory / "weights.pt"
    torch.save(Payload(), weights)
    manifest = json.loads((directory / "manifest.json").read_text())
    manifest["weights_sha256"] = hashlib.sha256(weights.read_bytes()).hexdigest()  # the attacker fixes the hash
    (directory / "manifest.json").write_text(json.dumps(manifest))
    res = cli("models", "-w", ws)
    assert res.returncode == 0 and "refused: unsafe" in res.stdout, res.stdout + res.stderr
    assert not marker.exists()


def test_serving_without_the_servers_password_is_one_clear_error(tmp_path):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    api = f"http://127.0.0.1:{port}/api"
    env = {**os.environ, "PREFECT_HOME": str(tmp_path / "home"), "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
           "PREFECT_SERVER_API_AUTH_STRING": "admin:s3cret"}
    server = subprocess.Popen([str(Path(sys.executable).parent / "prefect"), "server", "start", "--host",
                               "127.0.0.1", "--port", str(port)], env=env, stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        deadline = time.time() + 180
        while time.time() < deadline:
            try:
                if urllib.request.urlopen(f"{api}/health", timeout=2).status == 200:
                    break
            except OSError:
                time.sleep(1)
        else:
            pytest.fail("the Prefect server did not start")
        client_env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}
        res = subprocess.run([sys.executable, str(REPO / "deploy" / "serve.py")], capture_output=True, text=True,
                             timeout=300, env={**client_env, "PREFECT_API_URL": api,
                                               "PREFECT_HOME": str(tmp_path / "client-home")})
        assert res.returncode == 2, res.stderr[-3000:]
        assert "refused this client (401)" in res.stderr and "PREFECT_API_AUTH_STRING" in res.stderr
        assert "Traceback" not in res.stderr, res.stderr[-3000:]
    finally:
        os.killpg(server.pid, 9)
        server.wait(timeout=30)
