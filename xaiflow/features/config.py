"""The ``features:`` section of a run config: which extractors to run on which dataset.

Example (see ``configs/uhcs_studies.yaml``)::

    features:
      dataset: uhcs
      model: small_cnn-uhcs-5487ef728c      # default checkpoint of `cnn` extractors
      extractors:
        - {name: glcm}
        - {name: lbp, params: {radii: [1, 2, 3]}}
        - {name: cnn, key: cnn_gram, params: {layers: [block3, block4], pooling: [gram], gram_channels: 16}}

Each extractor writes ``features/<dataset>/<key>`` (``key`` defaults to ``name``) for every
dataset named (``dataset: [clean, shifted]`` for the domains of a generalization study). This
module must not import :mod:`xaiflow.config` (which imports it).
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from xaiflow.features.base import FEATURES

NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.+-]*$"


class ExtractorSpec(BaseModel):
    """One extractor run: its registry name, its parameters, and the group it writes."""

    model_config = ConfigDict(extra="forbid")
    name: str = Field(description="extractor name in xaiflow.features.FEATURES (cnn, glcm, lbp, twopoint)")
    key: str | None = Field(None, pattern=NAME_PATTERN,
                            description="group name features/<dataset>/<key> (default: the extractor name)")
    params: dict[str, Any] = Field(default_factory=dict, description="constructor arguments, stored as provenance")

    @field_validator("name")
    @classmethod
    def _registered(cls, v: str) -> str:
        if v not in FEATURES:
            raise ValueError(f"unknown feature extractor {v!r}; valid: {', '.join(FEATURES.names())}")
        return v

    @property
    def group_key(self) -> str:
        return self.key or self.name


class FeaturesConfig(BaseModel):
    """Feature extraction for one dataset of the workspace (``xaiflow features``)."""

    model_config = ConfigDict(extra="forbid")
    dataset: str | list[str] = Field(description="images/<dataset> to extract features from, or a list of "
                                                 "datasets (e.g. the domains of a generalization study)")
    model: str | None = Field(None, description="model id used by cnn extractors that name neither model nor backbone")
    extractors: list[ExtractorSpec] = Field(min_length=1, description="extractors to run, each writing one group")
    fit_samples: int = Field(256, ge=1, description="images (evenly spaced) that extractors needing a fit learn from")
    overwrite: bool = Field(False, description="replace feature groups written with other parameters")

    @model_validator(mode="after")
    def _unique_keys(self) -> "FeaturesConfig":
        keys = [e.group_key for e in self.extractors]
        dup = sorted({k for k in keys if keys.count(k) > 1})
        if dup:
            raise ValueError(f"extractor keys must be unique (set `key:` to tell them apart), repeated: {dup}")
        if not self.datasets or len(set(self.datasets)) != len(self.datasets):
            raise ValueError(f"dataset must name one dataset or a list of distinct datasets, got {self.dataset!r}")
        return self

    @property
    def datasets(self) -> list[str]:
        return [self.dataset] if isinstance(self.dataset, str) else list(self.dataset)

    def params_for(self, spec: ExtractorSpec) -> dict[str, Any]:
        """The spec's parameters, with the section's default ``model`` for cnn extractors."""
        params = dict(spec.params)
        if spec.name == "cnn" and params.get("model") is None and params.get("backbone") is None:
            if self.model is None:
                raise ValueError(f"features.extractors: cnn extractor {spec.group_key!r} needs params.model "
                                 "(a model id), params.backbone, or features.model")
            params["model"] = self.model
        return params
