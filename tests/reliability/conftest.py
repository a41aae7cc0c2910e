"""Shared parts of the reliability tests: the real ``xaiflow`` command in its own process, and one
small trained workspace per session that tests copy before they break it.

Every scenario here runs real processes (the CLI, Dask worker processes, a Prefect server where
the scenario is about it) and checks what a hostile or unlucky user would meet: a clear error
naming the file, field or value, exit status 2 (130 for Ctrl-C), no traceback, and nothing
already written lost or corrupted. The README's reliability table lists them.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from conftest import synthetic_dataset
from xaiflow import store

pytestmark = pytest.mark.slow


#: runs the CLI as ``python -m xaiflow.cli`` does, then prints the process's peak resident memory:
#: VmHWM of its own address space (``ru_maxrss`` would report the forking parent's size, kept across exec)
_PEAK = ("import runpy, sys\n"
         "sys.argv = ['xaiflow', *sys.argv[1:]]\n"
         "try:\n    runpy.run_module('xaiflow.cli', run_name='__main__')\nexcept SystemExit as e:\n    code = e.code\n"
         "else:\n    code = 0\n"
         "hwm = [l for l in open('/proc/self/status') if l.startswith('VmHWM:')][0].split()[1]\n"
         "print(f'PEAK_KB={hwm}', file=sys.stderr)\n"
         "sys.exit(code)\n")


def cli(*args, timeout: int = 600, peak: bool = False, **kw) -> subprocess.CompletedProcess:
    """``xaiflow ARGS`` in a process of its own (as a user or a batch job runs it); with ``peak``, the
    result's ``peak_mb`` is that process's peak resident memory."""
    prefix = ["-c", _PEAK] if peak else ["-m", "xaiflow.cli"]
    res = subprocess.run([sys.executable, *prefix, *map(str, args)], capture_output=True, text=True,
                         timeout=timeout, **kw)
    if peak:
        kb = [line for line in res.stderr.splitlines() if line.startswith("PEAK_KB=")]
        res.peak_mb = int(kb[-1].split("=")[1]) / 1024 if kb else float("nan")
        res.stderr = "\n".join(line for line in res.stderr.splitlines() if not line.startswith("PEAK_KB="))
    return res


def assert_clean_error(res: subprocess.CompletedProcess, *needles: str, code: int = 2) -> None:
    """Exit ``code``, one ``error:`` message holding every needle, and no traceback anywhere."""
    out = res.stdout + res.stderr
    assert res.returncode == code, f"exit {res.returncode}:\n{out[-3000:]}"
    assert "Traceback" not in out, out[-3000:]
    for needle in needles:
        assert needle in res.stderr, f"{needle!r} not in:\n{res.stderr[-3000:]}"


def write_config(path: Path, **sections) -> Path:
    path.write_text(yaml.safe_dump(sections))
    return path


def copy_workspace(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    if store.models_dir(src).is_dir():
        shutil.copytree(store.models_dir(src), store.models_dir(dst))
    return dst


@pytest.fixture(scope="session")
def trained(tmp_path_factory) -> tuple[Path, Path]:
    """(run config, workspace): 36 synthetic 32 px images in chunks of 6, a trained small CNN, through
    the CLI; tests copy the workspace (:func:`copy_workspace`) before changing it."""
    root = tmp_path_factory.mktemp("trained")
    config = write_config(root / "run.yaml", datasets=[synthetic_dataset()],
                          train={"dataset": "syn", "epochs": 1, "model_params": {"widths": [4, 8]}, "device": "cpu"},
                          attribution={"dataset": "syn", "device": "cpu", "methods": ["saliency", "grad_cam"]})
    ws = root / "ws.zarr"
    for step in (("ingest", config, "-w", ws, "--cluster", "threads"), ("train", config, "-w", ws, "--no-predict")):
        res = cli(*step)
        assert res.returncode == 0, res.stderr
    return config, ws
