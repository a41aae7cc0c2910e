"""Runs that overlap, are interrupted or lose a process: nothing written is lost or corrupted, and the
store ends equal to an uninterrupted run's."""

from __future__ import annotations

import json
import re
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import yaml
import zarr

from conftest import synthetic_dataset
from reliability.conftest import assert_clean_error, cli, copy_workspace, write_config
from xaiflow import store
from xaiflow.locks import lock_path
from xaiflow.saliency import open_saliency

pytestmark = pytest.mark.slow


def popen(*args) -> subprocess.Popen:
    """``xaiflow ARGS`` in the background, in a process group of its own (signals reach all of it)."""
    return subprocess.Popen([sys.executable, "-m", "xaiflow.cli", *map(str, args)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, start_new_session=True)


def wait_for(condition, timeout: float, what: str, proc: subprocess.Popen | None = None) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        if proc is not None and proc.poll() is not None:
            raise AssertionError(f"the process ended before {what}: {proc.stderr.read()[-2000:]}")
        try:
            if condition():
                return
        except (KeyError, OSError, ValueError):  # the arrays appear a moment after their group
            pass
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what}")


def slow_config(path: Path, run: dict, n_steps: int = 512, **attribution) -> Path:
    """The trained workspace's config with Integrated Gradients slow enough to be caught running."""
    return write_config(path, **{**run, "attribution": {
        **run["attribution"], "batch_size": 1,
        "methods": [{"name": "integrated_gradients", "params": {"n_steps": n_steps}}], **attribution}})


def flags(ws: Path, model: str, key: str) -> np.ndarray:
    group = zarr.open_group(str(ws), path=f"saliency/syn/{model}", mode="r")
    return np.asarray(group["done"][:, list(group["xai_method"][:]).index(key)], bool)


def model_id(ws: Path) -> str:
    return next(p.name for p in store.models_dir(ws).iterdir() if not p.name.startswith("."))


def _chunk_counts(stdout: str) -> tuple[int, int]:
    """(computed, already complete) chunks, from an attribute run's summary."""
    found = re.search(r"(\d+) chunk\(s\) computed, (\d+) already complete", stdout)
    assert found, stdout
    return int(found.group(1)), int(found.group(2))


@pytest.fixture(scope="module")
def reference(trained, tmp_path_factory) -> tuple[Path, Path, tuple[int, int]]:
    """(slow config, workspace, (computed, complete) chunks): the trained workspace with the slow
    config's maps from one uninterrupted run, which every interrupted run must come out equal to."""
    config, ws = trained
    root = tmp_path_factory.mktemp("reference")
    slow = slow_config(root / "slow.yaml", yaml.safe_load(config.read_text()))
    ws = copy_workspace(ws, root / "ws.zarr")
    res = cli("attribute", slow, "-w", ws, "--cluster", "threads")
    assert res.returncode == 0, res.stderr
    return slow, ws, _chunk_counts(res.stdout)


def test_a_second_writer_is_refused_and_nothing_is_lost(tmp_path, trained):
    config, ws = trained
    run = yaml.safe_load(config.read_text())
    ws = copy_workspace(ws, tmp_path / "ws.zarr")
    model = model_id(ws)
    first = popen("attribute", slow_config(tmp_path / "train.yaml", run, 128, splits=["train"]), "-w", ws,
                  "--cluster", "threads")
    lock = Path(lock_path(ws, f"saliency/syn/{model}"))
    wait_for(lock.is_file, 120, "the first run's lock", first)
    # paused (not ended) while the second starts: on a busy machine the first could otherwise finish
    # before the second process has even imported xaiflow
    os.killpg(first.pid, signal.SIGSTOP)
    try:
        second = cli("attribute", slow_config(tmp_path / "test.yaml", run, 128, splits=["test"]), "-w", ws,
                     "--cluster", "threads")
    finally:
        os.killpg(first.pid, signal.SIGCONT)
    assert_clean_error(second, "being written by another run", f"pid {first.pid}", str(lock))
    assert first.wait(timeout=600) == 0, first.stderr.read()
    assert not lock.exists()
    ds = open_saliency(ws, "syn", model)
    train = ds.split.values == "train"
    before = ds.saliency.values[train]
    again = cli("attribute", tmp_path / "test.yaml", "-w", ws, "--cluster", "threads")
    assert again.returncode == 0, again.stderr
    ds = open_saliency(ws, "syn", model)
    selected = np.isin(ds.split.values, ["train", "test"])
    assert ds.done.values[selected].all() and ds.attrs["status"] == "complete"
    np.testing.assert_array_equal(ds.saliency.values[train], before)  # the first run's maps are intact


