"""The workspace's trained models: where their checkpoints live, and which model a command means.

Every model trained in a workspace ``ws.zarr`` is a checkpoint directory
``ws.models/<model_id>/`` (:mod:`xaiflow.models.checkpoint`). This module is the one place
that maps a model id to that directory and reads what the checkpoint says about itself:

* :class:`ModelCatalog` lists the models (:meth:`~ModelCatalog.listing`, with a status for
  every directory, so a broken or unsafe checkpoint is shown, not hidden) and opens one by
  id or unique id prefix (:meth:`~ModelCatalog.get`): a :class:`ModelEntry` with the
  verified manifest, the dataset and training config it was made from, its metrics, and the
  model itself (:meth:`ModelEntry.load`, safe loading only; :meth:`ModelEntry.cached` for
  workers that keep it for every chunk).
* :meth:`ModelCatalog.resolve` answers "which model does this config, command or flow mean":
  an explicit id (or unique prefix), a reference to the model a config's ``train:``
  section produces (``{train: this}``, or ``{train: other.yaml}``), ``latest`` (the most
  recently trained model of the dataset), or nothing: then the config's own ``train:``
  section, else the only model trained on the dataset. When that is ambiguous or missing,
  the error lists the candidates and says how to choose.
* :meth:`ModelCatalog.resolve_maps` answers the same for commands that read stored
  attribution maps (show, evaluate, query, report): which ``(dataset, model)`` pair of
  ``saliency/<dataset>/<model_id>`` they mean.

Configs never carry a model hash written by hand: ``model: {train: this}`` means "the model
``xaiflow train`` made from this config", whatever the data's hash on this machine.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING, Any

from xaiflow import store
from xaiflow.errors import XaiflowError
from xaiflow.modelref import LATEST, THIS, ModelRef, TrainRef
from xaiflow.models.checkpoint import (
    MANIFEST,
    WEIGHTS,
    CheckpointError,
    Manifest,
    load_checkpoint,
    load_state_dict_file,
    read_history,
    read_metrics,
    verify_checkpoint,
)

if TYPE_CHECKING:
    import torch

    from xaiflow.config import RunConfig, TrainConfig
    from xaiflow.models.base import MicrographModel


class ModelNotFoundError(XaiflowError):
    """No model, or no single model, matches a reference; the message lists the candidates."""


@dataclass(frozen=True)
class ModelEntry:
    """One verified checkpoint of the catalog (the weights' sha256 matched its manifest)."""

    model_id: str
    directory: Path
    manifest: Manifest
    #: the models URL of a workspace on object storage (``directory`` is then in this host's mirror of it)
    remote: str | None = None

    @property
    def sha256(self) -> str:
        return self.manifest.weights_sha256

    @property
    def arch(self) -> str:
        return self.manifest.arch

    @property
    def num_classes(self) -> int:
        return int(self.manifest.hparams["num_classes"])

    @property
    def train_config(self) -> dict[str, Any]:
        """The ``train:`` section it was trained with (as recorded in its manifest)."""
        return dict(self.manifest.config.get("train", {}))

    @property
    def dataset(self) -> str | None:
        """The dataset it was trained on, or None for a checkpoint made outside ``xaiflow train``."""
        return self.train_config.get("dataset")

    @cached_property
    def metrics(self) -> dict[str, Any]:
        """Its evaluation metrics (``metrics.json``: per split, classes, epochs, throughput)."""
        return read_metrics(self.directory)

    def history(self) -> list[dict[str, Any]]:
        """Its per-epoch training history."""
        return read_history(self.directory)

    def local_directory(self) -> Path:
        """The checkpoint folder on this host: ``directory``, or for a workspace on object storage this
        host's mirror of it (pulled on first use: a Dask worker on another host fetches its own copy)."""
        if self.remote is None:
            return self.directory
        from xaiflow.models.remote import pull

        return pull(self.remote, [self.model_id], {self.model_id: self.sha256}) / self.model_id

    def load(self, device: torch.device | str = "cpu") -> MicrographModel:
        """A fresh copy of the model in eval mode (weights read with ``weights_only=True``)."""
        return load_checkpoint(self.local_directory(), map_location=device)[0]

    def cached(self, device: torch.device | str = "cpu") -> MicrographModel:
        """The model from this process's cache (a Dask worker loads it once for every chunk)."""
        from xaiflow.models.cache import cached_model

        return cached_model(self.local_directory(), device)[0]


@dataclass(frozen=True)
class Listing:
    """One directory of the models folder as ``xaiflow models`` shows it: ``status`` is ``ok`` or
    why the checkpoint cannot be used (``entry`` is then None)."""

    model_id: str
    status: str
    entry: ModelEntry | None
    created: float  # modification time of the directory, for 'latest' among unreadable ones


class ModelCatalog:
    """The trained models of one workspace (see the module docstring)."""

    def __init__(self, workspace: str | os.PathLike[str]) -> None:
        self.workspace = str(workspace)
        self.directory = store.models_dir(workspace)
        #: the models URL of a workspace on object storage, whose checkpoints ``directory`` mirrors
        self.remote = store.models_url(workspace) if store.is_url(workspace) else None
        if self.remote:
            from xaiflow.models.remote import pull

            pull(self.remote)

    def ids(self) -> list[str]:
        """Ids of every checkpoint directory (hidden temporary directories of unfinished saves excluded)."""
        if not self.directory.is_dir():
            return []
        return sorted(p.name for p in self.directory.iterdir()
                      if p.is_dir() and not p.name.startswith(".") and (p / MANIFEST).is_file())

    def listing(self) -> list[Listing]:
        """Every checkpoint directory with its status, oldest first: ``ok``, ``invalid: ...`` (incomplete,
        or weights changed since saving) or ``refused: ...`` (weights that are not a plain state dict,
        e.g. a pickle carrying code, which is never unpickled)."""
        rows = []
        for model_id in self.ids():
            directory = self.directory / model_id
            try:
                entry: ModelEntry | None = self._entry(model_id)
                status = "ok"
            except CheckpointError as e:
                entry, status = None, f"invalid: {e}"
            if entry is not None:
                try:
                    load_state_dict_file(directory / WEIGHTS)
                except CheckpointError as e:
                    entry, status = None, f"refused: unsafe or unreadable weights ({e})"
            created = entry.manifest.created.timestamp() if entry else directory.stat().st_mtime
            rows.append(Listing(model_id, status, entry, created))
        return sorted(rows, key=lambda r: (r.created, r.model_id))

    def _entry(self, model_id: str) -> ModelEntry:
        directory = self.directory / model_id
        return ModelEntry(model_id, directory, verify_checkpoint(directory), self.remote)

    def _describe(self, ids: list[str]) -> str:
        return ", ".join(ids) if ids else f"none in {self.directory}; run `xaiflow train`"

    def get(self, model_id: str) -> ModelEntry:
        """The model with this id, or the only one whose id starts with it; verified."""
        ids = self.ids()
        if model_id in ids:
            return self._entry(model_id)
        matches = [i for i in ids if i.startswith(model_id)] if model_id else []
        if len(matches) == 1:
            return self._entry(matches[0])
        if matches:
            raise ModelNotFoundError(f"model {model_id!r} is ambiguous in {self.directory}: it starts "
                                     f"{', '.join(matches)}; give more of the id")
        raise ModelNotFoundError(f"no trained model {model_id!r} in {self.directory} "
                                 f"(models: {self._describe(ids)})")

    def for_dataset(self, dataset: str | None) -> list[ModelEntry]:
        """Usable models trained on ``dataset`` (every usable model when None), oldest first."""
        return [r.entry for r in self.listing()
                if r.entry is not None and (dataset is None or r.entry.dataset == dataset)]

    def resolve(self, ref: ModelRef | None = None, *, run: RunConfig | None = None,
                dataset: str | None = None) -> ModelEntry:
        """The model ``ref`` means (see the module docstring); ``run`` is the config the reference
        comes from (its ``train:`` section), ``dataset`` narrows ``latest`` and the default."""
        if isinstance(ref, TrainRef):
            return self._trained_by(ref, run)
        if ref == LATEST:
            found = self.for_dataset(dataset)
            if not found:
                raise ModelNotFoundError(f"no trained model{f' for dataset {dataset!r}' if dataset else ''} in "
                                         f"{self.directory} (models: {self._describe(self.ids())})")
            return found[-1]
        if ref:
            return self.get(ref)
        if run is not None and run.train is not None:
            return self._trained_by(TrainRef(train=THIS), run)
        found = self.for_dataset(dataset)
        if len(found) == 1:
            return found[0]
        where = f" trained on dataset {dataset!r}" if dataset else ""
        if not found:
            raise ModelNotFoundError(f"no trained model{where} in {self.directory} "
                                     f"(models: {self._describe(self.ids())})")
        raise ModelNotFoundError(f"{len(found)} models{where}: {', '.join(e.model_id for e in found)}; "
                                 "name one (an id or a unique prefix, or 'latest')")

    def _trained_by(self, ref: TrainRef, run: RunConfig | None) -> ModelEntry:
        if ref.train == THIS:
            if run is None or run.train is None:
                raise ModelNotFoundError("model {train: this}: this config has no `train:` section")
            train, origin = run.train, "this config's `train:` section"
        else:
            from xaiflow.config import load_config

            other = load_config(ref.train)
            if other.train is None:
                raise ModelNotFoundError(f"model {{train: {ref.train}}}: that config has no `train:` section")
            train, origin = other.train, f"the `train:` section of {ref.train}"
        model_id = self.train_id(train)
        if model_id not in self.ids():
            raise ModelNotFoundError(f"{origin} makes model {model_id}, which is not trained in {self.directory} "
                                     f"yet (models: {self._describe(self.ids())}); run `xaiflow train` with that "
                                     "config first")
        return self._entry(model_id)

    def train_id(self, train: TrainConfig) -> str:
        """The id ``xaiflow train`` gives (or gave) a ``train:`` section on this workspace's data."""
        from xaiflow.training import resolve_model_id

        return resolve_model_id(self.workspace, train)

    def resolve_maps(self, ref: ModelRef | None = None, dataset: str | None = None, *,
                     run: RunConfig | None = None) -> tuple[str, str]:
        """``(dataset, model_id)`` of the stored maps a command means: those of the model ``ref`` (or,
        with a ``run`` config, of its model) on ``dataset``; each left open is the only candidate
        among the workspace's ``saliency/<dataset>/<model_id>`` groups, else the error lists them."""
        from xaiflow import schema

        pairs = [tuple(g.split("/")[1:3]) for g in store.list_groups(self.workspace)
                 if g.startswith(schema.SALIENCY + "/") and g.count("/") == 2] \
            if store.is_workspace(self.workspace) else []
        model_id = None
        if ref is not None or run is not None:
            model_id = self.resolve(ref, run=run, dataset=dataset).model_id
        found = sorted({p for p in pairs if (dataset is None or p[0] == dataset)
                        and (model_id is None or p[1] == model_id)})
        if len(found) == 1:
            return found[0]
        asked = " and ".join(x for x in (f"dataset {dataset!r}" if dataset else "",
                                         f"model {model_id}" if model_id else "") if x)
        listed = ", ".join(f"--dataset {d} --model {m}" for d, m in found or sorted(set(pairs)))
        if not found:
            raise ModelNotFoundError(f"no attribution maps{' for ' + asked if asked else ''} in {self.workspace} "
                                     f"({'stored: ' + listed if pairs else 'none stored'}); run `xaiflow attribute`")
        raise ModelNotFoundError(f"maps of several models/datasets{' for ' + asked if asked else ''}: {listed}; "
                                 "choose with --dataset/--model")
