"""Cluster profiles: which Dask cluster a run uses, from a name, an address or a YAML file.

A profile (``configs/cluster/<name>.yaml``) says what kind of cluster to start or join:

* ``threads``: in-process threads (tests, tiny jobs);
* ``local``: a ``distributed.LocalCluster`` of worker processes sized to the machine;
* ``address``: an existing scheduler (``dask scheduler`` + ``dask worker`` started by hand,
  by a batch system or by Kubernetes);
* ``slurm``: a ``dask_jobqueue.SLURMCluster``, one worker per batch job, one GPU per job;
* ``kubernetes``: a ``dask_kubernetes`` operator ``KubeCluster`` from a ``DaskCluster``
  manifest (``configs/k8s/``);
* ``gpu-local``: a ``dask_cuda.LocalCUDACluster``, one worker per GPU of this machine.

:func:`cluster_spec` turns a profile into the cluster class and its keyword arguments, so the
CLI's :func:`xaiflow.runtime.dask_client` and the Prefect task runner (``xaiflow_flows/runners.py``)
start the same cluster. Workers with a GPU declare the Dask resource ``GPU=1``; tasks
annotated with ``resources={"GPU": 1}`` run only there.

Every worker process gets the memory fix of :func:`nanny_environ`: Dask's nanny sets
``MALLOC_TRIM_THRESHOLD_=65536`` in workers, which made torch on CPU ~1.9x slower here, so it
is unset; and the BLAS/OpenMP thread counts equal the worker's threads. Local clusters get it
from :func:`xaiflow.runtime.configure_dask`, remote workers (batch jobs, pods, containers)
from the environment of :func:`worker_env`.
"""

from __future__ import annotations

import ast
import importlib.util
import os
import shlex
import shutil
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from xaiflow.errors import XaiflowError

KINDS = ("threads", "local", "address", "slurm", "kubernetes", "gpu-local")
#: where clusters started on this machine listen
LOOPBACK = "127.0.0.1"
#: where ``--cluster NAME`` looks for ``NAME.yaml`` after the folders in $XAIFLOW_CLUSTER_DIR
PACKAGE_CLUSTER_DIR = Path(__file__).resolve().parent / "configs" / "cluster"
#: optional dependency of each kind: (module, pip distribution, xaiflow extra)
EXTRAS = {
    "slurm": ("dask_jobqueue", "dask-jobqueue", "slurm"),
    "kubernetes": ("dask_kubernetes", "dask-kubernetes", "k8s"),
    "gpu-local": ("dask_cuda", "dask-cuda", "gpu"),
}
THREAD_VARS = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS")
#: the environment variable through which remote nannies get :func:`nanny_environ`
NANNY_ENV_VAR = "DASK_DISTRIBUTED__NANNY__PRE_SPAWN_ENVIRON"
#: the nanny of ``local`` worker processes: time to exit when the cluster closes (a quiet shutdown)
PATIENT_NANNY = "xaiflow.nanny.PatientNanny"


class ClusterProfileError(XaiflowError):
    """A cluster profile cannot be read, does not validate or cannot start here."""


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid")


class SlurmSection(_Section):
    """SLURM batch jobs (dask-jobqueue): one Dask worker per job, ``gpus_per_job`` GPUs each."""

    queue: str | None = Field(None, description="partition (#SBATCH -p)")
    account: str | None = Field(None, description="account to charge (#SBATCH -A)")
    walltime: str = Field("01:00:00", pattern=r"^(\d+-)?\d{1,2}:\d{2}(:\d{2})?$", description="per job, HH:MM:SS")
    gpus_per_job: int = Field(1, ge=0, description="GPUs per job (--gres=gpu:N) = the worker's GPU resource")
    minimum_jobs: int = Field(0, ge=0, description="adaptive scaling: fewest jobs kept")
    maximum_jobs: int | None = Field(None, ge=1, description="adaptive scaling: most jobs; None: fixed n_workers jobs")
    job_extra_directives: list[str] = Field(default_factory=list, description="more #SBATCH options")
    job_script_prologue: list[str] = Field(
        default_factory=list, description="shell lines run before the worker (module load, activate the venv)")
    python: str | None = Field(None, description="python on the compute nodes (default: this one)")
    interface: str | None = Field(None, description="network interface of scheduler and workers, e.g. ib0")
    local_directory: str | None = Field(None, description="worker scratch space on the node, e.g. $TMPDIR")
    log_directory: str | None = Field(None, description="where SLURM writes the job logs")
    shared_temp_directory: str | None = Field(None, description="a folder every node sees, for the files of "
                                                                "tls.temporary (dask-jobqueue)")

    @field_validator("queue", "account", "python", "interface", "local_directory", "log_directory")
    @classmethod
    def _empty_is_unset(cls, v: str | None) -> str | None:
        return v or None  # `${VAR:-}` in a profile expands to "": leave the option out

    @model_validator(mode="after")
    def _adapt_range(self) -> "SlurmSection":
        if self.maximum_jobs is not None and self.maximum_jobs < self.minimum_jobs:
            raise ValueError(f"maximum_jobs ({self.maximum_jobs}) < minimum_jobs ({self.minimum_jobs})")
        return self


