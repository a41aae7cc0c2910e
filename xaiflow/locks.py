"""One writing run per workspace group at a time: a lock file per group, beside the workspace.

Chunk tasks of one run never touch each other's chunks, but two runs writing one group (two
``xaiflow attribute`` with the same key and other splits, a CLI run beside a flow run) would:
each task rewrites its chunk from the flags it read when it started, so one run's maps could
be overwritten by the other's fill values, and both would report success. So every library
call that writes a group (ingest, predictions, features, maps, metrics) holds
:func:`group_lock` from planning to finalizing, and a second run is refused with a message
naming the running one.

Lock files live in ``<workspace>.locks/`` (a sibling folder, like ``<workspace>.models/``: zarr
treats every folder of a store as part of it). Each holds the owner, host, pid, start time
and what the run does. A lock whose process is gone (same host, pid not running) is stale: it
is removed, with a warning, and the new run proceeds. A lock from another host cannot be
checked from here; the message says which file to remove if that run is known to be gone.
"""

from __future__ import annotations

import datetime as dt
import getpass
import json
import logging
import os
import socket
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from xaiflow.errors import XaiflowError

log = logging.getLogger("xaiflow")


class WorkspaceBusyError(XaiflowError):
    """Another run is writing the group; the message names it (owner, host, pid, start, what)."""


def locks_dir(workspace: str | os.PathLike[str]) -> Path:
    """``ws.zarr`` -> ``ws.locks/``."""
    path = Path(workspace)
    return path.with_name((path.stem if path.suffix == ".zarr" else path.name) + ".locks")


def lock_path(workspace: str | os.PathLike[str], group: str) -> Path:
    return locks_dir(workspace) / (group.strip("/").replace("/", "__") + ".lock")


def _holder(path: Path) -> dict[str, Any]:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return {}  # being written right now, or unreadable: treated as held


def _is_stale(holder: dict[str, Any]) -> bool:
    """A lock of this host whose process no longer runs."""
    if holder.get("host") != socket.gethostname() or not isinstance(holder.get("pid"), int):
        return False
    try:
        os.kill(holder["pid"], 0)
    except ProcessLookupError:
        return True
    except PermissionError:  # a process of another user runs under that pid
        return False
    return False


def _acquire(path: Path, record: dict[str, Any]) -> bool:
    try:
        fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
    except FileExistsError:
        return False
    with os.fdopen(fd, "w") as f:
        json.dump(record, f)
    return True


@contextmanager
def group_lock(workspace: str | os.PathLike[str], group: str, what: str) -> Iterator[None]:
    """Hold the lock of ``group`` while the block runs (see the module docstring); ``what`` says what
    this run does, for the message another run gets."""
    path = lock_path(workspace, group)
    path.parent.mkdir(parents=True, exist_ok=True)
    record = {"group": group, "what": what, "owner": getpass.getuser(), "host": socket.gethostname(),
              "pid": os.getpid(), "started": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")}
    if not _acquire(path, record):
        holder = _holder(path)
        if not _is_stale(holder):
            who = (f"{holder.get('what', 'a run')} by {holder.get('owner', '?')} on {holder.get('host', '?')} "
                   f"(pid {holder.get('pid', '?')}), started {holder.get('started', '?')}")
            raise WorkspaceBusyError(f"{group} is being written by another run: {who}. Wait for it to finish; "
                                     f"if that run is gone, remove {path}")
        log.warning("%s: removing the stale lock of pid %s on %s (no longer running)", group, holder["pid"],
                    holder["host"])
        path.unlink(missing_ok=True)
        if not _acquire(path, record):
            raise WorkspaceBusyError(f"{group} is being written by another run that started just now; see {path}")
    try:
        yield
    finally:
        if _holder(path).get("pid") == os.getpid():
            path.unlink(missing_ok=True)