def test_a_stale_lock_of_a_dead_process_is_removed(tmp_path, trained):
    config, ws = trained
    ws = copy_workspace(ws, tmp_path / "ws.zarr")
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    lock = Path(lock_path(ws, f"saliency/syn/{model_id(ws)}"))
    lock.parent.mkdir(parents=True)
    lock.write_text(json.dumps({"pid": int(dead.stdout), "host": os.uname().nodename, "owner": "someone",
                                "what": "attribution", "started": "2026-01-01T00:00:00+00:00"}))
    res = cli("attribute", config, "-w", ws, "--cluster", "threads")
    assert res.returncode == 0, res.stderr
    assert "removing the stale lock" in res.stderr and not lock.exists()


def test_ctrl_c_during_ingest_keeps_finished_chunks_and_resumes(tmp_path):
    config = write_config(tmp_path / "run.yaml", datasets=[synthetic_dataset(size=64, chunk_size=8,
                                                                               specimens_per_class=20,
                                                                               images_per_specimen=4)])
    ws, fresh = tmp_path / "ws.zarr", tmp_path / "fresh.zarr"
    proc = popen("ingest", config, "-w", ws, "--cluster", "local")

    def some_chunks_written() -> bool:
        return np.asarray(zarr.open_array(str(ws), path="images/syn/done", mode="r")[:]).sum() >= 16

    wait_for(some_chunks_written, 300, "two written chunks", proc)
    os.killpg(proc.pid, signal.SIGINT)  # Ctrl-C in a terminal: the whole foreground process group
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err[-3000:]
    assert "interrupted" in err and "Traceback" not in out + err, err[-3000:]
    assert store.group_attrs(ws, "images/syn")["status"] == "incomplete"
    resumed = cli("ingest", config, "-w", ws, "--cluster", "threads")
    assert resumed.returncode == 0 and "syn: resumed, 240 samples" in resumed.stdout, resumed.stderr
    assert cli("ingest", config, "-w", fresh, "--cluster", "threads").returncode == 0
    np.testing.assert_array_equal(store.open_group(ws, "images/syn").image.values,
                                  store.open_group(fresh, "images/syn").image.values)


def test_a_crash_between_maps_and_flags_recomputes_that_chunk(tmp_path, reference):
    slow, expected, _ = reference
    ws = copy_workspace(expected, tmp_path / "ws.zarr")
    model = model_id(ws)
    # the state a task leaves when it dies after writing chunk 1's maps, before its flags: garbage, not done
    group = zarr.open_group(str(ws), path=f"saliency/syn/{model}", mode="r+")
    ig = list(group["xai_method"][:]).index("integrated_gradients")
    group["saliency"][6:12, ig] = np.full(group["saliency"][6:12, ig].shape, 123.0, np.float32)
    group["done"][6:12, ig] = False
    res = cli("attribute", slow, "-w", ws, "--cluster", "threads")
    assert res.returncode == 0 and "1 chunk(s) computed" in res.stdout, res.stdout + res.stderr
    np.testing.assert_array_equal(open_saliency(ws, "syn", model).saliency.values,
                                  open_saliency(expected, "syn", model).saliency.values)


