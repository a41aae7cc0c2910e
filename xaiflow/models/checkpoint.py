"""Safe, atomic model checkpoints: one directory per model, ``models/<model_id>/``.

Layout::

    weights.pt      the state_dict only (tensors on CPU), written with torch.save
    manifest.json   arch, hparams, run config, sha256 of weights.pt, versions, time
    history.json    per-epoch training history (list of dicts)
    metrics.json    evaluation metrics (dict)

Safety: weights are only ever read with ``torch.load(weights_only=True)``, so a checkpoint
from elsewhere cannot run code when loaded (a pickle of an arbitrary object is refused),
and the sha256 in the manifest detects a weights file changed after saving. The hash
guards against accidents and mix-ups, not against an attacker (who can rewrite the
manifest too); ``weights_only`` is what makes loading safe.

Atomicity: :func:`save_checkpoint` writes everything into a hidden temporary sibling
directory and renames it into place at the end, so ``models/<model_id>/`` either holds a
complete checkpoint or does not exist. A checkpoint is complete iff ``manifest.json``
exists and verifies. A process killed mid-save leaves only a ``.<model_id>.tmp-*``
sibling, which nothing reads (delete it at leisure). Replacing an existing checkpoint
renames the old one aside first (``.<model_id>.old-*``, removed afterwards): a crash
between the two renames leaves the new checkpoint absent and the old one recoverable
from that hidden sibling. One writer per model id at a time.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import pickle
import shutil
import tempfile
import uuid
from collections.abc import Mapping
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import torch
from pydantic import BaseModel, ConfigDict, ValidationError

import xaiflow
from xaiflow.errors import XaiflowError
from xaiflow.models.base import MODELS, MicrographModel
from xaiflow.registry import UnknownEntryError

FORMAT_VERSION = 1
WEIGHTS = "weights.pt"
MANIFEST = "manifest.json"
HISTORY = "history.json"
METRICS = "metrics.json"
_FILES = frozenset({WEIGHTS, MANIFEST, HISTORY, METRICS})


class CheckpointError(XaiflowError):
    """A checkpoint cannot be saved, verified or loaded; the message names the file and why."""


class Manifest(BaseModel):
    """What ``manifest.json`` records: enough to rebuild, verify and trace the model."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    format_version: int
    arch: str
    hparams: dict[str, Any]
    config: dict[str, Any]
    weights_sha256: str
    torch_version: str
    xaiflow_version: str
    created: datetime

    def to_json(self) -> str:
        return self.model_dump_json(indent=2)

    @classmethod
    def from_json(cls, text: str) -> Manifest:
        return cls.model_validate_json(text)


def _json_default(obj: Any) -> Any:
    """Make numpy/torch values (``tolist``) and paths JSON-serializable; refuse the rest."""
    if hasattr(obj, "tolist"):
        return obj.tolist()
    if isinstance(obj, os.PathLike):
        return os.fspath(obj)
    raise TypeError(f"object of type {type(obj).__name__} is not JSON-serializable")


def _to_json(value: Any, what: str) -> str:
    try:
        return json.dumps(value, indent=2, default=_json_default)
    except (TypeError, ValueError) as exc:
        raise CheckpointError(f"cannot save {what}: {exc}") from exc


