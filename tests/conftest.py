"""Shared fixtures: data paths, a real Dask cluster (worker processes), tiny datasets and models on disk."""

from __future__ import annotations

import os

# `make test` runs two test processes (pytest-xdist) on the 2 cores: each of them, and every program
# it starts, uses one OpenMP thread (torch with 2 threads collapses ~10x when another process holds a
# core). Set before numpy and torch are imported.
if os.environ.get("PYTEST_XDIST_WORKER"):
    os.environ["OMP_NUM_THREADS"] = "1"

from pathlib import Path

import numpy as np
import pytest
import yaml
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
UHCS_DIR = Path(os.environ.get("XAIFLOW_UHCS_DIR", REPO.parent / "shared" / "data" / "uhcs")).resolve()

os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
# mirrors of checkpoints of workspaces on object storage: per test session, not in the user's home
# (set before any Dask worker starts, so the workers inherit it)
if "XAIFLOW_CACHE_DIR" not in os.environ:
    import tempfile

    os.environ["XAIFLOW_CACHE_DIR"] = tempfile.mkdtemp(prefix="xaiflow-cache-")

#: session fixtures of real services (Prefect server, Dask scheduler and workers, served deployments)
pytest_plugins = ["services"]

# plugin modules named in $XAIFLOW_PLUGINS register before the contract tests loop over the registries
from xaiflow.plugins import load_plugins

load_plugins()


@pytest.fixture(scope="session")
def uhcs_dir() -> Path:
    """The real UHCS data. Absent data skips with the reason, except in CI where it fails."""
    if not (UHCS_DIR / "metadata.csv").is_file():
        msg = f"UHCS data not found at {UHCS_DIR}; set XAIFLOW_UHCS_DIR to the folder holding metadata.csv"
        if os.environ.get("CI"):
            pytest.fail(msg)
        pytest.skip(msg)
    return UHCS_DIR


@pytest.fixture(scope="module")
def one_torch_thread():
    """Torch on one thread for a module (``pytest.mark.usefixtures("one_torch_thread")``), restored
    afterwards: small models gain nothing from threads, and the session's two Dask worker
    processes already use both cores."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="session")
def contract_model():
    """``build(arch)``: a seeded model of each registered architecture in its quick configuration
    (``quick_hparams``), in eval mode, built once per session. The torchvision backbone skips with
    the reason where torchvision is not installed (its errors are tested in tests/models)."""
    import importlib.util

    import torch

    from xaiflow.models import MODELS, build_model

    built: dict[str, object] = {}

    def build(arch: str):
        if arch == "backbone" and importlib.util.find_spec("torchvision") is None:
            pytest.skip("torchvision is not installed here: the backbone's error is tested in "
                        "tests/models/test_models.py::test_backbone_without_torchvision")
        if arch not in built:
            torch.manual_seed(0)
            built[arch] = build_model(arch, 3, **MODELS.get(arch).quick_hparams).eval()
        return built[arch]

    return build


@pytest.fixture(scope="session")
def prefect_harness():
    """Prefect's test server, one per session (~15 s to start) for every test running flows in this
    process: Prefect caches its events client per process, so task runs reported after a second
    harness started would go to the first one's (gone) server."""
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=120):
        yield


@pytest.fixture(scope="session")
def client():
    """A real LocalCluster: 2 worker processes, 1 thread each (as on this 2-core machine)."""
    from xaiflow.runtime import ClusterConfig, dask_client

    with dask_client(ClusterConfig(kind="local", n_workers=2, threads_per_worker=1, dashboard_address="127.0.0.1:0")) as c:
        yield c


def write_folder_dataset(root: Path, n_specimens: int = 4, per_specimen: int = 3, size=(48, 64),
                         classes=("a", "b"), seed: int = 0) -> Path:
    """A folder of PNG micrographs plus labels.csv (file,label,specimen,um_per_px,detector)."""
    rng = np.random.default_rng(seed)
    (root / "img").mkdir(parents=True, exist_ok=True)
    rows = ["file,label,specimen,um_per_px,detector"]
    for s in range(n_specimens):
        label = classes[s % len(classes)]
        for i in range(per_specimen):
            name = f"img/s{s}_{i}.png"
            arr = rng.integers(0, 256, size, dtype=np.uint8)
            Image.fromarray(arr).save(root / name)
            rows.append(f"{name},{label},spec{s},{0.1 * (1 + s % 2)},{'SE' if i % 2 else 'BSE'}")
    (root / "labels.csv").write_text("\n".join(rows) + "\n")
    return root


@pytest.fixture
def folder_dataset(tmp_path: Path) -> Path:
    return write_folder_dataset(tmp_path / "data")


def folder_config(root: Path, name: str = "tiny", **overrides) -> dict:
    """A dataset config mapping for :func:`write_folder_dataset` data."""
    cfg = {
        "name": name,
        "source": {"kind": "folder", "root": str(root), "csv": "labels.csv",
                   "columns": {"file": "file", "label": "label", "group": "specimen",
                               "um_per_px": "um_per_px", "metadata": ["detector"]}},
        "geometry": {"size": [32, 32]},
        "chunk_size": 4,
    }
    for key, value in overrides.items():
        if isinstance(value, dict) and isinstance(cfg.get(key), dict):
            cfg[key] = {**cfg[key], **value}
        else:
            cfg[key] = value
    return cfg


