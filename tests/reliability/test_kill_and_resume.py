"""Kill a real `xaiflow attribute` process midway, re-run it, and compare with an uninterrupted run."""

import os
import re
import shutil
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import yaml
import zarr

from conftest import synthetic_dataset
from xaiflow import store
from xaiflow.saliency import open_saliency

pytestmark = pytest.mark.slow


def cli(*args, **kw):
    return subprocess.run([sys.executable, "-m", "xaiflow.cli", *args], capture_output=True, text=True, timeout=600, **kw)


def test_killed_run_resumes_only_missing_chunks(tmp_path):
    config = tmp_path / "run.yaml"
    config.write_text(yaml.safe_dump({
        "datasets": [synthetic_dataset(specimens_per_class=4, size=48, chunk_size=4, classes=None)],
        "train": {"dataset": "syn", "epochs": 1, "model_params": {"widths": [8, 16]}, "device": "cpu"},
        "attribution": {"dataset": "syn", "device": "cpu", "batch_size": 1,
                        "methods": [{"name": "integrated_gradients", "params": {"n_steps": 150}}]}}))
    ws = tmp_path / "ws.zarr"
    assert cli("ingest", str(config), "-w", str(ws), "--cluster", "threads").returncode == 0
    assert cli("train", str(config), "-w", str(ws), "--no-predict").returncode == 0
    fresh = tmp_path / "fresh.zarr"
    shutil.copytree(ws, fresh)
    shutil.copytree(store.models_dir(ws), store.models_dir(fresh))

    proc = subprocess.Popen([sys.executable, "-m", "xaiflow.cli", "attribute", str(config), "-w", str(ws),
                             "--cluster", "threads"], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            start_new_session=True)
    n_chunks = 12
    deadline = time.time() + 300
    done = 0
    while time.time() < deadline and proc.poll() is None:
        time.sleep(0.2)
        groups = [g for g in store.list_groups(ws) if g.startswith("saliency/")]
        if groups:
            try:  # the group exists a moment before its method variables do
                flags = np.asarray(zarr.open_group(str(ws), path=groups[0], mode="r")["integrated_gradients__done"][:])
            except KeyError:
                continue
            done = int(flags.reshape(n_chunks, 4).all(axis=1).sum())
            if 2 <= done:
                break
    assert proc.poll() is None, "the run finished before it could be killed; make it slower"
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait(timeout=30)

    resumed = cli("attribute", str(config), "-w", str(ws), "--cluster", "threads")
    assert resumed.returncode == 0, resumed.stderr
    computed, skipped = map(int, re.search(r"(\d+) chunk\(s\) computed, (\d+) already complete", resumed.stdout).groups())
    assert skipped >= done >= 2 and computed + skipped == n_chunks

    assert cli("attribute", str(config), "-w", str(fresh), "--cluster", "threads").returncode == 0
    model_id = next(p.name for p in store.models_dir(ws).iterdir() if not p.name.startswith("."))
    a = open_saliency(ws, "syn", model_id).saliency.values
    b = open_saliency(fresh, "syn", model_id).saliency.values
    assert np.isfinite(a).all()
    np.testing.assert_array_equal(a, b)  # identical to an uninterrupted run