class KubernetesSection(_Section):
    """A Dask operator ``DaskCluster`` manifest; the profile's ``n_workers`` sets its replicas."""

    manifest: Path = Field(description="DaskCluster YAML; relative paths from the profile file's folder")
    namespace: str | None = Field(None, description="Kubernetes namespace (default: the current context's)")
    maximum_workers: int | None = Field(None, ge=1, description="adaptive scaling up to this many workers")


class TLSSection(_Section):
    """Mutual TLS between the client, the scheduler and the workers (``distributed.security.Security``):
    a scheduler reachable from a network then accepts only peers holding a certificate of this CA."""

    ca_file: Path | None = Field(None, description="CA certificate every peer's certificate is checked against")
    cert: Path | None = Field(None, description="this client's certificate (PEM)")
    key: Path | None = Field(None, description="its private key (PEM; may sit in the cert file)")
    temporary: bool = Field(False, description="slurm: a self-signed certificate made for this run and handed to "
                                               "the jobs through slurm.shared_temp_directory (dask-jobqueue)")

    @model_validator(mode="after")
    def _files_or_temporary(self) -> "TLSSection":
        if self.temporary == bool(self.ca_file or self.cert):
            raise ValueError("give either ca_file and cert (and key) or temporary: true")
        if not self.temporary and not (self.ca_file and self.cert):
            raise ValueError("TLS needs ca_file and cert (and key, unless it is in the cert file)")
        return self

    def security(self) -> Any:
        """The ``distributed.security.Security`` of this section (files checked to exist)."""
        from distributed.security import Security

        if self.temporary:
            return Security.temporary()
        for name in ("ca_file", "cert", "key"):
            path = getattr(self, name)
            if path is not None and not Path(path).is_file():
                raise ClusterProfileError(f"tls.{name}: {path} does not exist")
        return Security(tls_ca_file=str(self.ca_file), tls_client_cert=str(self.cert),
                        tls_client_key=str(self.key) if self.key else None, require_encryption=True)


