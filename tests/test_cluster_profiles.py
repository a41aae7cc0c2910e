"""Cluster profiles (configs/cluster/*.yaml): every file validates; local and address profiles
run real tasks on real worker processes; the SLURM profile's real job script (dask-jobqueue)
starts a worker that declares GPU=1 and runs without MALLOC_TRIM_THRESHOLD_; the Kubernetes
manifest is checked; missing optional packages and devices give clear errors."""

from __future__ import annotations

import copy
import importlib.util
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from xaiflow.clusters import (
    KINDS,
    NANNY_ENV_VAR,
    PACKAGE_CLUSTER_DIR,
    ClusterConfig,
    ClusterProfileError,
    check_daskcluster,
    cluster_spec,
    load_cluster_profile,
    nanny_environ,
    profile_names,
    require_cuda,
    worker_env,
)
from xaiflow.runtime import dask_client, map_tasks

PROFILE_FILES = sorted(PACKAGE_CLUSTER_DIR.glob("*.yaml"))
MANIFEST = PACKAGE_CLUSTER_DIR.parent / "k8s" / "daskcluster.yaml"


def worker_base_env() -> dict[str, str]:
    """Environment for worker processes the tests start: this process's (as now), this module
    importable (for worker_facts), and no MALLOC_TRIM_THRESHOLD_ inherited."""
    env = {k: v for k, v in os.environ.items() if k != "MALLOC_TRIM_THRESHOLD_"}
    return {**env, "PYTHONPATH": os.pathsep.join([str(Path(__file__).parent), env.get("PYTHONPATH", "")])}


def worker_facts(_item=None, dask_worker=None) -> dict:
    """What a task (or ``client.run``, which passes ``dask_worker``) sees of its worker:
    address, resources, threads, and the environment."""
    from distributed import get_worker

    w = dask_worker or get_worker()
    return {"worker": w.address, "resources": dict(w.state.total_resources), "nthreads": w.state.nthreads,
            "pid": os.getpid(), "MALLOC_TRIM_THRESHOLD_": os.environ.get("MALLOC_TRIM_THRESHOLD_"),
            "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS")}


def stop(proc: subprocess.Popen) -> None:
    """End a process group started by a test (the process and its children)."""
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


def test_every_profile_file_validates_and_is_found_by_name():
    kinds = {p.stem: load_cluster_profile(str(p)).kind for p in PROFILE_FILES}
    assert kinds == {"local": "local", "address": "address", "slurm": "slurm", "kubernetes": "kubernetes",
                     "gpu-local": "gpu-local"}
    assert set(KINDS) - {"threads"} == set(kinds.values())
    for name in kinds:
        assert load_cluster_profile(name) == load_cluster_profile(str(PACKAGE_CLUSTER_DIR / f"{name}.yaml"))
    assert set(profile_names()) == set(kinds) | {"threads"}


def test_profiles_are_found_in_xaiflow_cluster_dir_first(tmp_path, monkeypatch):
    (tmp_path / "local.yaml").write_text("kind: local\nn_workers: 3\nthreads_per_worker: 2\n")
    (tmp_path / "site.yaml").write_text("kind: address\naddress: tcp://10.1.2.3:8786\n")
    monkeypatch.setenv("XAIFLOW_CLUSTER_DIR", str(tmp_path))
    assert load_cluster_profile("local").n_workers == 3
    assert load_cluster_profile("site").address == "tcp://10.1.2.3:8786"
    assert "site" in profile_names()
    with pytest.raises(ClusterProfileError, match=r"unknown cluster profile 'nope'.*'site'"):
        load_cluster_profile("nope")


