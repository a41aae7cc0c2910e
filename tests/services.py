"""Real services for end-to-end and soak tests: processes started once per session, stopped at teardown.

Registered for the whole suite by ``tests/conftest.py`` (``pytest_plugins``), so the e2e tests and
the reliability soak share one server and one Dask cluster:

* a Prefect server (``prefect server start``) on a free loopback port, with its own
  ``PREFECT_HOME`` (so its SQLite database is fresh and isolated);
* a Dask scheduler (``dask scheduler``) and two workers (``dask worker --nthreads 1 --nworkers 1``)
  on loopback, pointed at that Prefect server (tasks that Prefect's DaskTaskRunner sends them
  report to it; without ``PREFECT_API_URL`` each worker would start a temporary server of its own);
* ``deploy/serve.py``: every flow served as a deployment on that server, as a user runs it.

Every process runs in a session (process group) of its own, writes its output to a log file in
the session's tmp dir, and is killed with its whole group at teardown, on failure too. A process
that does not come up fails the test with the tail of its log.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import httpx
import pytest

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
LOOPBACK = "127.0.0.1"


def free_port() -> int:
    with socket.socket() as s:
        s.bind((LOOPBACK, 0))
        return s.getsockname()[1]


def log_tail(path: Path, lines: int = 60) -> str:
    text = path.read_text(errors="replace") if path.is_file() else "(no log)"
    return "\n".join(text.splitlines()[-lines:])


@dataclass
class Proc:
    name: str
    popen: subprocess.Popen
    log: Path

    def check_alive(self) -> None:
        if self.popen.poll() is not None:
            pytest.fail(f"{self.name} exited with code {self.popen.returncode}; its log ({self.log}):\n"
                        f"{log_tail(self.log)}")


@dataclass
class Processes:
    """The processes a test session started; :meth:`stop_all` kills each one's process group."""

    logs: Path
    started: list[Proc] = field(default_factory=list)

    def start(self, name: str, cmd: list[str], env: dict[str, str], cwd: Path = REPO) -> Proc:
        log = self.logs / f"{name}.log"
        with open(log, "ab") as out:
            popen = subprocess.Popen(cmd, env=env, cwd=cwd, stdout=out, stderr=subprocess.STDOUT,
                                     stdin=subprocess.DEVNULL, start_new_session=True)
        proc = Proc(name, popen, log)
        self.started.append(proc)
        return proc

    def stop_all(self) -> None:
        """SIGINT (Ctrl-C) to every group, newest first, then SIGKILL to what is left after 5 s: their
        state is throwaway, and Prefect 3.8's runner does not always stop on a signal (SIGTERM: "coroutine
        'Runner.astop' was never awaited"; SIGINT: NoEventLoopError in serve's shutdown)."""
        for proc in reversed(self.started):
            _signal_group(proc.popen, signal.SIGINT)
        deadline = time.monotonic() + 5
        for proc in reversed(self.started):
            try:
                proc.popen.wait(timeout=max(deadline - time.monotonic(), 0.1))
            except subprocess.TimeoutExpired:
                pass
            _signal_group(proc.popen, signal.SIGKILL)  # children left in the group, or the leader itself
            proc.popen.wait()
        self.started.clear()


def _signal_group(popen: subprocess.Popen, sig: int) -> None:
    try:
        os.killpg(popen.pid, sig)  # start_new_session: the group id is the leader's pid
    except ProcessLookupError:
        pass


def wait_until(check: Callable[[], Any], timeout: float, what: str, proc: Proc | None = None,
               interval: float = 0.5) -> Any:
    """Poll ``check()`` until it returns a truthy value; fail with ``proc``'s log when it exits or times out."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None:
            proc.check_alive()
        try:
            result = check()
        except (httpx.HTTPError, OSError):
            result = None
        if result:
            return result
        time.sleep(interval)
    log = f"; log of {proc.name} ({proc.log}):\n{log_tail(proc.log)}" if proc else ""
    pytest.fail(f"timed out after {timeout:.0f} s waiting for {what}{log}")


@pytest.fixture(scope="session")
def processes(tmp_path_factory):
    procs = Processes(tmp_path_factory.mktemp("e2e-logs"))
    try:
        yield procs
    finally:
        procs.stop_all()


def base_env() -> dict[str, str]:
    """This environment without the variables that would leak the test process's Prefect/Dask setup."""
    env = {k: v for k, v in os.environ.items()
           if not k.startswith("PREFECT_") and k != "MALLOC_TRIM_THRESHOLD_"}
    env["PREFECT_SERVER_ANALYTICS_ENABLED"] = "false"
    env["PYTHONUNBUFFERED"] = "1"
    return env