def test_a_killed_run_resumes_only_missing_chunks(tmp_path, trained, reference):
    slow, expected, fresh_counts = reference
    ws = copy_workspace(trained[1], tmp_path / "ws.zarr")
    model = model_id(ws)
    proc = popen("attribute", slow, "-w", ws, "--cluster", "threads")
    # 12 stored maps: at least two chunks (of 6 samples) finished
    wait_for(lambda: flags(ws, model, "integrated_gradients").sum() >= 12, 300, "two finished chunks", proc)
    os.killpg(proc.pid, signal.SIGKILL)  # the whole run, at once: no clean-up of any kind
    proc.wait(timeout=30)
    resumed = cli("attribute", slow, "-w", ws, "--cluster", "threads")
    assert resumed.returncode == 0, resumed.stderr
    computed, skipped = _chunk_counts(resumed.stdout)
    assert skipped >= fresh_counts[1] + 2 and computed + skipped == sum(fresh_counts), resumed.stdout
    np.testing.assert_array_equal(open_saliency(ws, "syn", model).saliency.values,
                                  open_saliency(expected, "syn", model).saliency.values)


@pytest.fixture
def cluster(tmp_path):
    """A real ``dask scheduler`` and two ``dask worker`` processes on loopback: (address, worker processes)."""
    from distributed import Client

    from xaiflow.clusters import worker_env

    port = 30000 + os.getpid() % 20000
    address = f"tcp://127.0.0.1:{port}"
    bin_dir = Path(sys.executable).parent
    scheduler = subprocess.Popen([str(bin_dir / "dask"), "scheduler", "--host", "127.0.0.1", "--port", str(port),
                                  "--dashboard-address", "127.0.0.1:0"], stdout=subprocess.DEVNULL,
                                 stderr=subprocess.DEVNULL, start_new_session=True)
    workers = [subprocess.Popen([str(bin_dir / "dask"), "worker", address, "--nthreads", "1", "--no-nanny",
                                 "--host", "127.0.0.1", "--dashboard-address", "127.0.0.1:0", "--local-directory",
                                 str(tmp_path / f"w{i}")], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                env={**os.environ, **worker_env(1)}, start_new_session=True) for i in range(2)]
    try:
        def two_workers() -> bool:
            with Client(address, timeout=5) as c:
                return len(c.scheduler_info()["workers"]) == 2

        wait_for(two_workers, 120, "two Dask workers")
        yield address, workers
    finally:
        for p in (*workers, scheduler):
            if p.poll() is None:
                os.killpg(p.pid, signal.SIGKILL)
            p.wait(timeout=30)


def test_a_killed_worker_loses_nothing(tmp_path, trained, reference, cluster):
    config, ws = trained
    address, workers = cluster
    run = yaml.safe_load(config.read_text())
    slow = slow_config(tmp_path / "slow.yaml", run)
    ws = copy_workspace(ws, tmp_path / "ws.zarr")
    model = model_id(ws)
    proc = popen("attribute", slow, "-w", ws, "--cluster", address)
    wait_for(lambda: flags(ws, model, "integrated_gradients").sum() >= 1, 300, "the first stored map", proc)
    os.kill(workers[0].pid, signal.SIGKILL)  # its running chunk is lost; the scheduler moves it to the other
    out, err = proc.communicate(timeout=600)
    assert proc.returncode == 0, err[-3000:]
    assert "integrated_gradients  27" in out  # every map counted, also those the killed worker stored
    np.testing.assert_array_equal(open_saliency(ws, "syn", model).saliency.values,
                                  open_saliency(reference[1], "syn", model).saliency.values)


def test_a_workspace_that_cannot_be_written_is_a_clear_error(tmp_path, trained):
    config, _ = trained
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    res = cli("ingest", config, "-w", blocker / "ws.zarr", "--cluster", "threads")
    assert_clean_error(res, str(blocker))
