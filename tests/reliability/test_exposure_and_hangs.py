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
    with figure_server([tmp_path], port=0) as base:  # the URL path is the figure's absolute path
        with urllib.request.urlopen(f"{base}{tmp_path}/reports/m/fig.png", timeout=10) as r:
            assert r.read() == b"\x89PNG figure"
        for path in ("prefect-home/prefect.db", ".hidden/fig.png", "reports/link.png", "reports/", "",
                     "../" + outside.name, "reports/m/fig.png/..%2f..%2fprefect-home%2fprefect.db"):
            with pytest.raises(urllib.error.HTTPError) as err:
                urllib.request.urlopen(f"{base}{tmp_path}/{path}", timeout=10)
            assert err.value.code == 404, path
        with pytest.raises(urllib.error.HTTPError, match="404"):  # a figure outside the roots
            urllib.request.urlopen(f"{base}{outside}", timeout=10)


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


def _self_signed(folder: Path) -> tuple[Path, Path]:
    """A CA-less self-signed certificate and key for 127.0.0.1 (the scheduler, workers and client share it)."""
    import datetime as dt
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import rsa
    from cryptography.x509.oid import NameOID

    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "xaiflow-test")])
    now = dt.datetime.now(dt.timezone.utc)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(now - dt.timedelta(days=1))
            .not_valid_after(now + dt.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), False)
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), True)
            .sign(key, hashes.SHA256()))
    cert_path, key_path = folder / "cert.pem", folder / "key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    return cert_path, key_path


def test_an_address_profile_with_tls_joins_only_with_its_certificate(tmp_path):
    """A real `dask scheduler` and worker requiring TLS: the address profile with the tls section
    runs tasks on it; a client without the certificate is refused."""
    from distributed import Client

    from xaiflow.clusters import ClusterProfileError
    from xaiflow.runtime import dask_client

    cert, key = _self_signed(tmp_path)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    address = f"tls://127.0.0.1:{port}"
    tls = ["--tls-ca-file", str(cert), "--tls-cert", str(cert), "--tls-key", str(key)]
    bin_dir = Path(sys.executable).parent
    procs = [subprocess.Popen([str(bin_dir / "dask"), "scheduler", "--host", "127.0.0.1", "--port", str(port),
                               "--protocol", "tls", "--dashboard-address", "127.0.0.1:0", *tls],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)]
    procs.append(subprocess.Popen([str(bin_dir / "dask"), "worker", address, "--nthreads", "1", "--no-nanny",
                                   "--host", "127.0.0.1", "--dashboard-address", "127.0.0.1:0", *tls],
                                  stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True))
    profile = tmp_path / "site.yaml"
    profile.write_text(f"kind: address\naddress: {address}\ntls: {{ca_file: {cert}, cert: {cert}, key: {key}}}\n")
    try:
        deadline = time.time() + 90
        while True:
            try:
                with dask_client(str(profile)) as client:
                    client.wait_for_workers(1, timeout=30)
                    assert client.submit(sum, [1, 2, 3]).result(timeout=30) == 6
                    break
            except ClusterProfileError:
                if time.time() > deadline:
                    raise
                time.sleep(1)
        with pytest.raises(OSError):  # no certificate: the scheduler does not talk to it
            Client(address.replace("tls://", "tcp://"), timeout=5)
    finally:
        for p in procs:
            os.killpg(p.pid, 9)
            p.wait(timeout=30)


def test_a_slurm_profile_with_tls_runs_its_scheduler_and_workers_on_tls(tmp_path, monkeypatch):
    """The SLURM job script of a `tls: {temporary: true}` profile starts workers with certificates and a
    tls:// scheduler address: a scheduler on a shared network then accepts no stranger."""
    from xaiflow.clusters import cluster_spec, load_cluster_profile
    from xaiflow.runtime import start_cluster

    (tmp_path / "bin").mkdir()
    for command, output in (("sbatch", "Submitted batch job 1"), ("scancel", "")):  # no job really runs
        (tmp_path / "bin" / command).write_text(f"#!/bin/sh\necho '{output}'\n")
        (tmp_path / "bin" / command).chmod(0o755)
    monkeypatch.setenv("PATH", f"{tmp_path / 'bin'}:{os.environ['PATH']}")
    monkeypatch.chdir(tmp_path)
    profile = tmp_path / "hpc.yaml"
    profile.write_text(f"kind: slurm\nmemory_limit: 8GiB\nslurm: {{shared_temp_directory: {tmp_path}}}\n"
                       "tls: {temporary: true}\n")
    spec = cluster_spec(load_cluster_profile(str(profile)))
    with start_cluster(spec.model_copy(update={"adapt": None})) as cluster:
        assert cluster.scheduler_address.startswith("tls://")
        script = cluster.job_script()
        assert "--tls-ca-file" in script and "tls://" in script