#: the synthetic source's classes most tests use (its default has a fourth)
SYN_CLASSES = ("particles", "lamellae", "network")


def synthetic_dataset(name: str = "syn", *, size: int = 32, chunk_size: int = 6, specimens_per_class: int = 3,
                      images_per_specimen: int = 3, classes: tuple[str, ...] | None = SYN_CLASSES,
                      split: dict | None = None, **source) -> dict:
    """A dataset config mapping of the synthetic source (square images with structure masks);
    ``source`` adds source keys (``shortcut``, ``condition``, ...), ``classes=None`` keeps its default."""
    src = {"kind": "synthetic", "specimens_per_class": specimens_per_class,
           "images_per_specimen": images_per_specimen, "size": [size, size], **source}
    if classes is not None:
        src["classes"] = list(classes)
    cfg = {"name": name, "source": src, "geometry": {"size": [size, size]}, "chunk_size": chunk_size}
    if split is not None:
        cfg["split"] = split
    return cfg


def write_tiny_run_config(tmp_path: Path, **sections) -> Path:
    """A run config with a 24-image synthetic dataset (32 px), a 2-epoch training section, and ``sections``."""
    config = tmp_path / "run.yaml"
    config.write_text(yaml.safe_dump({
        "datasets": [synthetic_dataset(images_per_specimen=2, chunk_size=8, classes=None)],
        "train": {"dataset": "syn", "epochs": 2, "model_params": {"widths": [8, 8]}, "device": "cpu"},
        **sections}))
    return config


def ingest_synthetic(workspace: Path, client, **dataset) -> Path:
    """Ingest :func:`synthetic_dataset` (same keywords) into ``workspace`` on the Dask ``client``."""
    from xaiflow.config import parse_config
    from xaiflow.ingest import ingest_dataset

    ingest_dataset(parse_config({"datasets": [synthetic_dataset(**dataset)]}).datasets[0], workspace, client=client)
    return workspace


@pytest.fixture(scope="session")
def learned(tmp_path_factory, client):
    """A workspace of 108 synthetic images at 48 px (three classes defined by their structures, with
    masks; a third in the test split) and a small CNN that learned them (40 epochs, test balanced
    accuracy ~0.8, a few seconds): shared by the tests of what a model learned (adversarial
    inspection, concepts, structure importance). Returns (workspace, model id)."""
    ws = tmp_path_factory.mktemp("learned") / "ws.zarr"
    ingest_synthetic(ws, client, specimens_per_class=6, images_per_specimen=6, size=48, chunk_size=16,
                     split={"fractions": {"train": 0.5, "val": 0.17, "test": 0.33}})
    model = train_tiny(ws, epochs=40, patience=100, batch_size=8, lr=3e-3, model_params={"widths": [8, 16, 16]},
                       augment={"crop": 40})
    return ws, model


def train_tiny(workspace: Path, dataset: str = "syn", **train) -> str:
    """Train a small CNN on the CPU with one thread (1 epoch, widths 8/16 unless ``train`` says
    otherwise, any ``TrainConfig`` field); returns its model id."""
    from xaiflow.config import TrainConfig
    from xaiflow.training import train_model

    base = {"dataset": dataset, "epochs": 1, "model_params": {"widths": [8, 16]}, "device": "cpu", "threads": 1}
    return train_model(workspace, TrainConfig(**{**base, **train}))["model_id"]


#: Debian's chromium + chromedriver (``.ci/run`` installs them), with the flags that work in this
#: container (no sandbox, no GPU, no background traffic)
CHROMIUM, CHROMEDRIVER = "/usr/bin/chromium", "/usr/bin/chromedriver"
CHROMIUM_FLAGS = ["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                  "--disable-component-update", "--disable-sync", "--no-first-run", "--disable-quic",
                  "--window-size=1400,1000"]


@pytest.fixture(scope="module")
def browser(tmp_path_factory):
    """A headless Chromium (selenium) for the tests of a page, one per module, its console log kept for
    failure messages. In CI a missing browser fails, elsewhere it skips with the reason."""
    missing = [p for p in (CHROMIUM, CHROMEDRIVER) if not os.access(p, os.X_OK)]
    if missing:
        msg = f"{', '.join(missing)} not installed (apt-get install chromium chromium-driver; .ci/run does)"
        if os.environ.get("CI"):
            pytest.fail(msg)
        pytest.skip(msg)
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    tmp = tmp_path_factory.mktemp("chromium")
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    for flag in CHROMIUM_FLAGS + [f"--user-data-dir={tmp / 'profile'}"]:
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER, log_output=str(tmp / "chromedriver.log")),
                              options=options)
    try:
        yield driver
    finally:
        driver.quit()