class ClusterConfig(_Section):
    """A cluster profile; ``kind`` picks the cluster, kind-specific settings sit in their section."""

    kind: Literal["threads", "local", "address", "slurm", "kubernetes", "gpu-local"] = "local"
    n_workers: int | None = Field(
        None, ge=1, description="workers (local: cores // threads_per_worker; gpu-local: one per GPU; "
        "slurm: jobs started when not adaptive; kubernetes: replicas)")
    threads_per_worker: int = Field(1, ge=1, description="threads per worker; torch/OpenMP threads follow it")
    memory_limit: str = Field("auto", description="per worker, e.g. '4GiB' (slurm: the job's memory)")
    address: str | None = Field(None, description="scheduler address for kind=address, e.g. tcp://10.0.0.5:8786")
    dashboard_address: str | None = Field("127.0.0.1:0", description="bind the dashboard to loopback by default")
    cuda_visible_devices: str | None = Field(None, description="gpu-local: GPUs to use, e.g. '0,1' (default all)")
    slurm: SlurmSection | None = None
    kubernetes: KubernetesSection | None = None
    tls: TLSSection | None = Field(None, description="address, slurm: mutual TLS with the scheduler (tls:// "
                                                     "addresses); without it, anyone who reaches the scheduler's "
                                                     "port can run code on the workers")

    @model_validator(mode="after")
    def _fields_match_kind(self) -> "ClusterConfig":
        if self.kind == "address" and not self.address:
            raise ValueError("kind address needs 'address', e.g. tcp://10.0.0.5:8786")
        if self.address is not None and self.kind != "address":
            raise ValueError(f"'address' only applies to kind address, not {self.kind}")
        if self.cuda_visible_devices is not None and self.kind != "gpu-local":
            raise ValueError(f"'cuda_visible_devices' only applies to kind gpu-local, not {self.kind}")
        for section in ("slurm", "kubernetes"):
            if getattr(self, section) is not None and self.kind != section:
                raise ValueError(f"section '{section}' only applies to kind {section}, not {self.kind}")
        if self.kind == "slurm":
            if self.slurm is None:
                self.slurm = SlurmSection()
            if self.memory_limit == "auto":
                raise ValueError("kind slurm needs memory_limit (the job's memory), e.g. 32GiB")
        if self.kind == "kubernetes" and self.kubernetes is None:
            raise ValueError("kind kubernetes needs a 'kubernetes' section with the DaskCluster 'manifest'")
        if self.tls is not None and self.kind not in ("address", "slurm"):
            raise ValueError(f"'tls' applies to kinds address and slurm, not {self.kind} (local clusters stay on "
                             "loopback)")
        if self.tls is not None and self.tls.temporary and self.kind != "slurm":
            raise ValueError("tls.temporary applies to kind slurm; a running scheduler has its own certificates")
        if self.kind == "address" and self.address and (self.tls is not None) != self.address.startswith("tls://"):
            raise ValueError("a tls:// address needs the 'tls' section, and the 'tls' section a tls:// address")
        return self


BUILTIN_PROFILES = {
    "threads": ClusterConfig(kind="threads"),
    "local": ClusterConfig(kind="local"),
}


def cluster_dirs() -> list[Path]:
    """Folders searched for ``NAME.yaml``: ``$XAIFLOW_CLUSTER_DIR`` (``os.pathsep``-separated), then the installed package's (``xaiflow/configs/cluster``)."""
    extra = [Path(p) for p in os.environ.get("XAIFLOW_CLUSTER_DIR", "").split(os.pathsep) if p]
    return extra + [PACKAGE_CLUSTER_DIR]


def profile_names() -> list[str]:
    """Every profile name ``--cluster`` accepts."""
    names = set(BUILTIN_PROFILES)
    for d in cluster_dirs():
        if d.is_dir():
            names.update(p.stem for p in d.glob("*.yaml"))
    return sorted(names)


def load_cluster_profile(spec: str | os.PathLike[str] | None) -> ClusterConfig:
    """A profile from a YAML path, a name (``NAME.yaml`` in :func:`cluster_dirs`, else a built-in
    ``threads``/``local``) or a scheduler address (``tcp://host:8786``). None means ``local``."""
    if spec is None:
        spec = "local"
    spec = str(spec)
    if "://" in spec:
        return ClusterConfig(kind="address", address=spec)
    path = Path(spec)
    if path.suffix in (".yaml", ".yml") or os.sep in spec:
        if not path.is_file():
            raise ClusterProfileError(f"cluster profile file {spec} does not exist")
        return read_profile(path)
    for d in cluster_dirs():
        if (d / f"{spec}.yaml").is_file():
            return read_profile(d / f"{spec}.yaml")
    if spec in BUILTIN_PROFILES:
        return BUILTIN_PROFILES[spec]
    raise ClusterProfileError(
        f"unknown cluster profile {spec!r}: use one of {profile_names()} (from {', '.join(map(str, cluster_dirs()))}), "
        "a scheduler address like tcp://host:8786, or a YAML file")


