"""Run configurations: pydantic models for every config section, and YAML loading.

A run config is one YAML file (see ``configs/``). Every model forbids unknown keys, so a
typo is an error, not a silently ignored setting. :func:`load_config` reports problems
with the file name and the dotted path of the field, e.g.
``configs/uhcs.yaml: datasets.0.geometry.size: Input should be a valid tuple``.

Strings may reference environment variables as ``${VAR}`` or ``${VAR:-default}`` (used
for data paths such as ``${XAIFLOW_UHCS_DIR:-../../shared/data/uhcs}``); relative paths of
sources are resolved against the directory of the config file, so a config works from
any working directory.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from pathlib import Path
from typing import Annotated, Any, Literal

import numpy as np
import yaml
from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, ValidationError, field_validator, model_validator

from xaiflow.errors import XaiflowError
from xaiflow.features.config import FeaturesConfig
from xaiflow.inspection_config import (AdversarialConfig, ConceptsConfig, ImportanceConfig, ProbesConfig,
                                       UncertaintyConfig)
from xaiflow.modelref import THIS, ModelRef, TrainRef
from xaiflow.plugins import PluginSpec, unique_keys
from xaiflow.schema import SPLITS
from xaiflow.sources import SourceConfig
from xaiflow.studies.config import StudyConfig


class ConfigError(XaiflowError):
    """A config file cannot be read or does not validate; names the file and the field."""


class StrictModel(BaseModel):
    model_config = ConfigDict(extra="forbid")


#: largest side of a stored sample: a chunk of 32 samples at 4096 x 4096 uint8 is 512 MiB already
MAX_SAMPLE_SIDE = 4096
#: a torch device a config may name (checked when the config is read, not on the workers)
DEVICE_PATTERN = r"^(auto|cpu|mps|cuda(:\d+)?)$"



class GeometryConfig(StrictModel):
    """How a source image becomes a fixed-shape sample.

    * ``resize``: take the largest centred window with the target aspect ratio (or, with
      ``target_um_per_px``, the centred window covering ``size * target_um_per_px`` um)
      and resample it to ``size``;
    * ``crop``: take a centred window of exactly ``size`` source pixels (no resampling).

    Tiling of large images is done by the ``panorama`` source, whose tiles then pass
    through the same geometry step.
    """

    size: tuple[int, int] = Field((128, 128), description="(height, width) of every sample in pixels")
    mode: Literal["resize", "crop"] = "resize"
    target_um_per_px: float | None = Field(
        None, gt=0,
        description="resample every image to this physical pixel size (removes magnification as a cue)",
    )

    @field_validator("size")
    @classmethod
    def _positive(cls, v: tuple[int, int]) -> tuple[int, int]:
        if min(v) < 8:
            raise ValueError(f"size {v} is too small (each side >= 8 px)")
        if max(v) > MAX_SAMPLE_SIDE:
            raise ValueError(f"size {v} is too large (each side <= {MAX_SAMPLE_SIDE} px; tile large images with the "
                             "panorama source)")
        return v

    @model_validator(mode="after")
    def _target_needs_resize(self) -> "GeometryConfig":
        if self.target_um_per_px is not None and self.mode != "resize":
            raise ValueError("target_um_per_px needs mode: resize")
        return self


class SplitConfig(StrictModel):
    """Train/val/test assignment by specimen (group), stratified by label, seeded."""

    fractions: dict[str, float] = Field(default_factory=lambda: {"train": 0.7, "val": 0.15, "test": 0.15})
    seed: int = 0

    @field_validator("fractions")
    @classmethod
    def _valid(cls, v: dict[str, float]) -> dict[str, float]:
        bad = sorted(set(v) - set(SPLITS))
        if bad:
            raise ValueError(f"unknown split names {bad}; valid: {list(SPLITS)}")
        if any(f < 0 for f in v.values()) or abs(sum(v.values()) - 1) > 1e-6:
            raise ValueError(f"fractions must be >= 0 and sum to 1, got {v}")
        return {s: float(v.get(s, 0.0)) for s in SPLITS}


#: bytes of decoded samples one ingest write task may hold (a chunk, or a shard of chunks)
MAX_WRITE_TASK_BYTES = 2**30


class DatasetConfig(StrictModel):
    """One dataset of the workspace: where it comes from and how it is stored."""

    name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$", description="dataset name in the workspace")
    source: SourceConfig
    geometry: GeometryConfig = GeometryConfig()
    split: SplitConfig = SplitConfig()
    dtype: Literal["uint8", "uint16", "float32"] = "uint8"
    chunk_size: int = Field(32, ge=1, le=4096, description="samples per Zarr chunk (what a read fetches)")
    shard_chunks: Annotated[int, Field(ge=1, le=1024)] | Literal["auto"] = Field(
        "auto", description="chunks per Zarr v3 shard file (= per write task); 1: a file per chunk; auto: 1 below "
                            "64 chunks, else up to 16 chunks and 64 MB per shard (xaiflow.layout)")
    on_error: Literal["raise", "skip"] = Field(
        "raise", description="raise: stop on the first bad item list; skip: record and ingest the rest"
    )

    @model_validator(mode="after")
    def _bounded_write_task(self) -> "DatasetConfig":
        """One write task holds a chunk (or an explicit shard) of decoded samples: each field is capped,
        but their product is checked too (4096 samples of 4096 x 4096 px would be 64 GiB)."""
        h, w = self.geometry.size
        per_shard = self.shard_chunks if isinstance(self.shard_chunks, int) else 1
        need = self.chunk_size * per_shard * h * w * np.dtype(self.dtype).itemsize
        if need > MAX_WRITE_TASK_BYTES:
            raise ValueError(f"chunk_size {self.chunk_size} x shard_chunks {per_shard} samples of {h} x {w} "
                             f"{self.dtype} make {need / 2**20:,.0f} MiB per write task, more than "
                             f"{MAX_WRITE_TASK_BYTES / 2**20:,.0f} MiB; lower chunk_size or shard_chunks")
        return self

    def config_hash(self) -> str:
        """sha256 of the canonical JSON of this config: equal hashes mean the same ingest (the source's
        guard fields, which only limit what may be read, and the shard layout, which a stored group
        keeps, are left out)."""
        from xaiflow.sources import SOURCES

        guards = SOURCES.get(self.source.kind).guard_fields
        blob = json.dumps(self.model_dump(mode="json", exclude={"source": set(guards), "shard_chunks": True}),
                          sort_keys=True,
                          separators=(",", ":"))
        return hashlib.sha256(blob.encode()).hexdigest()


class AugmentConfig(StrictModel):
    flips: bool = Field(True, description="random horizontal/vertical flips")
    rot90: bool = Field(True, description="random 90-degree rotations")
    crop: int | None = Field(None, ge=8, description="random square crop size for training (None: no crop)")


class TrainConfig(StrictModel):
    """One model to train. Every field is part of the model id."""

    dataset: str = Field(description="images/<dataset> in the workspace")
    arch: str = Field("small_cnn", description="architecture name (xaiflow.models.MODELS)")
    model_params: dict[str, Any] = Field(default_factory=dict, description="architecture hyperparameters")
    epochs: int = Field(30, ge=1, le=100_000)
    batch_size: int = Field(16, ge=1, le=4096)
    lr: float = Field(1e-3, gt=0)
    weight_decay: float = Field(1e-4, ge=0)
    balance: Literal["loss", "sampler", "none"] = "loss"
    augment: AugmentConfig = AugmentConfig()
    patience: int = Field(8, ge=1, description="epochs without val improvement before stopping")
    seed: int = 0
    folds: int | None = Field(None, ge=2, description="k specimen-grouped folds over train+val")
    fold: int | None = Field(None, ge=0, description="which fold is the validation set")
    device: str = Field("auto", pattern=DEVICE_PATTERN, description="cpu, cuda, cuda:N, mps or auto")
    threads: int | None = Field(None, ge=1, le=1024, description="torch threads (default: the worker's share)")


class CompareConfig(StrictModel):
    """A model trained and explained beside the ``train:`` model, so its shortcut verdict stands beside the
    first one in the report (e.g. the same structures without the planted shortcut).

    ``train`` holds only what differs from the ``train:`` section (merged into it when the config is
    read, nested mappings key by key); it is explained on its own training dataset, on the
    ``attribution:`` splits, with ``methods`` (default: the ``attribution:`` methods).
    """

    name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$", description="its label in the report and stage table")
    train: TrainConfig = Field(description="the `train:` section with these changes (e.g. {dataset: other})")
    methods: list[PluginSpec] | None = Field(None, min_length=1,
                                             description="attribution methods for it (default: attribution.methods)")


def _merged(base: dict[str, Any], changes: dict[str, Any]) -> dict[str, Any]:
    """``base`` with ``changes`` applied, nested mappings merged key by key."""
    out = dict(base)
    for key, value in changes.items():
        out[key] = _merged(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) else value
    return out


class AttributionConfig(StrictModel):
    """Attribution maps for a dataset and a trained model (``xaiflow attribute``)."""

    dataset: str = Field(description="images/<dataset> to explain")
    model: ModelRef | None = Field(
        None, description="the model to explain: an id (or unique prefix), 'latest', {train: this} or "
                          "{train: other.yaml} (default: the model of this config's `train:` section)")
    methods: list[PluginSpec] = Field(
        default_factory=lambda: [PluginSpec(name=n) for n in ("saliency", "integrated_gradients", "grad_cam")],
        min_length=1, description="attribution methods (xaiflow.attribution.METHODS): names or {name, key, params}")
    target: Literal["predicted", "label", "all"] = Field(
        "predicted", description="explain the predicted class, the true label, or every class")
    splits: list[Literal["train", "val", "test"]] | None = Field(None, description="samples to explain (None: all)")
    shard_chunks: Annotated[int, Field(ge=1, le=1024)] | Literal["auto"] = Field(
        "auto", description="image chunks per Zarr v3 shard of a new maps group (= per task); 1: a file per chunk; "
                            "auto: from the number of chunks, the maps' size and the methods' cost (xaiflow.layout)")
    storage: Literal["float32", "float16"] = Field(
        "float32", description="dtype of stored maps; float16 halves their size: each map is divided by its largest "
                               "absolute value (stored beside it) first, so no value becomes a float16 subnormal")
    device: str = Field("auto", pattern=DEVICE_PATTERN,
                        description="cpu, cuda, cuda:N, mps or auto (CUDA when the worker has it)")
    gpu: bool = Field(False, description="declare a GPU resource: tasks only run on workers started with GPU=1")
    batch_size: int | None = Field(None, ge=1, le=4096,
                                   description="images per attribution call (None: 4 on CPU, 32 on GPU)")
    memory_budget_mb: int = Field(2048, ge=64, le=10**7,
                                  description="per worker: bounds the model evaluations per forward pass, and a chunk "
                                              "task whose estimated peak exceeds it is refused before it starts")
    max_evals_per_pass: dict[str, Annotated[int, Field(ge=1, le=65_536)]] = Field(
        default_factory=lambda: {"cpu": 8, "cuda": 256},
        description="upper bound of evaluations per forward pass per device type (measured: on CPU, "
                    "8 per pass ran 2x faster than 50)")

    @field_validator("methods")
    @classmethod
    def _unique_keys(cls, v: list[PluginSpec]) -> list[PluginSpec]:
        unique_keys(v, "methods")
        return v

    def with_overrides(self, *, methods: list[str] | None = None, model: str | None = None,
                       device: str | None = None) -> "AttributionConfig":
        """This section with the methods (names, default parameters), model or device a command or
        a flow run asks for instead; validated like the config."""
        update = {k: v for k, v in {"methods": methods, "model": model, "device": device}.items() if v}
        try:
            return AttributionConfig.model_validate({**self.model_dump(), **update})
        except ValidationError as err:
            raise ConfigError(format_validation_error(err, "attribution (with the options given)")) from None


#: a mask selection as a config holds it (see :func:`xaiflow.maskspec.parse_mask_selection`)
MaskClassValue = str | list[str] | dict[str, str | list[str]]


class EvaluationConfig(StrictModel):
    """The metrics of the attribution maps (``xaiflow evaluate``, the evaluation flow)."""

    metrics: list[PluginSpec] | None = Field(
        None, description="metric specs {name, key, params}; a localization metric's params may hold its own "
                          "mask_class (None: the default metrics)")
    methods: list[str] | None = Field(None, description="saliency keys to score (None: every stored one)")
    mask_class: MaskClassValue | None = Field(
        None, description="the localization region: a mask class, a list (union), or per image label "
                          "{label: class(es), '*': class(es) for the other labels}; None: every class but the first")

    @field_validator("metrics")
    @classmethod
    def _unique_keys(cls, v: list[PluginSpec] | None) -> list[PluginSpec] | None:
        if v:
            unique_keys(v, "metrics")
        return v


class ShortcutConfig(StrictModel):
    """The shortcut verdict (``xaiflow shortcut``, ``xaiflow report``, the report stage): which mask
    classes are the evidence a model should use and which the suspect it should not, e.g.
    ``evidence: [carbide_network, spheroidite]``, ``suspect: databar`` (forms of
    :func:`xaiflow.maskspec.parse_mask_selection`, per image label too). Left out: ``structure``
    and ``shortcut`` when the masks have those classes (the synthetic source)."""

    evidence: MaskClassValue | None = Field(None, description="mask class(es) whose removal should hurt the model")
    suspect: MaskClassValue | None = Field(None, description="mask class(es) whose content should not matter "
                                                             "(content swap, moves)")
    pairs_per_sample: int = Field(2, ge=1, le=50, description="content swaps per judged sample")
    seed: int = Field(0, description="seed of the donor pairing, the random content and the bootstrap")


class RunConfig(StrictModel):
    """A whole run config file. Later stages (training, attribution, ...) add sections."""

    datasets: list[DatasetConfig] = Field(min_length=1)
    train: TrainConfig | None = Field(None, description="the model to train (xaiflow train)")
    compare: list[CompareConfig] = Field(default_factory=list, description="more models, trained, explained and "
                                         "judged beside it (the pipeline; changes to the `train:` section)")
    features: FeaturesConfig | None = Field(None, description="feature extraction (xaiflow features)")
    studies: StudyConfig | None = Field(None, description="feature studies (xaiflow study generalization|reduction)")
    attribution: AttributionConfig | None = Field(None, description="attribution maps (xaiflow attribute)")
    evaluation: EvaluationConfig | None = Field(None, description="metrics of the maps (xaiflow evaluate, the "
                                                                   "evaluation flow)")
    uncertainty: UncertaintyConfig | None = Field(None, description="MC dropout or ensemble (xaiflow uncertainty)")
    concepts: ConceptsConfig | None = Field(None, description="TCAV concept scores (xaiflow concepts)")
    importance: ImportanceConfig | None = Field(None, description="structure importance per mask class (xaiflow "
                                                                  "importance)")
    probes: ProbesConfig | None = Field(None, description="symmetry and invariance probes (xaiflow probe)")
    adversarial: AdversarialConfig | None = Field(None, description="Fisher-information inspection (xaiflow "
                                                                    "adversarial)")
    shortcut: ShortcutConfig | None = Field(None, description="evidence and suspect mask classes of the shortcut "
                                                              "verdict (xaiflow shortcut, xaiflow report)")
    _origin: str = PrivateAttr("<config>")

    @property
    def origin(self) -> str:
        """Where the config came from (its file), for messages."""
        return self._origin

    def section(self, name: str) -> Any:
        """The section ``name`` (``train``, ``features``, ``attribution``, ``studies.reduction``, ...);
        a :class:`ConfigError` naming the file when the config has none."""
        value: Any = self
        for part in name.split("."):
            value = getattr(value, part, None)
            if value is None:
                raise ConfigError(f"{self.origin}: no `{name}:` section")
        return value

    @field_validator("datasets")
    @classmethod
    def _unique_names(cls, v: list[DatasetConfig]) -> list[DatasetConfig]:
        names = [d.name for d in v]
        dup = sorted({n for n in names if names.count(n) > 1})
        if dup:
            raise ValueError(f"dataset names must be unique, repeated: {dup}")
        return v

    def dataset(self, name: str) -> DatasetConfig:
        for d in self.datasets:
            if d.name == name:
                return d
        raise ConfigError(f"no dataset {name!r} in config; datasets: {[d.name for d in self.datasets]}")

    @model_validator(mode="before")
    @classmethod
    def _compare_changes_train(cls, data: Any) -> Any:
        """Each ``compare:`` entry's ``train`` is a change of the ``train:`` section: merged into it here."""
        if not isinstance(data, dict) or not data.get("compare"):
            return data
        base = data.get("train")
        if base is None:
            raise ValueError("compare: needs a `train:` section (each entry changes it)")
        base = base.model_dump() if isinstance(base, BaseModel) else base
        entries = []
        for entry in data["compare"]:
            if isinstance(entry, dict) and isinstance(base, dict):
                changes = entry.get("train") or {}
                changes = changes.model_dump() if isinstance(changes, BaseModel) else changes
                entry = {**entry, "train": _merged(base, changes) if isinstance(changes, dict) else changes}
            entries.append(entry)
        return {**data, "compare": entries}

    @model_validator(mode="after")
    def _compare_names_unique(self) -> "RunConfig":
        names = [c.name for c in self.compare]
        dup = sorted({n for n in names if names.count(n) > 1})
        if dup:
            raise ValueError(f"compare names must be unique, repeated: {dup}")
        return self

    def compared(self) -> list["RunConfig"]:
        """Each ``compare:`` model as a run config of its own: its train section as ``train:`` (so
        ``{train: this}`` means it), maps of its training dataset on the ``attribution:`` splits with its
        methods; no other sections."""
        out = []
        for c in self.compare:
            attribution = None
            if self.attribution is not None:
                attribution = self.attribution.model_copy(update={
                    "dataset": c.train.dataset, "model": None, "methods": c.methods or self.attribution.methods})
            run = RunConfig(datasets=self.datasets, train=c.train, attribution=attribution)
            run._origin = f"{self.origin} (compare: {c.name})"
            out.append(run)
        return out


