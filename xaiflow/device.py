"""Where torch computes: device names from a config, and the CPU thread count.

:func:`resolve_device` turns a config string into a ``torch.device`` and fails early and
clearly when the device is not there (rather than deep inside a training step).

:func:`set_torch_threads` pins torch's thread pools. torch sizes its intra-op pool from the
host's cores, which inside a container or a Dask worker is often more than the process
may use; with several Dask worker threads each running torch, the threads oversubscribe
the CPUs and throughput collapses (around 10x on a 2-core machine). Call
it once per process (Dask worker start, test session) with the cores that process owns.
"""

from __future__ import annotations

import os
import re

import torch

from xaiflow.errors import XaiflowError

_CUDA = re.compile(r"cuda(?::(\d+))?")
_interop_set = False


class DeviceError(XaiflowError):
    """A device name that is unknown, or a device this machine does not have."""


def resolve_device(spec: str) -> torch.device:
    """``"cpu"``, ``"cuda"``, ``"cuda:N"``, ``"mps"`` or ``"auto"`` (cuda if available, else cpu).

    Raises :class:`DeviceError` for an unknown spec or a device this machine does not have.
    """
    spec = spec.strip().lower()
    if spec == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if spec == "cpu":
        return torch.device("cpu")
    match = _CUDA.fullmatch(spec)
    if match:
        if not torch.cuda.is_available():
            raise DeviceError(f"{spec} requested but torch.cuda.is_available() is False (torch {torch.__version__})")
        index = int(match.group(1) or 0)
        count = torch.cuda.device_count()
        if index >= count:
            raise DeviceError(f"{spec} requested but only {count} CUDA device(s) exist (cuda:0..cuda:{count - 1})")
        return torch.device("cuda", index)
    if spec == "mps":
        if not torch.backends.mps.is_available():
            raise DeviceError("mps requested but torch.backends.mps.is_available() is False")
        return torch.device("mps")
    raise DeviceError(f"unknown device {spec!r}; valid: auto, cpu, cuda, cuda:N, mps")


def check_device_name(spec: str) -> str:
    """``spec`` if it names a device kind :func:`resolve_device` knows (whether this machine has it is
    the worker's business); a :class:`DeviceError` before any work starts otherwise."""
    name = spec.strip().lower()
    if name in ("auto", "cpu", "mps") or _CUDA.fullmatch(name):
        return spec
    raise DeviceError(f"unknown device {spec!r}; valid: auto, cpu, cuda, cuda:N, mps")


def available_cpus() -> int:
    """CPUs this process may run on (its affinity mask, which honours taskset and cpusets)."""
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


def set_torch_threads(n: int | None) -> int:
    """Set torch's intra-op threads to ``n`` (None: :func:`available_cpus`); return the count.

    The inter-op pool is set to the same count the first time only: torch allows that
    once per process and before any parallel work, so later calls leave it unchanged.
    """
    global _interop_set
    threads = available_cpus() if n is None else n
    if threads < 1:
        raise ValueError(f"thread count must be >= 1, got {n!r}")
    torch.set_num_threads(threads)
    if not _interop_set:
        _interop_set = True
        try:
            torch.set_num_interop_threads(threads)
        except RuntimeError:  # parallel work already started: torch keeps its pool
            pass
    return threads