def read_profile(path: Path) -> ClusterConfig:
    """Validate a profile file; ``${VAR:-default}`` is expanded as in run configs, and the
    Kubernetes manifest path is resolved against the file's folder and checked."""
    from xaiflow.config import ConfigError, _expand_env, format_validation_error

    try:
        data = yaml.safe_load(path.read_text())
    except OSError as e:
        raise ClusterProfileError(f"cannot read cluster profile {path}: {e.strerror}") from None
    except UnicodeDecodeError:
        raise ClusterProfileError(f"{path}: not a text file (a YAML cluster profile is expected)") from None
    except yaml.YAMLError as e:
        raise ClusterProfileError(f"{path}: not valid YAML: {e}") from None
    if not isinstance(data, dict):
        raise ClusterProfileError(f"{path}: expected a mapping of profile settings, got {type(data).__name__}")
    try:
        cfg = ClusterConfig.model_validate(_expand_env(data, str(path)))
    except ConfigError as e:
        raise ClusterProfileError(str(e)) from None
    except ValidationError as e:
        raise ClusterProfileError(format_validation_error(e, str(path)).replace("invalid config", "invalid cluster profile")) from None
    if cfg.kubernetes is not None and not cfg.kubernetes.manifest.is_absolute():
        cfg.kubernetes.manifest = (path.parent / cfg.kubernetes.manifest).resolve()
    if cfg.kubernetes is not None:
        try:
            kubernetes_spec(cfg)
        except ClusterProfileError as e:
            raise ClusterProfileError(f"{path}: kubernetes.manifest: {e}") from None
    return cfg


# -- worker environment -------------------------------------------------------------------

def nanny_environ(threads: int) -> dict[str, Any]:
    """``distributed.nanny.pre-spawn-environ`` for xaiflow workers: no ``MALLOC_TRIM_THRESHOLD_``
    (None unsets Dask's default of 65536) and BLAS/OpenMP threads = the worker's threads."""
    return {"MALLOC_TRIM_THRESHOLD_": None, **{v: str(threads) for v in THREAD_VARS}}


def worker_env(threads: int) -> dict[str, str]:
    """Environment for remote ``dask worker`` processes (batch jobs, pods, containers): the
    thread variables, and :func:`nanny_environ` as Dask config in ``NANNY_ENV_VAR``: a Python
    dict literal (Dask parses it with ``ast.literal_eval``), because it keeps the variable
    names' case, which Dask's ``DASK_A__B`` keys would lower. Double quotes inside, so a
    shell can single-quote it."""
    literal = ", ".join(f'"{k}": ' + ("None" if v is None else f'"{v}"') for k, v in nanny_environ(threads).items())
    return {**{v: str(threads) for v in THREAD_VARS}, NANNY_ENV_VAR: "{" + literal + "}"}


# -- optional dependencies ----------------------------------------------------------------

def require_extra(kind: str) -> None:
    """Fail clearly when the optional package a profile kind needs is not installed."""
    if kind not in EXTRAS:
        return
    module, dist, extra = EXTRAS[kind]
    if importlib.util.find_spec(module) is None:
        raise ClusterProfileError(f"cluster profile kind {kind!r} needs {dist}: pip install 'xaiflow[{extra}]'")


def require_cuda() -> int:
    """The number of CUDA devices torch sees; an error when there are none."""
    import torch

    count = torch.cuda.device_count() if torch.cuda.is_available() else 0
    if count == 0:
        raise ClusterProfileError(
            f"cluster profile kind 'gpu-local' needs a CUDA GPU, but torch {torch.__version__} sees none "
            "(use kind local on a CPU machine)")
    return count


# -- cluster class and arguments ----------------------------------------------------------

class ClusterSpec(BaseModel):
    """How to start (or join) the cluster of a profile: ``cluster_class(**kwargs)`` then
    ``cluster.adapt(**adapt)`` when adaptive; or ``address`` of a running scheduler."""

    address: str | None = None
    cluster_class: str | None = None
    kwargs: dict[str, Any] = {}
    adapt: dict[str, int] | None = None
    n_workers: int = 0
    #: TLS of the client (and, for batch clusters, of the scheduler and workers it starts)
    tls: TLSSection | None = None