def _write(path: Path, data: bytes) -> None:
    """Write and fsync, so a renamed directory never holds files still in the page cache only."""
    with open(path, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _check_replaceable(directory: Path) -> None:
    """Refuse to overwrite anything but a checkpoint (e.g. ``models/`` itself by mistake)."""
    if not directory.exists():
        return
    if not directory.is_dir():
        raise CheckpointError(f"{directory} exists and is not a directory; refusing to replace it")
    foreign = sorted(p.name for p in directory.iterdir() if p.name not in _FILES)
    if foreign:
        raise CheckpointError(
            f"{directory} is not a checkpoint directory (it holds {', '.join(foreign[:5])}); refusing to replace it"
        )


def _write_files(
    directory: Path, model: MicrographModel, config: dict[str, Any], history: list[dict], metrics: dict
) -> Manifest:
    """Write the four files into ``directory`` (an empty temporary directory), manifest last."""
    buffer = io.BytesIO()
    torch.save({k: v.detach().cpu() for k, v in model.state_dict().items()}, buffer)
    weights = buffer.getvalue()
    _write(directory / WEIGHTS, weights)
    _write(directory / HISTORY, _to_json(history, HISTORY).encode())
    _write(directory / METRICS, _to_json(metrics, METRICS).encode())
    manifest = Manifest(
        format_version=FORMAT_VERSION,
        arch=model.arch,
        hparams=json.loads(_to_json(model.hparams, f"{MANIFEST} (model hparams)")),
        config=json.loads(_to_json(config, f"{MANIFEST} (config)")),
        weights_sha256=hashlib.sha256(weights).hexdigest(),
        torch_version=torch.__version__,
        xaiflow_version=xaiflow.__version__,
        created=datetime.now(timezone.utc),
    )
    _write(directory / MANIFEST, manifest.to_json().encode())
    _fsync_dir(directory)
    return manifest


def _move_into_place(tmp: Path, directory: Path) -> None:
    if directory.exists():
        old = directory.with_name(f".{directory.name}.old-{uuid.uuid4().hex[:8]}")
        os.replace(directory, old)
        os.replace(tmp, directory)
        shutil.rmtree(old)
    else:
        os.replace(tmp, directory)
    _fsync_dir(directory.parent)


def save_checkpoint(
    directory: str | Path,
    model: MicrographModel,
    config: Mapping[str, Any] | BaseModel,
    history: list[dict] | None = None,
    metrics: dict | None = None,
) -> Manifest:
    """Save ``model`` with its run ``config``, training ``history`` and ``metrics`` atomically.

    ``directory`` (e.g. ``models/<model_id>``) is created, or replaced if it holds a
    checkpoint, only once every file is written. Values must be JSON-serializable (numpy
    and torch scalars/arrays and paths are converted).
    """
    directory = Path(directory)
    _check_replaceable(directory)
    if isinstance(config, BaseModel):
        config = config.model_dump(mode="json")
    directory.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{directory.name}.tmp-", dir=directory.parent))
    try:
        manifest = _write_files(tmp, model, dict(config), history or [], metrics or {})
        _move_into_place(tmp, directory)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return manifest


def verify_checkpoint(directory: str | Path) -> Manifest:
    """Check that ``directory`` is a complete checkpoint whose weights match the manifest.

    Does not unpickle anything or build the model. Raises :class:`CheckpointError`.
    """
    directory = Path(directory)
    manifest_path = directory / MANIFEST
    if not directory.is_dir():
        raise CheckpointError(f"{directory}: no such checkpoint directory")
    if not manifest_path.is_file():
        raise CheckpointError(
            f"incomplete checkpoint: {manifest_path} is missing (a save did not finish, or this is not a checkpoint)"
        )
    try:
        manifest = Manifest.from_json(manifest_path.read_text())
    except (ValidationError, ValueError) as exc:
        raise CheckpointError(f"{manifest_path} is not a valid checkpoint manifest: {exc}") from exc
    if manifest.format_version > FORMAT_VERSION:
        raise CheckpointError(
            f"{manifest_path}: format version {manifest.format_version} is newer than this xaiflow "
            f"({xaiflow.__version__}) reads ({FORMAT_VERSION}); upgrade xaiflow"
        )
    weights_path = directory / WEIGHTS
    if not weights_path.is_file():
        raise CheckpointError(f"incomplete checkpoint: {weights_path} is missing")
    actual = _sha256_file(weights_path)
    if actual != manifest.weights_sha256:
        raise CheckpointError(
            f"{weights_path}: weights.pt was modified after saving: sha256 {actual} != "
            f"{manifest.weights_sha256} recorded in {MANIFEST}"
        )
    return manifest


def checkpoint_sha256(directory: str | Path) -> str:
    """The verified sha256 of the checkpoint's weights (for provenance attrs of results)."""
    return verify_checkpoint(directory).weights_sha256


def load_state_dict_file(path: Path) -> dict[str, torch.Tensor]:
    """Read a state_dict with ``torch.load(weights_only=True)``: tensors only, never code.

    Raises :class:`CheckpointError` naming ``path`` if it holds anything else.
    """
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        raise CheckpointError(
            f"{path}: refusing to unpickle arbitrary objects; the file must hold only a state_dict of tensors ({exc})"
        ) from exc
    except Exception as exc:
        raise CheckpointError(f"{path}: not loadable with torch.load(weights_only=True): {exc}") from exc
    if not isinstance(state, dict) or not all(
        isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in state.items()
    ):
        raise CheckpointError(f"{path}: holds a {type(state).__name__}, not a state_dict (str -> tensor)")
    return state


def _check_state_dict(model: MicrographModel, state: dict[str, torch.Tensor], path: Path) -> None:
    expected = model.state_dict()
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    shapes = [
        f"{k} {tuple(state[k].shape)} != {tuple(expected[k].shape)}"
        for k in sorted(set(state) & set(expected))
        if state[k].shape != expected[k].shape
    ]
    problems = [
        f"{label}: {', '.join(items[:5])}{' ...' if len(items) > 5 else ''}"
        for label, items in (("missing keys", missing), ("unexpected keys", unexpected), ("shape mismatch", shapes))
        if items
    ]
    if problems:
        raise CheckpointError(f"{path}: weights do not match architecture {model.arch!r}: {'; '.join(problems)}")


def load_checkpoint(
    directory: str | Path, map_location: str | torch.device = "cpu"
) -> tuple[MicrographModel, Manifest]:
    """Verify, rebuild and load the checkpoint's model (in eval mode, on ``map_location``).

    Raises :class:`CheckpointError` for an incomplete, modified, unsafe or mismatched
    checkpoint. Weights are read with ``torch.load(weights_only=True)`` only.
    """
    directory = Path(directory)
    manifest = verify_checkpoint(directory)
    state = load_state_dict_file(directory / WEIGHTS)
    try:
        cls = MODELS.get(manifest.arch)
    except UnknownEntryError as exc:
        raise CheckpointError(f"{directory / MANIFEST}: {exc}") from exc
    try:
        model = cls.from_hparams(manifest.hparams)
    except (TypeError, ValueError) as exc:
        raise CheckpointError(
            f"{directory / MANIFEST}: cannot rebuild {manifest.arch!r} from its hparams: {exc}"
        ) from exc
    _check_state_dict(model, state, directory / WEIGHTS)
    model.load_state_dict(state)
    return model.to(map_location).eval(), manifest


def read_history(directory: str | Path) -> list[dict]:
    """The training history saved with the checkpoint."""
    return json.loads((Path(directory) / HISTORY).read_text())


def read_metrics(directory: str | Path) -> dict:
    """The evaluation metrics saved with the checkpoint."""
    return json.loads((Path(directory) / METRICS).read_text())
