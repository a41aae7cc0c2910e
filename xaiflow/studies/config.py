"""The ``studies:`` section of a run config: cross-validation, generalization and reduction.

Example (see ``configs/uhcs_studies.yaml`` and ``configs/synthetic_shift.yaml``)::

    studies:
      dataset: uhcs                       # default dataset of the classification/reduction studies
      cv: {folds: 5, seed: 0, classifiers: [random_forest, logistic_regression, linear_svm]}
      feature_sets: {texture: [glcm, lbp, twopoint], cnn: [cnn]}
      generalization:
        domains:
          - {name: high_mag, dataset: uhcs, threshold: {coord: source_um_per_px, below: 0.1}}
          - {name: low_mag,  dataset: uhcs, threshold: {coord: source_um_per_px, at_least: 0.1}}
      reduction: {feature_sets: [texture, cnn], methods: [pca, rf_importance, mutual_information]}

**Domains.** A domain is a set of samples of one dataset: all of it (``{dataset: d}``), or
the samples whose per-sample coordinates match a rule: ``where`` (``{coord: value}`` or
``{coord: [values]}``: equality with any of the values; all coords must match) and/or
``threshold`` (``{coord: c, below: t}`` keeps ``c < t``, ``{coord: c, at_least: t}`` keeps
``c >= t``). Any coordinate of ``images/<dataset>`` works: ``detector``,
``source_um_per_px`` (the microscope's pixel size), ``um_per_px`` (of the stored sample),
``condition`` (synthetic acquisition conditions), metadata columns. Domains of one dataset
must not share samples. Separate datasets are separate domains (``{dataset: syn_clean}``,
``{dataset: syn_shifted}``).

This module must not import :mod:`xaiflow.config` (which imports it).
"""

from __future__ import annotations

from typing import Literal, Union

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

Scalar = Union[str, int, float, bool]
NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.+-]*$"
REDUCTION_METHODS = ("pca", "rf_importance", "mutual_information")


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


def _check_classifiers(names: list[str]) -> list[str]:
    from xaiflow.studies.classify import CLASSIFIERS

    unknown = [n for n in names if n not in CLASSIFIERS]
    if unknown:
        raise ValueError(f"unknown classifier(s) {unknown}; valid: {', '.join(CLASSIFIERS.names())}")
    if len(set(names)) != len(names) or not names:
        raise ValueError(f"classifiers must be a non-empty list without repeats, got {names}")
    return names


class CVConfig(_Strict):
    """Specimen-grouped cross-validation shared by every study."""

    folds: int = Field(5, ge=2, description="number of specimen-grouped folds (StratifiedGroupKFold)")
    seed: int = Field(0, description="seed of the fold assignment and of the classifiers")
    classifiers: list[str] = Field(default_factory=lambda: ["random_forest", "logistic_regression", "linear_svm"],
                                   description="classifier names (xaiflow.studies.classify.CLASSIFIERS)")
    small_classes: Literal["reduce", "drop"] = Field(
        "reduce", description="a class with fewer specimens than folds: reduce the folds to its specimen count "
                              "(at least 2), or drop the class; classes with one specimen are always dropped")

    @field_validator("classifiers")
    @classmethod
    def _classifiers(cls, v: list[str]) -> list[str]:
        return _check_classifiers(v)


class ThresholdRule(_Strict):
    """Keep samples with ``coord < below`` or ``coord >= at_least`` (exactly one of the two)."""

    coord: str = Field("um_per_px", description="numeric per-sample coordinate, e.g. source_um_per_px")
    below: float | None = Field(None, description="keep samples with coord < below")
    at_least: float | None = Field(None, description="keep samples with coord >= at_least")

    @model_validator(mode="after")
    def _one_bound(self) -> "ThresholdRule":
        if (self.below is None) == (self.at_least is None):
            raise ValueError("give exactly one of `below` and `at_least`")
        return self

    def describe(self) -> str:
        return f"{self.coord}<{self.below:g}" if self.below is not None else f"{self.coord}>={self.at_least:g}"


class DomainSpec(_Strict):
    """A domain: a dataset, optionally restricted by ``where`` and/or ``threshold`` rules."""

    name: str | None = Field(None, pattern=NAME_PATTERN, description="domain name in tables and figures")
    dataset: str = Field(description="images/<dataset> (and its features) the samples come from")
    where: dict[str, Union[Scalar, list[Scalar]]] = Field(
        default_factory=dict, description="{coord: value or [values]}: keep samples whose coord equals one value")
    threshold: ThresholdRule | None = Field(None, description="{coord, below | at_least}: a numeric cut")

    def label(self) -> str:
        """The name, or one derived from the rules, e.g. ``uhcs[source_um_per_px<0.1]``."""
        if self.name:
            return self.name
        rules = [f"{k}={'|'.join(map(str, v)) if isinstance(v, list) else v}" for k, v in sorted(self.where.items())]
        if self.threshold is not None:
            rules.append(self.threshold.describe())
        return f"{self.dataset}[{','.join(rules)}]" if rules else self.dataset


