"""Generalization across acquisition domains: train on each domain, test on every domain.

Ling et al. (2017) asked whether a model trained on micrographs of one acquisition setting
still works on another. Here a domain is a dataset or a rule-selected part of one (e.g.
high vs low magnification, SE vs BSE detector, a synthetic acquisition condition; see
:mod:`xaiflow.studies.config`). The output is a matrix per model (feature set x classifier,
or a CNN): rows = training domain, columns = test domain, cells = balanced accuracy.

Protocol (feature classifiers): the specimens of *all* domains are split together into
``k`` stratified, grouped folds (a specimen imaged in two domains, or the same synthetic
specimen under two conditions, lands in one fold). For every fold and training domain A,
the classifier is fitted on A's samples of the training specimens and scored on every
domain B's samples of the held-out specimens. The diagonal is thus grouped CV within the
domain, and no cell ever tests on a specimen that was trained on. Cells are mean and
standard deviation over the folds. Specimen ids are compared across datasets: give
datasets of different specimens distinct ids.

CNNs (``cnn_models: {domain: [model ids]}``): each model trained on domain A is run on
every domain (stored ``predictions/<dataset>/<model_id>`` are reused when they come from
the same checkpoint, otherwise written with :func:`xaiflow.predict.predict_dataset`) and
scored on the samples whose specimen was not in its training or validation split. Several
models per domain (seeds, folds) give the spread.

Classes: ``classes: shared`` (default) keeps the classes that every domain has with at
least two specimens, so that the matrix compares like with like; what is dropped is listed
in the ``notes`` attribute.
"""

from __future__ import annotations

import json
import os
import warnings
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Iterator

import numpy as np
import pandas as pd
import xarray as xr

from xaiflow import schema, store
from xaiflow.runtime import ProgressFn
from xaiflow.scores import balanced_accuracy
from xaiflow.studies.classify import fit_predict, grouped_folds, run_study_tasks, specimens_per_class
from xaiflow.studies.config import CVConfig, DomainSpec, GeneralizationConfig
from xaiflow.studies.data import FeatureTable, StudyError, load_feature_table, resolve_feature_sets, select_domain

CNN_ROW = "cnn"


@dataclass
class _Pool:
    """All samples of all domains, stacked (rows of the study)."""

    domain: np.ndarray  # domain index per row
    dataset: np.ndarray
    index: np.ndarray  # row in its dataset
    y: np.ndarray
    groups: np.ndarray


def _dataset_frame(workspace: str, dataset: str) -> pd.DataFrame:
    """Per-sample coordinates of ``images/<dataset>`` (sample, label, group, metadata...)."""
    try:
        ds = store.open_group(workspace, schema.group_path(schema.IMAGES, dataset))
    except store.WorkspaceError as e:
        raise StudyError(str(e)) from None
    frame = {schema.SAMPLE: store.strings(ds[schema.SAMPLE].values)}
    for k, c in ds.coords.items():
        if c.dims == (schema.SAMPLE,) and k != schema.SAMPLE:
            frame[k] = store.strings(c.values) if np.asarray(c.values).dtype.kind in "UTO" else np.asarray(c.values)
    return pd.DataFrame(frame)


def _domain_masks(frames: dict[str, pd.DataFrame], domains: list[DomainSpec]) -> list[np.ndarray]:
    masks = []
    for spec in domains:
        mask = select_domain(frames[spec.dataset], spec)
        labels = frames[spec.dataset][schema.LABEL].to_numpy()[mask]
        if not mask.any():
            raise StudyError(f"domain {spec.label()!r} selects no sample of dataset {spec.dataset!r}; check its rule")
        present = sorted(set(labels.tolist()))
        if len(present) < 2:
            raise StudyError(f"domain {spec.label()!r} has a single class ({present[0]!r}, {int(mask.sum())} "
                             "samples): a classifier trained on it cannot discriminate; choose another rule")
        masks.append(mask)
    for i, a in enumerate(domains):
        for j in range(i + 1, len(domains)):
            b = domains[j]
            if a.dataset == b.dataset and (masks[i] & masks[j]).any():
                raise StudyError(f"domains {a.label()!r} and {b.label()!r} share {int((masks[i] & masks[j]).sum())} "
                                 f"samples of dataset {a.dataset!r}; make their rules disjoint")
    return masks


