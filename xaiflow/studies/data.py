"""Feature tables for the studies: read ``features/<dataset>/<key>`` groups, select domains.

A *feature set* is one extractor group or a named concatenation of several
(``studies.feature_sets: {texture: [glcm, lbp, twopoint]}``). :func:`load_feature_table`
reads it into plain arrays (features, class names, specimens, per-sample coordinates) with
the checks every study needs: groups complete, samples aligned, every value finite.
:func:`select_domain` applies a domain rule (see :mod:`xaiflow.studies.config`).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from xaiflow import schema, store
from xaiflow.errors import XaiflowError
from xaiflow.studies.config import DomainSpec


class StudyError(XaiflowError):
    """A study cannot run on these inputs; the message names the dataset, group, domain or class."""


@dataclass
class FeatureTable:
    """One feature set of one dataset as arrays (rows: samples in workspace order)."""

    name: str
    dataset: str
    X: np.ndarray
    labels: list[str]
    families: list[str]
    samples: np.ndarray
    y: np.ndarray
    groups: np.ndarray
    coords: pd.DataFrame
    identity: dict[str, Any] = field(default_factory=dict)

    def subset(self, mask: np.ndarray) -> FeatureTable:
        return FeatureTable(self.name, self.dataset, self.X[mask], self.labels, self.families, self.samples[mask],
                            self.y[mask], self.groups[mask], self.coords[mask].reset_index(drop=True), self.identity)


def extractor_keys(workspace: str | os.PathLike[str], dataset: str) -> list[str]:
    """Keys of the feature groups written for ``dataset`` (``features/<dataset>/<key>``)."""
    prefix = f"{schema.FEATURES}/{dataset}/"
    return sorted(g[len(prefix):] for g in store.list_groups(workspace) if g.startswith(prefix))


def resolve_feature_sets(workspace: str | os.PathLike[str], dataset: str, defined: dict[str, list[str]],
                         names: list[str] | None) -> dict[str, list[str]]:
    """Feature set name -> extractor keys. ``names``: defined set names or plain keys (default: all)."""
    available = extractor_keys(workspace, dataset)
    if names is None:
        names = list(defined) or available
    if not names:
        raise StudyError(f"{workspace}: dataset {dataset!r} has no feature groups; run `xaiflow features` first")
    sets = {n: list(defined.get(n, [n])) for n in names}
    for name, keys in sets.items():
        missing = [k for k in keys if k not in available]
        if missing:
            raise StudyError(f"{workspace}: feature set {name!r} needs features/{dataset}/{missing[0]}, which does "
                             f"not exist (feature groups of {dataset!r}: {available or 'none'}; "
                             f"defined sets: {sorted(defined) or 'none'}); run `xaiflow features`")
    return sets


def _family(key: str, family: str) -> str:
    return family if family.split("/")[0] == key else f"{key}/{family}"


def load_feature_table(workspace: str | os.PathLike[str], dataset: str, name: str, keys: list[str]) -> FeatureTable:
    """Concatenate the feature groups ``keys`` of ``dataset`` into one table (checked finite)."""
    parts, labels, families, identity = [], [], [], {}
    first = None
    for key in keys:
        group = schema.group_path(schema.FEATURES, dataset, key)
        try:
            ds = store.open_group(workspace, group)
        except store.WorkspaceError as e:
            raise StudyError(f"{e}; run `xaiflow features` to write it") from None
        x = np.asarray(ds["features"].data.compute(scheduler="synchronous"), dtype=np.float64)
        bad = ~np.isfinite(x).all(axis=1)
        if bad.any():
            ids = store.strings(ds[schema.SAMPLE].values)[bad][:5].tolist()
            raise StudyError(f"{workspace}: {group} has NaN/inf features in {int(bad.sum())} of {len(x)} samples "
                             f"(e.g. {ids}); re-extract with --overwrite or fix those images")
        if first is None:
            first = ds
        elif not np.array_equal(store.strings(ds[schema.SAMPLE].values), store.strings(first[schema.SAMPLE].values)):
            raise StudyError(f"{workspace}: {group} holds other samples than features/{dataset}/{keys[0]}; "
                             "re-extract both from the same images")
        parts.append(x)
        labels += [f"{key}:{lab}" for lab in store.strings(ds["feature"].values)]
        families += [_family(key, f) for f in store.strings(ds["family"].values)]
        # what made the features, minus the images they came from (compared across datasets)
        identity[key] = {k: v for k, v in ds.attrs["identity"].items() if k != "images_config_hash"}
    assert first is not None
    coords = pd.DataFrame({k: (store.strings(c.values) if np.asarray(c.values).dtype.kind in "UTO" else c.values)
                           for k, c in first.coords.items() if c.dims == (schema.SAMPLE,) and k != schema.SAMPLE})
    return FeatureTable(name=name, dataset=dataset, X=np.concatenate(parts, axis=1), labels=labels,
                        families=families, samples=store.strings(first[schema.SAMPLE].values),
                        y=store.strings(first[schema.LABEL].values), groups=store.strings(first[schema.GROUP].values),
                        coords=coords, identity=identity)


def select_domain(coords: pd.DataFrame, spec: DomainSpec) -> np.ndarray:
    """Boolean mask of the samples in domain ``spec`` (its ``where`` and ``threshold`` rules)."""
    mask = np.ones(len(coords), bool)
    rules: list[tuple[str, Any]] = list(spec.where.items())
    if spec.threshold is not None:
        rules.append((spec.threshold.coord, spec.threshold))
    for coord, rule in rules:
        if coord not in coords:
            raise StudyError(f"domain {spec.label()!r}: dataset {spec.dataset!r} has no coordinate {coord!r}; "
                             f"coordinates: {sorted(coords.columns)}")
        values = coords[coord].to_numpy()
        numeric = values.dtype.kind in "iuf"
        if isinstance(rule, (list, str, int, float, bool)):
            wanted = rule if isinstance(rule, list) else [rule]
            if numeric:
                mask &= np.isin(values.astype(float), [float(w) for w in wanted])
            else:
                mask &= np.isin(values.astype(str), [str(w) for w in wanted])
        else:
            if not numeric:
                raise StudyError(f"domain {spec.label()!r}: threshold needs a numeric coordinate; {coord!r} holds "
                                 f"{values.dtype} values")
            mask &= values < rule.below if rule.below is not None else values >= rule.at_least
    return mask
