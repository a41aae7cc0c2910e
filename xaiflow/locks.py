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

A workspace on object storage keeps its locks at the sibling URL (``s3://b/ws.locks/``), created
with the file system's exclusive create (``xb``: a conditional write on S3, a plain exclusive open
on a local or memory file system), so two runs from any hosts cannot both take one.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import getpass
import json
import logging
import os
import socket
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from xaiflow.errors import XaiflowError

log = logging.getLogger("xaiflow")


class WorkspaceBusyError(XaiflowError):
    """Another run is writing the group; the message names it (owner, host, pid, start, what)."""


def locks_dir(workspace: str | os.PathLike[str]) -> str:
    """``ws.zarr`` -> ``ws.locks/`` (a path, or a URL beside a workspace on object storage)."""
    from xaiflow.store import _sibling

    return _sibling(workspace, ".locks")


def lock_path(workspace: str | os.PathLike[str], group: str) -> str:
    return f"{locks_dir(workspace)}/{group.strip('/').replace('/', '__')}.lock"


def _fs(path: str) -> tuple[Any, str]:
    """The file system of a lock path (local when it is no URL) and the path on it."""
    from xaiflow.store import filesystem, is_url

    if is_url(path):
        return filesystem(path)
    import fsspec

    return fsspec.filesystem("file"), str(Path(path).absolute())


def _holder(path: str) -> dict[str, Any]:
    fs, p = _fs(path)
    try:
        return json.loads(fs.cat_file(p))
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


def _acquire(path: str, record: dict[str, Any]) -> bool:
    fs, p = _fs(path)
    fs.makedirs(p.rsplit("/", 1)[0], exist_ok=True)
    try:
        with fs.open(p, "xb") as f:
            f.write(json.dumps(record).encode())
    except FileExistsError:
        return False
    return True


def _release(path: str, holder: dict[str, Any]) -> None:
    """Remove the lock if it is still ``holder``'s (read again just before: another run may have
    broken a stale lock and taken it meanwhile)."""
    fs, p = _fs(path)
    if _holder(path).get("token") == holder.get("token"):
        with contextlib.suppress(FileNotFoundError):
            fs.rm(p)


@contextmanager
def group_lock(workspace: str | os.PathLike[str], group: str, what: str) -> Iterator[None]:
    """Hold the lock of ``group`` while the block runs (see the module docstring); ``what`` says what
    this run does, for the message another run gets."""
    path = lock_path(workspace, group)
    record = {"group": group, "what": what, "owner": getpass.getuser(), "host": socket.gethostname(),
              "pid": os.getpid(), "started": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
              "token": uuid.uuid4().hex}  # whose lock it is: pids repeat across hosts and containers
    if not _acquire(path, record):
        holder = _holder(path)
        if not _is_stale(holder):
            who = (f"{holder.get('what', 'a run')} by {holder.get('owner', '?')} on {holder.get('host', '?')} "
                   f"(pid {holder.get('pid', '?')}), started {holder.get('started', '?')}")
            raise WorkspaceBusyError(f"{group} is being written by another run: {who}. Wait for it to finish; "
                                     f"if that run is gone, remove {path}")
        log.warning("%s: removing the stale lock of pid %s on %s (no longer running)", group, holder["pid"],
                    holder["host"])
        _release(path, holder)
        if not _acquire(path, record):
            raise WorkspaceBusyError(f"{group} is being written by another run that started just now; see {path}")
    try:
        yield
    finally:
        _release(path, record)