_ENV = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")


def _expand_env(value: Any, where: str) -> Any:
    if isinstance(value, dict):
        return {k: _expand_env(v, f"{where}.{k}") for k, v in value.items()}
    if isinstance(value, list):
        return [_expand_env(v, f"{where}.{i}") for i, v in enumerate(value)]
    if isinstance(value, str):
        def sub(m: re.Match[str]) -> str:
            name, default = m.group(1), m.group(2)
            if name in os.environ and os.environ[name] != "":
                return os.environ[name]
            if default is None:
                raise ConfigError(f"{where}: environment variable {name} is not set and has no default")
            return default
        return _ENV.sub(sub, value)
    return value


def format_validation_error(err: ValidationError, origin: str) -> str:
    lines = [f"{origin}: invalid config"]
    for e in err.errors():
        loc = ".".join(str(p) for p in e["loc"]) or "(top level)"
        msg = "unknown key (not a setting of this section)" if e["type"] == "extra_forbidden" else e["msg"]
        value = e.get("input")
        shown = "" if e["type"] in ("extra_forbidden", "missing") or isinstance(value, dict) else f" (got {value!r})"
        lines.append(f"  {loc}: {msg}{shown}")
    return "\n".join(lines)


def parse_config(data: dict[str, Any], origin: str = "<config>", base_dir: Path | None = None) -> RunConfig:
    """Validate a config mapping; relative source paths are resolved against ``base_dir``."""
    if not isinstance(data, dict):
        raise ConfigError(f"{origin}: expected a mapping at the top level, got {type(data).__name__}")
    data = _expand_env(data, origin)
    try:
        cfg = RunConfig.model_validate(data)
    except ValidationError as err:
        raise ConfigError(format_validation_error(err, origin)) from None
    cfg._origin = origin
    base = (base_dir or Path.cwd()).resolve()
    for d in cfg.datasets:
        root = getattr(d.source, "root", None)
        if root is not None and not Path(root).is_absolute():
            d.source.root = (base / root).resolve()
    for section in (cfg.attribution, cfg.features):
        ref = getattr(section, "model", None)
        if isinstance(ref, TrainRef) and ref.train != THIS and not Path(ref.train).is_absolute():
            ref.train = str((base / ref.train).resolve())
    return cfg