class GeneralizationConfig(_Strict):
    """Train on each domain, test on every domain (held-out specimens): the generalization matrix."""

    name: str = Field("generalization", pattern=NAME_PATTERN, description="study name: studies/<dataset>/<name>")
    domains: list[DomainSpec] = Field(description="two or more domains")
    feature_sets: list[str] | None = Field(None, description="feature sets or extractor keys (default: all defined)")
    classifiers: list[str] | None = Field(None, description="default: studies.cv.classifiers")
    cnn_models: dict[str, list[str]] = Field(
        default_factory=dict, description="{domain name: [model ids trained on that domain]}: CNN rows of the matrix")
    classes: Literal["shared", "all"] = Field(
        "shared", description="shared: keep the classes every domain has (with >= 2 specimens); all: keep every "
                              "class (a class missing from a training domain then scores 0 recall)")

    @field_validator("domains")
    @classmethod
    def _two_or_more(cls, v: list[DomainSpec]) -> list[DomainSpec]:
        if len(v) < 2:
            got = ", ".join(d.label() for d in v) or "none"
            raise ValueError(f"a generalization study needs at least two domains (train on one, test on another); "
                             f"got {len(v)}: {got}")
        names = [d.label() for d in v]
        dup = sorted({n for n in names if names.count(n) > 1})
        if dup:
            raise ValueError(f"domain names must be unique, repeated: {dup} (set `name:`)")
        return v

    @field_validator("classifiers")
    @classmethod
    def _classifiers(cls, v: list[str] | None) -> list[str] | None:
        return None if v is None else _check_classifiers(v)

    @model_validator(mode="after")
    def _cnn_domains(self) -> "GeneralizationConfig":
        names = [d.label() for d in self.domains]
        unknown = sorted(set(self.cnn_models) - set(names))
        if unknown:
            raise ValueError(f"cnn_models names unknown domain(s) {unknown}; domains: {names}")
        return self


class ReductionConfig(_Strict):
    """Accuracy against the number of features kept (PCA, random-forest importance, mutual information)."""

    name: str = Field("reduction", pattern=NAME_PATTERN, description="study name: studies/<dataset>/<name>")
    dataset: str | None = Field(None, description="default: studies.dataset, then features.dataset")
    feature_sets: list[str] | None = Field(None, description="feature sets or extractor keys (default: all defined)")
    methods: list[Literal["pca", "rf_importance", "mutual_information"]] = Field(
        default_factory=lambda: list(REDUCTION_METHODS), min_length=1, description="reduction methods")
    classifier: str = Field("random_forest", description="classifier trained on the kept features")
    ks: list[int] | None = Field(None, description="numbers of features to keep (default: ~12 on a log scale up to F)")
    target: float = Field(0.95, gt=0, le=1, description="fraction of the full-feature accuracy that k must reach")
    top: int = Field(15, ge=1, description="surviving features listed per feature set and method")

    @field_validator("classifier")
    @classmethod
    def _classifier(cls, v: str) -> str:
        return _check_classifiers([v])[0]

    @field_validator("ks")
    @classmethod
    def _ks(cls, v: list[int] | None) -> list[int] | None:
        if v is not None and (not v or min(v) < 1):
            raise ValueError(f"ks must be positive integers, got {v}")
        return None if v is None else sorted(set(v))


class StudyConfig(_Strict):
    """Studies on extracted features (``xaiflow features`` evaluates, ``xaiflow study ...`` runs)."""

    dataset: str | None = Field(None, description="dataset of the classification and reduction studies "
                                                  "(default: features.dataset)")
    cv: CVConfig = Field(default_factory=CVConfig, description="specimen-grouped cross-validation")
    feature_sets: dict[str, list[str]] = Field(
        default_factory=dict, description="{name: [extractor keys]}: features concatenated into one set")
    generalization: GeneralizationConfig | None = Field(None, description="the generalization matrix study")
    reduction: ReductionConfig | None = Field(None, description="the feature-reduction study")

    @field_validator("feature_sets")
    @classmethod
    def _sets(cls, v: dict[str, list[str]]) -> dict[str, list[str]]:
        import re

        for name, keys in v.items():
            if not re.match(NAME_PATTERN, name) or not keys:
                raise ValueError(f"feature set {name!r}: needs a plain name and a non-empty list of extractor keys")
        return v