def test_local_profile_never_oversubscribes_the_cores():
    cpus = len(os.sched_getaffinity(0))
    spec = cluster_spec(load_cluster_profile("local"))
    assert spec.kwargs["n_workers"] * spec.kwargs["threads_per_worker"] == cpus
    two = cluster_spec(ClusterConfig(kind="local", threads_per_worker=2)).kwargs
    assert two["n_workers"] == max(1, cpus // 2) and two["env"]["OMP_NUM_THREADS"] == "2"


def test_local_profile_runs_tasks_on_two_worker_processes_without_malloc_trim():
    """Two threads per worker so the thread variables differ from Dask's default of 1."""
    cfg = load_cluster_profile("local").model_copy(update={"n_workers": 2, "threads_per_worker": 2})
    with dask_client(cfg) as client:
        facts = map_tasks(worker_facts, list(range(6)), client=client)
        per_worker = client.run(worker_facts)
    assert len(per_worker) == 2 and len({f["pid"] for f in per_worker.values()}) == 2
    assert os.getpid() not in {f["pid"] for f in facts}
    for f in list(facts) + list(per_worker.values()):
        assert f["MALLOC_TRIM_THRESHOLD_"] is None  # Dask's nanny would set 65536
        assert f["OMP_NUM_THREADS"] == "2" and f["nthreads"] == 2
    assert "MALLOC_TRIM_THRESHOLD_" not in os.environ


def test_address_profile_joins_a_running_scheduler_and_gpu_tasks_land_on_the_gpu_worker(tmp_path, monkeypatch):
    """A real `dask scheduler`, a plain `dask worker` and one started with --resources GPU=1 and
    xaiflow's worker environment (as the Dockerfile, job scripts and pods do)."""
    sched_file = tmp_path / "scheduler.json"
    cli = [sys.executable, "-m"]
    base = worker_base_env()
    procs = [subprocess.Popen(cli + ["distributed.cli.dask_scheduler", "--host", "127.0.0.1", "--port", "0",
                                     "--no-dashboard", "--scheduler-file", str(sched_file)],
                              env=base, start_new_session=True, stderr=subprocess.DEVNULL)]
    try:
        deadline = time.monotonic() + 60
        while not sched_file.is_file() and time.monotonic() < deadline:
            time.sleep(0.2)
        worker = cli + ["distributed.cli.dask_worker", "--scheduler-file", str(sched_file), "--nthreads", "1",
                        "--no-dashboard"]
        procs.append(subprocess.Popen(worker, env=base, start_new_session=True, stderr=subprocess.DEVNULL))
        procs.append(subprocess.Popen(worker + ["--resources", "GPU=1"], env={**base, **worker_env(1)},
                                      start_new_session=True, stderr=subprocess.DEVNULL))
        address = yaml.safe_load(sched_file.read_text())["address"]
        monkeypatch.setenv("XAIFLOW_SCHEDULER", address)
        cfg = load_cluster_profile("address")
        assert cfg.kind == "address" and cfg.address == address  # ${XAIFLOW_SCHEDULER:-...} expanded
        with dask_client("address") as client:
            client.wait_for_workers(2, timeout=60)
            gpu = map_tasks(worker_facts, list(range(6)), client=client, resources={"GPU": 1})
            every = client.run(worker_facts)
    finally:
        for p in reversed(procs):
            stop(p)
    gpu_workers = {a for a, f in every.items() if f["resources"].get("GPU")}
    assert len(every) == 2 and len(gpu_workers) == 1
    assert {f["worker"] for f in gpu} == gpu_workers
    # worker_env() removes the nanny's MALLOC_TRIM_THRESHOLD_; a plain `dask worker` has it
    trim = {f["resources"].get("GPU", 0): f["MALLOC_TRIM_THRESHOLD_"] for f in every.values()}
    assert trim == {1: None, 0: "65536"}


def test_slurm_job_script_starts_a_gpu_worker_with_the_env_fix(tmp_path, monkeypatch):
    """The real SLURMCluster job script (built without sbatch) has the GPU request, the worker
    resource, the threads and the env fix; run by bash instead of sbatch it starts a worker
    that joins the cluster's scheduler with exactly that setup."""
    from distributed import Client

    from xaiflow.runtime import start_cluster

    monkeypatch.chdir(tmp_path)  # SLURMCluster creates its log directory here
    monkeypatch.setenv("XAIFLOW_SLURM_ACCOUNT", "proj42")
    monkeypatch.setenv("XAIFLOW_SLURM_PROLOGUE", "echo prologue")
    monkeypatch.setenv("TMPDIR", str(tmp_path))
    # start_cluster refuses a SLURM profile where sbatch is missing; this test never submits a job
    (tmp_path / "bin").mkdir()
    (tmp_path / "bin" / "sbatch").write_text("#!/bin/sh\necho 'Submitted batch job 1'\n")
    (tmp_path / "bin" / "sbatch").chmod(0o755)
    monkeypatch.setenv("PATH", f"{tmp_path / 'bin'}:{os.environ['PATH']}")
    cfg = load_cluster_profile("slurm")
    spec = cluster_spec(cfg)
    assert spec.cluster_class == "dask_jobqueue.SLURMCluster"
    assert spec.adapt == {"minimum_jobs": 0, "maximum_jobs": 8}
    t = cfg.threads_per_worker
    with start_cluster(spec.model_copy(update={"adapt": None})) as cluster:
        script = cluster.job_script()
        for line in ["#SBATCH --gres=gpu:1", "#SBATCH -A proj42", "#SBATCH -p gpu", f"#SBATCH --cpus-per-task={t}",
                     "#SBATCH --mem=32G", "#SBATCH -t 04:00:00", "unset MALLOC_TRIM_THRESHOLD_",
                     f"export OMP_NUM_THREADS={t}", f"export {NANNY_ENV_VAR}="]:
            assert line in script, line
        command = script.strip().splitlines()[-1]
        assert f"--nthreads {t}" in command and "--resources GPU=1" in command and "--nanny" in command
        assert script.index("echo prologue") < script.index("unset MALLOC_TRIM_THRESHOLD_")
        job = subprocess.Popen(["bash", "-c", script], env={**worker_base_env(), "MALLOC_TRIM_THRESHOLD_": "65536"},
                               start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            with Client(cluster) as client:
                client.wait_for_workers(1, timeout=90)
                facts = map_tasks(worker_facts, [0, 1], client=client, resources={"GPU": 1})
        finally:
            stop(job)
    for f in facts:
        assert f["resources"] == {"GPU": 1} and f["nthreads"] == t
        assert f["MALLOC_TRIM_THRESHOLD_"] is None and f["OMP_NUM_THREADS"] == str(t)


def test_kubernetes_manifest_declares_gpu_workers_with_the_env_fix():
    cfg = load_cluster_profile("kubernetes")
    assert cfg.kubernetes.manifest == MANIFEST
    manifest = yaml.safe_load(MANIFEST.read_text())
    worker = manifest["spec"]["worker"]["spec"]["containers"][0]
    assert worker["resources"]["limits"]["nvidia.com/gpu"] == "1"  # the CRD types quantities as strings
    args = worker["args"]
    assert args[:2] == ["dask", "worker"] and args[args.index("--resources") + 1] == "GPU=1"
    assert args[args.index("--nthreads") + 1] == str(cfg.threads_per_worker)
    env = {e["name"]: e["value"] for e in worker["env"]}
    assert env["OMP_NUM_THREADS"] == str(cfg.threads_per_worker)
    from xaiflow.clusters import _literal

    assert _literal(env[NANNY_ENV_VAR]) == nanny_environ(cfg.threads_per_worker)
    assert manifest["spec"]["scheduler"]["service"]["ports"][0]["port"] == 8786
    if importlib.util.find_spec("dask_kubernetes") is None:
        with pytest.raises(ClusterProfileError, match=r"needs dask-kubernetes: pip install 'xaiflow\[k8s\]'"):
            cluster_spec(cfg)
    else:
        spec = cluster_spec(cfg)
        assert spec.kwargs["custom_cluster_spec"]["spec"]["worker"]["replicas"] == cfg.n_workers
        assert spec.adapt == {"minimum": cfg.n_workers, "maximum": cfg.kubernetes.maximum_workers}


@pytest.mark.parametrize("edit, field, problem", [
    (lambda m: m["spec"]["worker"]["spec"]["containers"][0]["args"].__setitem__(5, "8"),
     "spec.worker.spec.containers[0].args", "--nthreads is 8, the profile's threads_per_worker is 4"),
    (lambda m: m["spec"]["worker"]["spec"]["containers"][0]["args"].__setitem__(9, "GPU=2"),
     "spec.worker.spec.containers[0].args", "nvidia.com/gpu: 1 but declares --resources GPU=2"),
    (lambda m: m["spec"]["worker"]["spec"]["containers"][0]["env"].pop(),
     f"spec.worker.spec.containers[0].env.{NANNY_ENV_VAR}", "got None"),
    (lambda m: m.__setitem__("kind", "DaskJob"), "apiVersion/kind", "got kubernetes.dask.org/v1 DaskJob"),
    (lambda m: m["spec"]["worker"].__setitem__("replicas", "two"), "spec.worker.replicas", "got 'two'"),
])
def test_bad_kubernetes_manifest_names_file_and_field(tmp_path, edit, field, problem):
    manifest = yaml.safe_load(MANIFEST.read_text())
    edit(manifest)
    bad = tmp_path / "bad-cluster.yaml"
    bad.write_text(yaml.safe_dump(manifest))
    profile = tmp_path / "k8s.yaml"
    profile.write_text(f"kind: kubernetes\nthreads_per_worker: 4\nkubernetes:\n  manifest: {bad.name}\n")
    with pytest.raises(ClusterProfileError) as err:
        load_cluster_profile(str(profile))
    assert str(err.value).startswith(f"{profile}: kubernetes.manifest: {bad}: {field}: ")
    assert problem in str(err.value)


def test_manifest_check_accepts_the_shipped_manifest_for_its_threads_only():
    manifest = yaml.safe_load(MANIFEST.read_text())
    check_daskcluster(copy.deepcopy(manifest), 4)
    with pytest.raises(ClusterProfileError, match="--nthreads is 4, the profile's threads_per_worker is 2"):
        check_daskcluster(manifest, 2)


def test_gpu_local_profile_errors_clearly_without_dask_cuda_or_cuda():
    import torch

    cfg = load_cluster_profile("gpu-local")
    if importlib.util.find_spec("dask_cuda") is None:
        with pytest.raises(ClusterProfileError, match=r"'gpu-local' needs dask-cuda: pip install 'xaiflow\[gpu\]'"):
            with dask_client(cfg):
                pass
    if not torch.cuda.is_available():
        with pytest.raises(ClusterProfileError, match=r"'gpu-local' needs a CUDA GPU, but torch .* sees none"):
            require_cuda()
    else:
        assert require_cuda() == torch.cuda.device_count()


@pytest.mark.parametrize("text, field", [
    ("kind: slurm\nmemory_limit: 8GiB\nslurm:\n  walltim: '01:00:00'\n",
     "slurm.walltim: unknown key"),
    ("kind: slurm\nmemory_limit: 8GiB\nslurm:\n  walltime: one hour\n", "slurm.walltime: String should match"),
    ("kind: slurm\nslurm:\n  queue: gpu\n", "kind slurm needs memory_limit"),
    ("kind: slurm\nmemory_limit: 8GiB\nslurm:\n  minimum_jobs: 4\n  maximum_jobs: 2\n",
     "maximum_jobs (2) < minimum_jobs (4)"),
    ("kind: address\n", "kind address needs 'address'"),
    ("kind: local\naddress: tcp://x:1\n", "'address' only applies to kind address"),
    ("kind: local\nslurm: {}\n", "section 'slurm' only applies to kind slurm"),
    ("kind: yarn\n", "kind: Input should be"),
    ("kind: local\nthreads_per_worker: 0\n", "threads_per_worker: Input should be greater than or equal to 1"),
    ("kind: address\naddress: ${XAIFLOW_NO_SUCH_VAR}\n", "environment variable XAIFLOW_NO_SUCH_VAR is not set"),
    ("- kind: local\n", "expected a mapping"),
    ("kind: [local\n", "not valid YAML"),
])
def test_bad_profile_file_names_file_and_field(tmp_path, text, field):
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    with pytest.raises(ClusterProfileError) as err:
        load_cluster_profile(str(path))
    assert str(path) in str(err.value) and field in str(err.value), str(err.value)


def test_missing_profile_file_and_address_spec():
    with pytest.raises(ClusterProfileError, match="cluster profile file nowhere/x.yaml does not exist"):
        load_cluster_profile("nowhere/x.yaml")
    assert load_cluster_profile("tcp://10.0.0.5:8786").address == "tcp://10.0.0.5:8786"


def test_prefect_task_runner_gets_each_profiles_cluster(monkeypatch, tmp_path):
    from xaiflow_flows.runners import dask_task_runner

    monkeypatch.setenv("XAIFLOW_SCHEDULER", "tcp://10.0.0.5:8786")
    assert dask_task_runner("address").address == "tcp://10.0.0.5:8786"
    local = dask_task_runner("local")
    assert local.cluster_class == "distributed.LocalCluster" and local.cluster_kwargs["processes"] is True
    with pytest.raises(ClusterProfileError, match="sbatch"):  # no batch system here: refused up front
        dask_task_runner("slurm")
    (tmp_path / "sbatch").write_text("#!/bin/sh\n")
    (tmp_path / "sbatch").chmod(0o755)
    monkeypatch.setenv("PATH", f"{tmp_path}:{os.environ['PATH']}")
    slurm = dask_task_runner("slurm")
    assert slurm.cluster_class == "dask_jobqueue.SLURMCluster"
    assert slurm.cluster_kwargs["worker_extra_args"] == ["--resources", "GPU=1"]
    assert slurm.adapt_kwargs == {"minimum_jobs": 0, "maximum_jobs": 8}
    if importlib.util.find_spec("dask_kubernetes") is None:
        with pytest.raises(ClusterProfileError, match="needs dask-kubernetes"):
            dask_task_runner("kubernetes")


def test_docker_image_dask_config_unsets_malloc_trim():
    """deploy/dask.yaml is the image's /etc/dask config: every `dask worker` in it runs without
    the nanny's MALLOC_TRIM_THRESHOLD_ even when started without xaiflow's worker_env()."""
    repo = PACKAGE_CLUSTER_DIR.parents[2]
    dockerfile = (repo / "Dockerfile").read_text()
    assert "COPY deploy/dask.yaml /etc/dask/" in dockerfile and "-c constraints.txt" in dockerfile
    out = subprocess.run(
        [sys.executable, "-c", "import dask, distributed; "
         "print(dask.config.get('distributed.nanny.pre-spawn-environ.MALLOC_TRIM_THRESHOLD_'))"],
        env={**os.environ, "DASK_CONFIG": str(repo / "deploy" / "dask.yaml")}, capture_output=True, text=True,
        check=True)
    assert out.stdout.strip() == "None"
