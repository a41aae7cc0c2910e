"""Checkpoints of a workspace on object storage: the ``<ws>.models`` folder at the store's sibling URL,
mirrored to a local folder so that loading stays the safe, verified local load of
:mod:`xaiflow.models.checkpoint`.

* :func:`mirror_dir`: the local mirror of a models URL, under ``$XAIFLOW_CACHE_DIR`` (default
  ``~/.cache/xaiflow``), one folder per URL;
* :func:`pull`: copy the checkpoint folders the mirror lacks (each into a hidden temporary folder
  first, renamed when complete, so a half-copied checkpoint is never listed);
* :func:`push`: upload a checkpoint folder saved in the mirror (after training).

Every process that needs a model (the client, each Dask worker on its own host) pulls what it
lacks; the weights are then verified against their manifest as for a local workspace.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import uuid
from pathlib import Path

from xaiflow.models.checkpoint import MANIFEST

CACHE_ENV = "XAIFLOW_CACHE_DIR"


def mirror_dir(url: str) -> Path:
    """The local folder mirroring the models folder at ``url``."""
    root = Path(os.environ.get(CACHE_ENV) or Path.home() / ".cache" / "xaiflow")
    return root / "models" / hashlib.sha1(url.encode()).hexdigest()[:16]


def remote_ids(url: str) -> list[str]:
    """Model ids with a manifest at ``url`` (a save in progress has none yet)."""
    from xaiflow.store import filesystem

    fs, root = filesystem(url)
    if not fs.exists(root):
        return []
    return sorted(p.rstrip("/").rsplit("/", 1)[-1] for p in fs.ls(root, detail=False)
                  if fs.exists(f"{p.rstrip('/')}/{MANIFEST}"))


def _weights_sha256(directory: Path) -> str | None:
    """The weights' hash a checkpoint folder's manifest records (None without a readable manifest)."""
    try:
        return json.loads((directory / MANIFEST).read_text()).get("weights_sha256")
    except (OSError, ValueError):
        return None


def pull(url: str, model_ids: list[str] | None = None, expected: dict[str, str] | None = None) -> Path:
    """Copy the checkpoints at ``url`` (or only ``model_ids``) that the local mirror lacks, or whose
    weights differ from ``expected`` (model id -> weights sha256: retrained with ``--force``); returns
    the mirror. Only complete checkpoints (their manifest uploaded, last) are copied, each into a
    hidden folder first; when several processes of a host pull one at once, the first rename wins."""
    from xaiflow.store import filesystem

    fs, root = filesystem(url)
    mirror = mirror_dir(url)
    for model_id in model_ids if model_ids is not None else remote_ids(url):
        target, remote = mirror / model_id, f"{root.rstrip('/')}/{model_id}"
        have = _weights_sha256(target)
        if have is not None and (expected is None or expected.get(model_id, have) == have):
            continue
        if not fs.exists(f"{remote}/{MANIFEST}"):
            raise FileNotFoundError(f"{url}/{model_id}: no complete checkpoint there (no {MANIFEST})")
        tmp = mirror / f".pull-{model_id}-{uuid.uuid4().hex[:8]}"
        tmp.mkdir(parents=True)
        try:
            for path in fs.ls(remote, detail=False):
                fs.get(path, str(tmp / path.rstrip("/").rsplit("/", 1)[-1]))
            if have is not None:  # an outdated copy: set aside, then replaced
                old = mirror / f".old-{model_id}-{uuid.uuid4().hex[:8]}"
                with contextlib.suppress(OSError):
                    os.replace(target, old)
                shutil.rmtree(old, ignore_errors=True)
            try:
                os.replace(tmp, target)
            except OSError:
                if _weights_sha256(target) is None:  # not another process's finished copy
                    raise
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    return mirror


def push(url: str, directory: Path) -> None:
    """Upload the checkpoint folder ``directory`` (in the mirror) to ``url``: the manifest last, so a
    reader never lists a checkpoint whose weights are still on their way."""
    from xaiflow.store import filesystem

    fs, root = filesystem(url)
    target = f"{root.rstrip('/')}/{directory.name}"
    files = sorted(p for p in directory.iterdir() if p.is_file())
    for path in sorted(files, key=lambda p: p.name == MANIFEST):
        fs.put(str(path), f"{target}/{path.name}")