@dataclass(frozen=True)
class PrefectServer:
    url: str   # the UI
    api: str   # the REST API (PREFECT_API_URL)
    home: Path
    log: Path

    def client_env(self) -> dict[str, str]:
        """Environment of a process that talks to this server (flows, workers)."""
        return {**base_env(), "PREFECT_API_URL": self.api, "PREFECT_HOME": str(self.home)}


@dataclass(frozen=True)
class DaskCluster:
    address: str
    logs: list[Path]


@pytest.fixture(scope="session")
def services(processes, tmp_path_factory) -> tuple[PrefectServer, DaskCluster]:
    """Starts, all at once (the server takes ~20-40 s to come up on a busy machine, the workers too):

    * ``prefect server start`` on a free loopback port with a fresh PREFECT_HOME;
    * ``dask scheduler`` + two ``dask worker --nthreads 1 --nworkers 1`` on loopback; the workers
      report Prefect tasks to this server and run without the nanny's MALLOC_TRIM_THRESHOLD_.

    then waits until the server's /api/health answers and both workers joined the scheduler."""
    from distributed import Client

    from xaiflow.clusters import worker_env

    home, scratch = tmp_path_factory.mktemp("prefect-home"), tmp_path_factory.mktemp("dask")
    port = free_port()
    api = f"http://{LOOPBACK}:{port}/api"
    server_proc = processes.start("prefect-server", [str(BIN / "prefect"), "server", "start", "--host", LOOPBACK,
                                                     "--port", str(port)],
                                  {**base_env(), "PREFECT_HOME": str(home), "PREFECT_UI_API_URL": api})
    server = PrefectServer(f"http://{LOOPBACK}:{port}", api, home, server_proc.log)

    address = f"tcp://{LOOPBACK}:{free_port()}"
    env = server.client_env()
    scheduler = processes.start("dask-scheduler", [str(BIN / "dask"), "scheduler", "--host", LOOPBACK, "--port",
                                                   address.rsplit(":", 1)[1], "--dashboard-address",
                                                   f"{LOOPBACK}:0"], env)
    workers = [processes.start(f"dask-worker-{i}",
                               [str(BIN / "dask"), "worker", address, "--nthreads", "1", "--nworkers", "1",
                                "--host", LOOPBACK, "--dashboard-address", f"{LOOPBACK}:0",
                                "--local-directory", str(scratch / f"w{i}"), "--name", f"e2e-{i}"],
                               {**env, **worker_env(1)}) for i in range(2)]

    wait_until(lambda: httpx.get(f"{api}/health", timeout=2).status_code == 200, 120,
               f"the Prefect server's {api}/health", server_proc)

    def two_workers() -> bool:
        for p in (scheduler, *workers):
            p.check_alive()
        with Client(address, timeout=5) as c:
            return len(c.scheduler_info()["workers"]) == 2

    wait_until(two_workers, 120, f"two Dask workers at {address}", scheduler, interval=1)
    return server, DaskCluster(address, [p.log for p in (scheduler, *workers)])


@pytest.fixture(scope="session")
def prefect_server(services) -> PrefectServer:
    return services[0]


@pytest.fixture(scope="session")
def dask_cluster(services) -> DaskCluster:
    return services[1]


@dataclass(frozen=True)
class Deployment:
    id: str
    name: str          # "<flow name>/<deployment name>"
    parameters: dict   # its defaults (what "Quick run" uses)
    workspace: Path
    log: Path
    pid: int           # of the serve.py process


def api_json(method: str, url: str, **kwargs) -> Any:
    """One REST call; retried on 503, which the server answers while its SQLite database is busy
    (e.g. while serve.py registers its deployments), as Prefect's own client does."""
    for attempt in range(10):
        response = httpx.request(method, url, timeout=30, **kwargs)
        if response.status_code != 503:
            break
        time.sleep(0.5 * (attempt + 1))
    if response.is_error:
        raise AssertionError(f"{method} {url} -> {response.status_code}: {response.text[:2000]}")
    return response.json() if response.content else None


#: the model-inspection sections of :func:`tiny_pipeline_config`, small and fast
TINY_INSPECTIONS = {
    "uncertainty": {"dataset": "syn", "passes": 3, "device": "cpu"},
    "concepts": {"dataset": "syn", "concepts": ["structure=mask:structure"], "runs": 3, "examples": 6,
                 "min_fraction": 0.3, "device": "cpu"},
    "importance": {"dataset": "syn", "device": "cpu"},
    "probes": {"dataset": "syn", "transforms": ["rot90"], "device": "cpu"},
    "adversarial": {"dataset": "syn", "max_samples": 4, "steps": 2, "device": "cpu"},
}