def _restrict_classes(pool: _Pool, names: list[str], mode: str) -> tuple[np.ndarray, list[str]]:
    """Rows kept by the class rule, and the notes saying what was dropped."""
    if mode == "all":
        return np.ones(len(pool.y), bool), []
    per_domain = [specimens_per_class(pool.y[pool.domain == d], pool.groups[pool.domain == d])
                  for d in range(len(names))]
    all_classes = sorted(set().union(*per_domain))
    shared = [c for c in all_classes if all(p.get(c, 0) >= 2 for p in per_domain)]
    if len(shared) < 2:
        counts = "; ".join(f"{n}: {p}" for n, p in zip(names, per_domain))
        raise StudyError("the domains share fewer than two classes with >= 2 specimens each (classes: shared); "
                         f"specimens per class: {counts}")
    notes = [f"class {c!r} left out (classes: shared): specimens per domain "
             f"{ {n: p.get(c, 0) for n, p in zip(names, per_domain)} }" for c in all_classes if c not in shared]
    return np.isin(pool.y, shared), notes


def _check_comparable(tables: dict[str, dict[str, FeatureTable]], set_name: str) -> None:
    datasets = list(tables)
    ref = tables[datasets[0]][set_name]
    for d in datasets[1:]:
        other = tables[d][set_name]
        if other.identity != ref.identity or other.labels != ref.labels:
            raise StudyError(f"feature set {set_name!r} was extracted with other settings for dataset {d!r} than "
                             f"for {datasets[0]!r} ({other.identity} vs {ref.identity}); re-extract with one config")


def _feature_cells(item: tuple[str, str, int, int], X: dict[str, np.ndarray], y: np.ndarray, domain: np.ndarray,
                   splits: list[tuple[np.ndarray, np.ndarray]], n_domains: int, seed: int) -> list[tuple[float, int]]:
    """One Dask task: fit once on (fold, train domain), score every test domain."""
    name, classifier, fold, a = item
    train, test = splits[fold]
    train = train[domain[train] == a]
    if len(np.unique(y[train])) < 2:
        return [(float("nan"), 0)] * n_domains
    pred = fit_predict(classifier, seed, X[name][train], y[train], X[name][test])
    out = []
    for b in range(n_domains):
        sel = domain[test] == b
        out.append((balanced_accuracy(y[test][sel], pred[sel]), int(sel.sum())) if sel.any() else (float("nan"), 0))
    return out


def _model_training_specimens(workspace: str, manifest_config: dict[str, Any]) -> set[str]:
    """Specimens a CNN saw in training or validation (its dataset's splits, re-folded if it used folds)."""
    train = manifest_config.get("train", {})
    dataset = train.get("dataset")
    frame = _dataset_frame(workspace, dataset)
    split = frame[schema.SPLIT].to_numpy().astype(str)
    groups = frame[schema.GROUP].to_numpy().astype(str)
    if train.get("folds"):
        from xaiflow.training import fold_split

        split = fold_split(split, groups, frame[schema.LABEL_INDEX].to_numpy().astype(np.int64), train["folds"],
                           train["fold"], train.get("seed", 0))
    return set(groups[split != "test"].tolist())


def _cnn_predictions(workspace: str, model: Any, dataset: str, client: Any) -> np.ndarray:
    """Predicted class indices of ``model`` (a catalog entry) on every sample of ``dataset``: stored
    ones made by this checkpoint from these images, else predicted now (and stored)."""
    from xaiflow.predict import PredictionError, current_predictions, predict_dataset

    group = current_predictions(workspace, model, dataset)
    if group is None:
        try:
            group = predict_dataset(workspace, model.model_id, dataset, client=client)
        except PredictionError as e:
            raise StudyError(f"cnn_models: {e}") from None
    return store.open_group(workspace, group)["predicted"].values


def _cnn_cells(workspace: str, cfg: GeneralizationConfig, names: list[str], pool: _Pool, keep: np.ndarray,
               client: Any) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """(train domain, test domain, replicate) accuracies and test counts of the configured CNNs."""
    from xaiflow.models.catalog import ModelCatalog, ModelNotFoundError

    n_rep = max(len(v) for v in cfg.cnn_models.values())
    acc = np.full((len(names), len(names), n_rep), np.nan)
    counts = np.zeros((len(names), len(names), n_rep), np.int64)
    notes = []
    for domain_name, model_ids in cfg.cnn_models.items():
        a = names.index(domain_name)
        for r, model_id in enumerate(model_ids):
            try:
                entry = ModelCatalog(workspace).get(model_id)
            except ModelNotFoundError as e:
                raise StudyError(f"cnn_models.{domain_name}: {e}") from None
            model_id = entry.model_id
            classes = list(entry.metrics["classes"])
            seen = _model_training_specimens(workspace, entry.manifest.config)
            preds: dict[str, np.ndarray] = {}
            for b in range(len(names)):
                rows = np.flatnonzero((pool.domain == b) & keep & ~np.isin(pool.groups, list(seen)))
                if not len(rows):
                    continue
                dataset = str(pool.dataset[rows[0]])
                if dataset not in preds:
                    preds[dataset] = _cnn_predictions(workspace, entry, dataset, client)
                index = preds[dataset][pool.index[rows]].astype(np.int64)
                predicted = np.array(classes, dtype=object)[index].astype(str)
                acc[a, b, r] = balanced_accuracy(pool.y[rows], predicted)
                counts[a, b, r] = len(rows)
            notes.append(f"cnn {model_id} (trained on {domain_name!r}): scored on specimens outside its "
                         f"train/val splits ({len(seen)} specimens excluded)")
    return acc, counts, notes


