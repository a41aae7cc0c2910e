"""Config sections of the model inspections (``uncertainty:``, ``concepts:``, ``importance:``, ``probes:``,
``adversarial:``).

Each names a dataset and, like ``attribution:``, the model (default: the model of the config's
``train:`` section). The pipeline runs a stage for each section present; the CLI commands take
the same settings as options.
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field

from xaiflow.modelref import ModelRef

DEVICE_PATTERN = r"^(auto|cpu|mps|cuda(:\d+)?)$"
#: a short text (a concept, transform or model id): bounded, like every config value
Text = Annotated[str, Field(min_length=1, max_length=500)]
MODEL_HELP = ("the model: an id (or unique prefix), 'latest', {train: this} or {train: other.yaml} (default: the "
              "model of this config's `train:` section)")


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid")

    dataset: Text = Field(description="images/<dataset> to inspect")
    model: ModelRef | None = Field(None, description=MODEL_HELP)
    device: str = Field("auto", pattern=DEVICE_PATTERN, description="cpu, cuda, cuda:N, mps or auto")


class UncertaintyConfig(_Section):
    """MC dropout (one model) or a deep ensemble (``members``) (xaiflow uncertainty)."""

    members: list[Text] | None = Field(None, max_length=100,
                                      description="model ids of an ensemble (instead of `model`'s MC dropout)")
    passes: int | None = Field(None, ge=1, le=1000, description="MC dropout passes per model (default: 20 for "
                                                                "one model, 1 per ensemble member)")
    split: Text = Field("test", description="samples the tables summarize (train, val, test or all)")


class ConceptsConfig(_Section):
    """TCAV concept scores (xaiflow concepts)."""

    concepts: list[Text] = Field(min_length=1, max_length=100,
                                description="NAME=mask:CLASS[@LABEL], NAME=meta:COORD=VALUE or NAME=folder:PATH")
    layers: list[Text] | None = Field(None, max_length=20, description="layers (default: the last conv block)")
    runs: int = Field(20, ge=2, le=200, description="random counterpart sets")
    examples: int = Field(50, ge=6, le=2000, description="examples per concept and random set")
    min_fraction: float = Field(0.6, gt=0, le=1, description="mask concepts: least share of the patch in the class")
    patch: int = Field(0, ge=0, le=4096, description="mask concepts: patch side in px (0: half the image side)")
    split: Text = Field("test", description="samples whose classes are scored (examples come from the rest)")
    alpha: float = Field(0.05, gt=0, lt=1, description="significance level after Holm correction")


class ImportanceConfig(_Section):
    """Occlusion and keep-only per mask class (xaiflow importance)."""

    baseline: Literal["blur", "mean", "noise"] = Field("blur", description="what replaces removed pixels")
    sigma: float = Field(4.0, gt=0, le=100, description="blur: Gaussian sigma in px")
    min_area: float = Field(0.01, ge=0, lt=1, description="least share of the image a mask class must cover")
    split: Text = Field("test", description="samples to measure (train, val, test or all)")


class ProbesConfig(_Section):
    """Symmetry and invariance probes (xaiflow probe)."""

    transforms: list[Text] = Field(
        default_factory=lambda: ["rot90", "rot180", "rot270", "flip_h", "flip_v", "scale:1.25", "contrast:1.5",
                                 "noise:0.05"], min_length=1, max_length=50, description="transforms to probe")
    method: Text = Field("grad_cam", description="attribution method whose maps are compared")
    split: Text = Field("test", description="samples to probe (train, val, test or all)")


class AdversarialConfig(_Section):
    """FGSM/PGD examples and their Fisher information scores (xaiflow adversarial)."""

    epsilon: float = Field(0.1, gt=0, le=4, description="L-infinity budget in standardized input units")
    steps: int = Field(10, ge=1, le=1000, description="PGD steps")
    step_size: float = Field(0.025, gt=0, le=4, description="PGD step (at most epsilon)")
    split: Text = Field("test", description="samples to attack (train, val, test or all)")
    max_samples: int = Field(64, ge=1, le=100_000, description="attack at most this many of them (seeded draw)")