#: a ``compare:`` model of :func:`tiny_pipeline_config`: the same training with another seed, one method
TINY_COMPARE = [{"name": "seed1", "train": {"seed": 1}, "methods": ["grad_cam"]}]


def tiny_pipeline_config(work: Path, inspections: bool = False, compare: bool = False) -> Path:
    """A run config of 24 synthetic 32 px images with every pipeline stage up to the report configured,
    small and fast; with ``inspections`` the model-inspection stages too (:data:`TINY_INSPECTIONS`), with
    ``compare`` a second model judged beside the first (:data:`TINY_COMPARE`)."""
    from conftest import write_tiny_run_config

    return write_tiny_run_config(
        work,
        attribution={"dataset": "syn", "methods": ["saliency"], "splits": ["test"], "device": "cpu"},
        features={"dataset": "syn", "extractors": [{"name": "glcm", "params": {"distances": [1, 2]}}]},
        studies={"dataset": "syn", "cv": {"folds": 2, "classifiers": ["logistic_regression"]},
                 "feature_sets": {"texture": ["glcm"]},
                 "reduction": {"feature_sets": ["texture"], "methods": ["pca"], "classifier": "logistic_regression"}},
        **(TINY_INSPECTIONS if inspections else {}), **({"compare": TINY_COMPARE} if compare else {}))


@pytest.fixture(scope="session")
def served_deployment(processes, prefect_server, dask_cluster, tmp_path_factory) -> Deployment:
    """``deploy/serve.py`` serving every flow on the test server (and the run's figures on a free port);
    the pipeline deployment's default parameters (what "Quick run" uses) set, as a user would in the
    UI's deployment form, to a tiny run config, a fresh workspace and the separately started Dask
    scheduler."""
    work = tmp_path_factory.mktemp("e2e-run")
    workspace = work / "ws.zarr"
    config = tiny_pipeline_config(work, inspections=True)
    parameters = {"params": {"config_path": str(config), "workspace": str(workspace),
                             "scheduler_address": dask_cluster.address, "device": "cpu",
                             "metrics": ["sparseness", "entropy"], "report_out": str(work / "report")}}
    env = {**prefect_server.client_env(), "PREFECT_RUNNER_POLL_FREQUENCY": "1"}
    proc = processes.start("serve", [sys.executable, str(REPO / "deploy" / "serve.py"), "--cluster",
                                     dask_cluster.address, "--figures-port", str(free_port()), "--figures-root",
                                     str(work)], env)
    name = "xaiflow-pipeline/pipeline"
    deployment = wait_until(lambda: httpx.get(f"{prefect_server.api}/deployments/name/{name}", timeout=5)
                            .raise_for_status().json(), 120, f"deployment {name}", proc)
    api_json("PATCH", f"{prefect_server.api}/deployments/{deployment['id']}", json={"parameters": parameters})
    return Deployment(deployment["id"], name, parameters, workspace, proc.log, proc.popen.pid)


TERMINAL = {"COMPLETED", "FAILED", "CRASHED", "CANCELLED"}


def flow_run_logs(api: str, flow_run_id: str) -> str:
    body = {"logs": {"flow_run_id": {"any_": [flow_run_id]}}, "sort": "TIMESTAMP_ASC", "limit": 200}
    return "\n".join(f"{r['timestamp']} {r['level']:>2} {r['message']}"
                     for r in api_json("POST", f"{api}/logs/filter", json=body))


def wait_for_flow_run(prefect_server: PrefectServer, deployment: Deployment, flow_run_id: str,
                      timeout: float = 240) -> dict:
    """Poll the flow run until it is terminal; fail with its logs and the serve log unless it COMPLETED."""
    deadline = time.monotonic() + timeout
    run = api_json("GET", f"{prefect_server.api}/flow_runs/{flow_run_id}")
    while run["state_type"] not in TERMINAL and time.monotonic() < deadline:
        time.sleep(1)
        run = api_json("GET", f"{prefect_server.api}/flow_runs/{flow_run_id}")
    if run["state_type"] != "COMPLETED":
        waited = "" if run["state_type"] in TERMINAL else f" after {timeout:.0f} s"
        pytest.fail(f"flow run {run['name']} ({flow_run_id}) is {run['state_type']}{waited} "
                    f"({(run.get('state') or {}).get('message')})\n"
                    f"--- flow run logs ---\n{flow_run_logs(prefect_server.api, flow_run_id)}\n"
                    f"--- serve process log ({deployment.log}) ---\n{log_tail(deployment.log)}")
    return run