#: the run configs shipped inside the package (``configs/`` in the repository links here)
PACKAGE_CONFIG_DIR = Path(__file__).resolve().parent / "configs"


def packaged_configs() -> list[str]:
    """Names of the run configs shipped with xaiflow (``quickstart``, ``uhcs``, ...)."""
    return sorted(p.stem for p in PACKAGE_CONFIG_DIR.glob("*.yaml"))


def resolve_config_path(path: str | os.PathLike[str]) -> Path:
    """The run config file for ``path``: the path as given when it exists; else, for a bare name such
    as ``quickstart`` or a repository path such as ``configs/quickstart.yaml`` (absent from an
    installed wheel), the config of that name shipped in the package."""
    given = Path(path)
    if given.is_file():
        return given
    name = given.stem if given.suffix in (".yaml", ".yml") else given.name
    shipped = PACKAGE_CONFIG_DIR / f"{name}.yaml"
    bare = str(path) == name or given.parent.as_posix() == "configs"
    if bare and shipped.is_file():
        return shipped
    return given


def load_config(path: str | os.PathLike[str], data_dir: str | os.PathLike[str] | None = None) -> RunConfig:
    """Read and validate a YAML run config.

    ``data_dir`` overrides the ``root`` of every file-based source (the CLI's
    ``--data-dir``), e.g. to point ``configs/uhcs.yaml`` at another copy of the data.
    """
    path = resolve_config_path(path)
    try:
        text = path.read_text()
    except OSError as e:
        raise ConfigError(f"cannot read config {path}: {e.strerror} "
                          f"(shipped configs, usable by name: {', '.join(packaged_configs())})") from None
    except UnicodeDecodeError:
        raise ConfigError(f"{path}: not a text file (a YAML run config is expected)") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as e:
        raise ConfigError(f"{path}: not valid YAML: {e}") from None
    cfg = parse_config(data, origin=str(path), base_dir=path.parent)
    if data_dir is not None:
        for d in cfg.datasets:
            if hasattr(d.source, "root"):
                d.source.root = Path(data_dir).resolve()
    return cfg


def load_section(path: str | os.PathLike[str], name: str) -> Any:
    """One section of a YAML run config (see :meth:`RunConfig.section`)."""
    return load_config(path).section(name)
