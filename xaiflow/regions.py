"""Concurrent reads and writes of one region of several Zarr arrays, in one call.

Why: every synchronous zarr-python 3 call hops to an event-loop thread and back and handles
its array on its own, about 2-5 ms per call on this machine. A chunk task of the attribution
engine touches four arrays per method (maps, targets, non-finite and done flags) plus the images;
made one by one, those calls cost a cheap method (a saliency chunk is ~150 ms of compute) more
than 10 % of its time. Gathering them into one coroutine of Zarr's public async API
(``zarr.api.asynchronous``, ``AsyncArray.getitem``/``setitem``) pays one hop per call and
overlaps the I/O.

The event loop is ours, not Zarr's: the helper Zarr runs its own synchronous API with
(``zarr.core.sync``) is private. Each process starts one loop, in a daemon thread, on first
use (a forked child, seeing another process id, starts its own and forgets its parent's
arrays). Every array is opened on that loop and only ever awaited there, so stores that bind
resources to a loop stay correct; any number of threads may call this module at once.

A process keeps the arrays it opened (opening one parses its metadata, ~1 ms) for as long as
their ``zarr.json`` is unchanged on disk, so a worker opens them once, not once per chunk; it
keeps at most :data:`MAX_OPENED`, dropping the least recently used.
"""

from __future__ import annotations

import asyncio
import os
import threading
from collections import OrderedDict
from collections.abc import Coroutine, Iterable, Sequence
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import zarr
import zarr.api.asynchronous

from xaiflow import store

T = TypeVar("T")

#: Arrays a process keeps open. A chunk task opens 1 + 4-5 per method (66 for 13 methods);
#: 256 holds those of a few runs at once (a Dask worker's threads may serve several), while
#: a long-lived worker that sees many workspaces holds a bounded amount of metadata.
MAX_OPENED = 256

_Key = tuple[str, str, str]  # (workspace, array path, mode)
_Stamp = tuple[int, int, int] | None


class _Process:
    """This process's event loop, running in a daemon thread, and the arrays opened on it."""

    def __init__(self) -> None:
        self.pid = os.getpid()
        self.loop = asyncio.new_event_loop()
        threading.Thread(target=self.loop.run_forever, name="xaiflow-regions", daemon=True).start()
        #: key -> (stamp of its zarr.json, the opened array), least recently used first
        self.opened: OrderedDict[_Key, tuple[_Stamp, zarr.AsyncArray]] = OrderedDict()
        self.lock = threading.Lock()  # guards ``opened``

    def run(self, coro: Coroutine[Any, Any, T]) -> T:
        """Run ``coro`` on the loop and wait for its result (or exception)."""
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result()


_PROCESS: _Process | None = None
_PROCESS_LOCK = threading.Lock()


def _process() -> _Process:
    """This process's :class:`_Process`, created on first use and again after a fork."""
    global _PROCESS
    process = _PROCESS
    if process is None or process.pid != os.getpid():
        with _PROCESS_LOCK:
            if _PROCESS is None or _PROCESS.pid != os.getpid():
                _PROCESS = _Process()
            process = _PROCESS
    return process


def _stamp(workspace: str, path: str) -> _Stamp:
    """Identity of an array's metadata file: recreated or edited arrays get a new stamp. None (never
    reused: opened anew each time) on object storage, where no cheap identity is at hand."""
    if store.is_url(workspace):
        return None
    try:
        st = os.stat(Path(workspace, path, "zarr.json"))
    except OSError:
        return None
    return st.st_ino, st.st_mtime_ns, st.st_size


def open_arrays(workspace: str | os.PathLike[str], paths: Iterable[str], mode: str = "r+") -> dict[str, zarr.AsyncArray]:
    """The arrays at ``paths`` (relative to the store root); those not opened before by this
    process (or dropped from its cache since), or changed on disk since, are opened concurrently.

    Pass them only to :func:`read` and :func:`write` of this process (they belong to its loop).
    """
    process = _process()
    workspace = str(workspace) if store.is_url(workspace) else os.path.abspath(workspace)
    paths = list(dict.fromkeys(paths))
    stamps = {p: _stamp(workspace, p) for p in paths}
    found: dict[str, zarr.AsyncArray] = {}
    with process.lock:
        for p in paths:
            entry = process.opened.get((workspace, p, mode))
            if entry is not None and stamps[p] is not None and entry[0] == stamps[p]:
                process.opened.move_to_end((workspace, p, mode))
                found[p] = entry[1]
    stale = [p for p in paths if p not in found]
    if stale:
        async def _open() -> list[Any]:
            root = await zarr.api.asynchronous.open_group(store.location(workspace), mode=mode, zarr_format=3,
                                                          use_consolidated=False)  # never stale metadata
            return list(await asyncio.gather(*(root.getitem(p) for p in stale)))

        nodes = process.run(_open())
        for path, node in zip(stale, nodes):
            if not isinstance(node, zarr.AsyncArray):
                raise KeyError(f"{workspace}: {path} is a group, not an array")
        with process.lock:
            for path, node in zip(stale, nodes):
                process.opened[(workspace, path, mode)] = (stamps[path], node)
                process.opened.move_to_end((workspace, path, mode))
                found[path] = node
            while len(process.opened) > MAX_OPENED:
                process.opened.popitem(last=False)
    return {p: found[p] for p in paths}


def read(arrays: Sequence[zarr.AsyncArray], region: slice | tuple[slice, int]) -> list[np.ndarray]:
    """``array[region]`` of every array, read concurrently: samples (first dimension), optionally
    one column of the second (a method of the saliency group)."""

    async def _read() -> list[Any]:
        return list(await asyncio.gather(*(a.getitem(region) for a in arrays)))

    return [np.asarray(v) for v in _process().run(_read())]


def write(arrays: Sequence[zarr.AsyncArray], region: slice | tuple[slice, int], values: Sequence[np.ndarray]) -> None:
    """``array[region] = value`` for every pair, written concurrently; all are stored when it returns."""
    if len(arrays) != len(values):
        raise ValueError(f"{len(arrays)} arrays but {len(values)} values")

    async def _write() -> None:
        await asyncio.gather(*(a.setitem(region, v) for a, v in zip(arrays, values)))

    _process().run(_write())
