"""The ``features:`` section of a run config: which extractors to run on which dataset.

Example (see ``configs/uhcs_studies.yaml``)::

    features:
      dataset: uhcs
      model: {train: this}        # default network of `cnn` extractors: the model of this config's train section
      extractors:
        - {name: glcm}
        - {name: lbp, params: {radii: [1, 2, 3]}}
        - {name: cnn, key: cnn_gram, params: {layers: [block3, block4], pooling: [gram], gram_channels: 16}}

Each extractor writes ``features/<dataset>/<key>`` (``key`` defaults to ``name``) for every
dataset named (``dataset: [clean, shifted]`` for the domains of a generalization study). This
module must not import :mod:`xaiflow.config` (which imports it).
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from xaiflow.features.base import FEATURES
from xaiflow.modelref import ModelRef
from xaiflow.plugins import PluginSpec, registered, unique_keys


class FeaturesConfig(BaseModel):
    """Feature extraction for one dataset of the workspace (``xaiflow features``)."""

    model_config = ConfigDict(extra="forbid")
    dataset: str | list[str] = Field(description="images/<dataset> to extract features from, or a list of "
                                                 "datasets (e.g. the domains of a generalization study)")
    model: ModelRef | None = Field(
        None, description="the network of cnn extractors that name neither model nor backbone: a model id (or "
                          "unique prefix), 'latest', {train: this} or {train: other.yaml}")
    extractors: list[PluginSpec] = Field(
        min_length=1, description="extractors to run (xaiflow.features.FEATURES), each writing "
                                  "features/<dataset>/<key>: names or {name, key, params}")
    fit_samples: int = Field(256, ge=1, description="images (evenly spaced) that extractors needing a fit learn from")
    overwrite: bool = Field(False, description="replace feature groups written with other parameters")

    @field_validator("extractors")
    @classmethod
    def _known_and_unique(cls, v: list[PluginSpec]) -> list[PluginSpec]:
        registered(v, FEATURES)
        unique_keys(v, "extractors")
        return v

    @model_validator(mode="after")
    def _distinct_datasets(self) -> "FeaturesConfig":
        if not self.datasets or len(set(self.datasets)) != len(self.datasets):
            raise ValueError(f"dataset must name one dataset or a list of distinct datasets, got {self.dataset!r}")
        return self

    @property
    def datasets(self) -> list[str]:
        return [self.dataset] if isinstance(self.dataset, str) else list(self.dataset)