def run_generalization(workspace: str | os.PathLike[str], cfg: GeneralizationConfig, cv: CVConfig,
                       defined_sets: dict[str, list[str]] | None = None, *, client: Any = None,
                       progress: ProgressFn | None = None) -> xr.Dataset:
    """The generalization matrix (see the module docstring) as an ``xarray.Dataset``.

    ``balanced_accuracy(model, train_domain, test_domain, replicate)`` (replicate = CV fold
    for feature classifiers, model for CNNs), ``mean``/``std`` over replicates and
    ``n_test``; coords name each model's feature set and classifier and each domain's
    dataset, rule and size.
    """
    workspace = str(workspace)
    defined_sets = defined_sets or {}
    names = [d.label() for d in cfg.domains]
    datasets = list(dict.fromkeys(d.dataset for d in cfg.domains))
    frames = {d: _dataset_frame(workspace, d) for d in datasets}
    masks = _domain_masks(frames, cfg.domains)

    rows = [(i, spec.dataset, np.flatnonzero(m)) for i, (spec, m) in enumerate(zip(cfg.domains, masks))]
    pool = _Pool(domain=np.concatenate([np.full(len(r), i) for i, _, r in rows]),
                 dataset=np.concatenate([np.full(len(r), d, dtype=object) for _, d, r in rows]),
                 index=np.concatenate([r for _, _, r in rows]),
                 y=np.concatenate([frames[d][schema.LABEL].to_numpy().astype(str)[r] for _, d, r in rows]),
                 groups=np.concatenate([frames[d][schema.GROUP].to_numpy().astype(str)[r] for _, d, r in rows]))
    keep, notes = _restrict_classes(pool, names, cfg.classes)

    set_names: list[str] = []
    if cfg.feature_sets != []:
        try:
            sets = {d: resolve_feature_sets(workspace, d, defined_sets, cfg.feature_sets) for d in datasets}
        except StudyError:
            if cfg.feature_sets is not None or not cfg.cnn_models:
                raise
            sets = {}
        if sets:
            set_names = list(sets[datasets[0]])
            for d in datasets[1:]:
                if list(sets[d]) != set_names:
                    raise StudyError(f"datasets {datasets[0]!r} and {d!r} have different feature sets "
                                     f"({set_names} vs {list(sets[d])}); name them with generalization.feature_sets")
    classifiers = cfg.classifiers or cv.classifiers
    model_rows = [(s, c) for s in set_names for c in classifiers]
    if cfg.cnn_models:
        model_rows.append((CNN_ROW, CNN_ROW))
    if not model_rows:
        raise StudyError("generalization: nothing to evaluate (no feature sets and no cnn_models)")

    folds = grouped_folds(pool.y[keep], pool.groups[keep], cv, where="generalization (all domains)")
    kept_rows = np.flatnonzero(keep)
    splits = [(kept_rows[tr], kept_rows[te]) for tr, te in folds.splits]
    keep &= np.isin(pool.y, folds.classes)
    notes += folds.notes

    n_dom = len(names)
    n_rep = folds.n_splits
    if cfg.cnn_models:
        n_rep = max(n_rep, max(len(v) for v in cfg.cnn_models.values()))
    acc = np.full((len(model_rows), n_dom, n_dom, n_rep), np.nan)
    n_test = np.zeros((len(model_rows), n_dom, n_dom, n_rep), np.int64)
    identities: dict[str, Any] = {}
    if set_names:
        X = {}
        for s in set_names:
            tables = {d: {s: load_feature_table(workspace, d, s, sets[d][s])} for d in datasets}
            _check_comparable(tables, s)
            for d in datasets:
                if not np.array_equal(tables[d][s].samples, frames[d][schema.SAMPLE].to_numpy().astype(str)):
                    raise StudyError(f"features of {s!r} for dataset {d!r} do not match images/{d}; re-extract")
            X[s] = np.stack([tables[str(pool.dataset[i])][s].X[pool.index[i]] for i in range(len(pool.y))]) \
                if len(pool.y) else np.zeros((0, 0))
            identities[s] = tables[datasets[0]][s].identity
        items = [(s, c, f, a) for s, c in model_rows if s != CNN_ROW for f in range(folds.n_splits)
                 for a in range(n_dom)]
        results = run_study_tasks(_feature_cells, items, client=client, progress=progress, stage="generalization",
                                  X=X, y=pool.y, domain=pool.domain, splits=splits, n_domains=n_dom, seed=cv.seed)
        for (s, c, f, a), cells in zip(items, results):
            m = model_rows.index((s, c))
            for b, (score, n) in enumerate(cells):
                acc[m, a, b, f], n_test[m, a, b, f] = score, n
    if cfg.cnn_models:
        cnn_acc, cnn_n, cnn_notes = _cnn_cells(workspace, cfg, names, pool, keep, client)
        acc[-1, :, :, :cnn_acc.shape[2]], n_test[-1, :, :, :cnn_n.shape[2]] = cnn_acc, cnn_n
        notes += cnn_notes

    with _quiet_nan():
        mean, std = np.nanmean(acc, axis=3), np.nanstd(acc, axis=3)
    domain_sizes = [int((keep & (pool.domain == d)).sum()) for d in range(n_dom)]
    domain_specimens = [int(len(np.unique(pool.groups[keep & (pool.domain == d)]))) for d in range(n_dom)]
    model_names = [c if s == CNN_ROW else f"{s}/{c}" for s, c in model_rows]
    return xr.Dataset(
        {"balanced_accuracy": (("model", "train_domain", "test_domain", "replicate"), acc),
         "mean": (("model", "train_domain", "test_domain"), mean),
         "std": (("model", "train_domain", "test_domain"), std),
         "n_test": (("model", "train_domain", "test_domain"), n_test.sum(axis=3))},
        coords={"model": np.array(model_names, object),
                "feature_set": ("model", np.array([s for s, _ in model_rows], object)),
                "classifier": ("model", np.array([c for _, c in model_rows], object)),
                "train_domain": np.array(names, object), "test_domain": np.array(names, object),
                "replicate": np.arange(n_rep),
                "domain_dataset": ("train_domain", np.array([d.dataset for d in cfg.domains], object)),
                "domain_rule": ("train_domain", np.array([json.dumps(d.model_dump(mode="json", exclude={"name"}))
                                                          for d in cfg.domains], object)),
                "domain_samples": ("train_domain", np.array(domain_sizes)),
                "domain_specimens": ("train_domain", np.array(domain_specimens))},
        attrs={"study": "generalization", "classes": folds.classes, "n_splits": folds.n_splits,
               "chance": 1.0 / len(folds.classes), "notes": notes, "cv": cv.model_dump(mode="json"),
               "config": cfg.model_dump(mode="json"), "feature_sets": identities,
               "protocol": "specimen-grouped folds over all domains: fit on the train domain's training specimens, "
                           "score on each domain's held-out specimens (diagonal = in-domain grouped CV)",
               "citation": "Ling et al. 2017 (generalization across acquisition settings)"},
    )