def local_workers(cfg: ClusterConfig) -> int:
    """Worker processes of a ``local`` profile: as set, else the cores this process may use
    (its affinity mask, as :func:`xaiflow.device.available_cpus`, without importing torch)
    divided by the threads per worker, so the machine is never oversubscribed."""
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return cfg.n_workers or max(1, cpus // cfg.threads_per_worker)


def cluster_spec(cfg: ClusterConfig) -> ClusterSpec:
    """The cluster class and arguments of a profile (checks optional packages and devices)."""
    t = cfg.threads_per_worker
    if cfg.kind == "address":
        return ClusterSpec(address=cfg.address, tls=cfg.tls)
    require_extra(cfg.kind)
    if cfg.kind in ("threads", "local"):
        processes = cfg.kind == "local"
        n = local_workers(cfg) if processes else (cfg.n_workers or 1)
        # everything on loopback: the scheduler, the dashboard, and each worker's own HTTP server (which
        # Dask binds to every interface unless told otherwise)
        kwargs: dict[str, Any] = {"n_workers": n, "threads_per_worker": t, "processes": processes,
                                  "dashboard_address": cfg.dashboard_address,
                                  "worker_dashboard_address": f"{LOOPBACK}:0"}
        if processes:  # in-process clusters talk over inproc://, which takes no host
            kwargs.update(host=LOOPBACK, memory_limit=cfg.memory_limit, env={v: str(t) for v in THREAD_VARS},
                          worker_class=PATIENT_NANNY)
        return ClusterSpec(cluster_class="distributed.LocalCluster", kwargs=kwargs, n_workers=n)
    if cfg.kind == "gpu-local":
        n_gpus = require_cuda()
        devices = cfg.cuda_visible_devices
        n = cfg.n_workers or (len(devices.split(",")) if devices else n_gpus)
        kwargs = {"n_workers": n, "threads_per_worker": t, "memory_limit": cfg.memory_limit,
                  "resources": {"GPU": 1}, "dashboard_address": cfg.dashboard_address}
        if devices:
            kwargs["CUDA_VISIBLE_DEVICES"] = devices
        return ClusterSpec(cluster_class="dask_cuda.LocalCUDACluster", kwargs=kwargs, n_workers=n)
    if cfg.kind == "slurm":
        return slurm_spec(cfg)
    return kubernetes_spec(cfg)


def check_startable(spec: ClusterSpec) -> None:
    """Refuse, before anything starts, a cluster whose batch system is not reachable from here: a
    SLURMCluster without ``sbatch`` on PATH would log an error and wait for workers forever."""
    if spec.cluster_class == "dask_jobqueue.SLURMCluster" and shutil.which("sbatch") is None:
        raise ClusterProfileError("cluster profile kind 'slurm' submits worker jobs with sbatch, which is not on "
                                  "PATH here: run from a SLURM login node, or use another profile")


def slurm_spec(cfg: ClusterConfig) -> ClusterSpec:
    """SLURMCluster arguments: one worker (``processes=1``) with ``threads_per_worker`` cores
    per job, ``--gres=gpu:N`` and the matching ``--resources GPU=N``, the worker environment
    exported in the job script after the user's own prologue lines."""
    s, t = cfg.slurm, cfg.threads_per_worker
    directives = ([f"--gres=gpu:{s.gpus_per_job}"] if s.gpus_per_job else []) + s.job_extra_directives
    prologue = list(s.job_script_prologue) + ["unset MALLOC_TRIM_THRESHOLD_"] + [
        f"export {k}={shlex.quote(v)}" for k, v in worker_env(t).items()]
    kwargs: dict[str, Any] = {
        "cores": t, "processes": 1, "memory": cfg.memory_limit, "walltime": s.walltime,
        "job_extra_directives": directives, "job_script_prologue": prologue,
        "worker_extra_args": ["--resources", f"GPU={s.gpus_per_job}"] if s.gpus_per_job else [],
        "scheduler_options": {"dashboard_address": cfg.dashboard_address or ":0"},
    }
    for key in ("queue", "account", "python", "interface", "local_directory", "log_directory",
                "shared_temp_directory"):
        if getattr(s, key) is not None:
            kwargs[key] = getattr(s, key)
    if s.maximum_jobs is not None:
        return ClusterSpec(cluster_class="dask_jobqueue.SLURMCluster", kwargs=kwargs, tls=cfg.tls,
                           adapt={"minimum_jobs": s.minimum_jobs, "maximum_jobs": s.maximum_jobs})
    n = cfg.n_workers or 1
    return ClusterSpec(cluster_class="dask_jobqueue.SLURMCluster", kwargs={**kwargs, "n_workers": n}, n_workers=n,
                       tls=cfg.tls)


def kubernetes_spec(cfg: ClusterConfig) -> ClusterSpec:
    """KubeCluster arguments from the profile's DaskCluster manifest (checked by
    :func:`check_daskcluster`), with ``n_workers`` as the worker replicas."""
    k = cfg.kubernetes
    try:
        manifest = yaml.safe_load(k.manifest.read_text())
    except OSError as e:
        raise ClusterProfileError(f"cannot read {k.manifest}: {e.strerror}") from None
    check_daskcluster(manifest, cfg.threads_per_worker, origin=str(k.manifest))
    if cfg.n_workers:
        manifest["spec"]["worker"]["replicas"] = cfg.n_workers
    kwargs: dict[str, Any] = {"custom_cluster_spec": manifest}
    if k.namespace:
        kwargs["namespace"] = k.namespace
    adapt = {"minimum": manifest["spec"]["worker"]["replicas"], "maximum": k.maximum_workers} if k.maximum_workers else None
    return ClusterSpec(cluster_class="dask_kubernetes.operator.KubeCluster", kwargs=kwargs, adapt=adapt,
                       n_workers=manifest["spec"]["worker"]["replicas"])


def _flag(args: list[str], name: str) -> str | None:
    return args[args.index(name) + 1] if name in args and args.index(name) + 1 < len(args) else None


def check_daskcluster(manifest: Any, threads: int, origin: str = "<manifest>") -> None:
    """Check a ``DaskCluster`` manifest against what xaiflow needs from its workers: the
    ``dask worker`` command with ``--nthreads`` = ``threads``, a ``GPU`` resource exactly when
    the container requests ``nvidia.com/gpu`` (and equal to it), and :func:`worker_env`."""
    def fail(where: str, problem: str) -> None:
        raise ClusterProfileError(f"{origin}: {where}: {problem}")

    if not isinstance(manifest, dict):
        fail("(top level)", "expected a DaskCluster mapping")
    if manifest.get("apiVersion") != "kubernetes.dask.org/v1" or manifest.get("kind") != "DaskCluster":
        fail("apiVersion/kind", f"expected kubernetes.dask.org/v1 DaskCluster, got "
             f"{manifest.get('apiVersion')} {manifest.get('kind')}")
    if not (manifest.get("metadata") or {}).get("name"):
        fail("metadata.name", "missing")
    spec = manifest.get("spec") or {}
    for part in ("scheduler", "worker"):
        containers = ((spec.get(part) or {}).get("spec") or {}).get("containers")
        if not containers or not isinstance(containers, list):
            fail(f"spec.{part}.spec.containers", "missing")
    if "service" not in spec["scheduler"]:
        fail("spec.scheduler.service", "missing (the operator exposes the scheduler through it)")
    worker = spec["worker"]
    if not isinstance(worker.get("replicas"), int) or worker["replicas"] < 0:
        fail("spec.worker.replicas", f"expected a count >= 0, got {worker.get('replicas')!r}")
    c = worker["spec"]["containers"][0]
    where = "spec.worker.spec.containers[0]"
    args = [str(a) for a in (c.get("command") or []) + (c.get("args") or [])]
    if args[:2] != ["dask", "worker"] and args[:1] != ["dask-worker"]:
        fail(f"{where}.args", f"expected the 'dask worker' command, got {args[:2]}")
    if _flag(args, "--nthreads") != str(threads):
        fail(f"{where}.args", f"--nthreads is {_flag(args, '--nthreads')}, the profile's threads_per_worker is {threads}")
    limits = (c.get("resources") or {}).get("limits") or {}
    gpus = int(limits.get("nvidia.com/gpu", 0))
    declared = _flag(args, "--resources")
    if gpus and declared != f"GPU={gpus}":
        fail(f"{where}.args", f"requests nvidia.com/gpu: {gpus} but declares --resources {declared} (need GPU={gpus})")
    if not gpus and declared and "GPU" in declared:
        fail(f"{where}.args", f"declares --resources {declared} without an nvidia.com/gpu limit")
    env = {e.get("name"): e.get("value") for e in c.get("env") or []}
    for name, value in worker_env(threads).items():
        got = env.get(name)
        same = got == value if name != NANNY_ENV_VAR else _literal(got) == nanny_environ(threads)
        if not same:
            fail(f"{where}.env.{name}", f"expected {value!r}, got {got!r}")


def _literal(text: str | None) -> Any:
    try:
        return ast.literal_eval(text) if text else None
    except (ValueError, SyntaxError):
        return None
