"""How a run config, a command or a flow names a trained model, without writing a hash by hand.

A reference is resolved against a workspace by :meth:`xaiflow.models.catalog.ModelCatalog.resolve`.
This module holds only the reference types, so config sections (which must not import torch
or the catalog) can declare ``model:`` fields.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field

#: a config's reference to its own ``train:`` section
THIS = "this"
#: a reference to the most recently trained model of the dataset
LATEST = "latest"


class TrainRef(BaseModel):
    """A model named by the ``train:`` section that makes it: ``{train: this}`` (this config's own)
    or ``{train: path/to/run.yaml}`` (another config's, relative to this config's folder)."""

    model_config = ConfigDict(extra="forbid")

    train: str = Field(description="'this' (the train section of this config) or a run config path")


#: how configs, commands and flows name a model: an id, a unique id prefix, 'latest', or a TrainRef
#: (resolved by :meth:`xaiflow.models.catalog.ModelCatalog.resolve`); never a hash written by hand
ModelRef = str | TrainRef