@contextmanager
def _quiet_nan() -> Iterator[None]:
    """Silence numpy's 'mean of empty slice' for all-NaN cells (they stay NaN, by design)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        yield


def matrix_table(ds: xr.Dataset) -> pd.DataFrame:
    """Tidy matrix: one row per (model, train domain, test domain)."""
    rows = []
    for m in ds.model.values:
        for a in ds.train_domain.values:
            for b in ds.test_domain.values:
                cell = ds.sel(model=m, train_domain=a, test_domain=b)
                reps = cell.balanced_accuracy.values
                rows.append({"model": str(m), "train_domain": str(a), "test_domain": str(b), "in_domain": a == b,
                             "balanced_accuracy_mean": float(cell["mean"]), "balanced_accuracy_std": float(cell["std"]),
                             "replicates": int(np.isfinite(reps).sum()), "n_test": int(cell.n_test)})
    return pd.DataFrame(rows)


def summary_table(ds: xr.Dataset) -> pd.DataFrame:
    """Per model: mean in-domain (diagonal) and cross-domain (off-diagonal) accuracy, and the gap."""
    rows = []
    diag = np.eye(ds.sizes["train_domain"], dtype=bool)
    for m in ds.model.values:
        mean = ds["mean"].sel(model=m).values
        with _quiet_nan():
            inside, across = float(np.nanmean(mean[diag])), float(np.nanmean(mean[~diag]))
        rows.append({"model": str(m), "in_domain": inside, "cross_domain": across, "gap": inside - across})
    return pd.DataFrame(rows)
