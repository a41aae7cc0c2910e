"""Classifiers on features with specimen-grouped cross-validation (Ling et al. 2017, sec. 3).

Images of one specimen are near-duplicates (DeCost et al. 2017, UHCS), so every split here
keeps each specimen (the ``group`` coordinate) on one side: scikit-learn's
``StratifiedGroupKFold``. Scores are balanced accuracies (mean recall over the classes
present in the test fold: the classes are imbalanced), reported as mean and standard
deviation over the folds. Classes with too few specimens for the folds are handled by
:func:`grouped_folds` and reported in the output notes.

Classifiers are an extension point: a :class:`Classifier` subclass registered in
:data:`CLASSIFIERS` builds a fresh scikit-learn estimator for a seed. Every estimator is
single-threaded: parallelism comes from Dask tasks (one per feature set, classifier and
fold), not from joblib pools.
"""

from __future__ import annotations

import logging
import warnings
from abc import abstractmethod
from dataclasses import dataclass, field
from typing import Any, Callable, Literal

import numpy as np
import pandas as pd
import xarray as xr
from pydantic import Field, PositiveInt

from xaiflow.plugins import Plugin, PluginParams
from xaiflow.registry import Registry
from xaiflow.runtime import ProgressFn, client_or_default, map_tasks
from xaiflow.scores import balanced_accuracy
from xaiflow.studies.config import CVConfig
from xaiflow.studies.data import FeatureTable, StudyError

log = logging.getLogger("xaiflow")


class Classifier(Plugin):
    """A named recipe for a scikit-learn estimator (a :class:`~xaiflow.plugins.Plugin`: parameters in ``Params``)."""

    family = "classifier"
    error = StudyError

    @abstractmethod
    def build(self, seed: int) -> Any:
        """A new, unfitted estimator with ``fit``/``predict``."""


CLASSIFIERS: Registry[type[Classifier]] = Registry("classifier")


class ForestParams(PluginParams):
    n_estimators: PositiveInt = Field(200, description="trees in the forest")
    max_features: Literal["sqrt", "log2"] | float = Field("sqrt", description="features tried per split")


class RegularizedParams(PluginParams):
    C: float = Field(1.0, gt=0, description="inverse L2 regularization strength")


class SVMParams(PluginParams):
    C: float = Field(0.1, gt=0, description="inverse L2 regularization strength")


@CLASSIFIERS.register("random_forest")
class RandomForest(Classifier):
    """Random forest with class-balanced weights (the classifier of Ling et al. 2017)."""

    name = "random_forest"
    citation = "Breiman 2001, Random forests, Machine Learning 45:5 (doi:10.1023/A:1010933404324)"
    Params = ForestParams
    params: ForestParams

    def build(self, seed: int) -> Any:
        from sklearn.ensemble import RandomForestClassifier

        return RandomForestClassifier(n_estimators=self.params.n_estimators, max_features=self.params.max_features,
                                      class_weight="balanced", n_jobs=1, random_state=seed)


@CLASSIFIERS.register("logistic_regression")
class Logistic(Classifier):
    """Standardized features, L2 logistic regression with class-balanced weights."""

    name = "logistic_regression"
    Params = RegularizedParams
    params: RegularizedParams

    def build(self, seed: int) -> Any:
        from sklearn.linear_model import LogisticRegression
        from sklearn.pipeline import make_pipeline
        from sklearn.preprocessing import StandardScaler

        return make_pipeline(StandardScaler(), LogisticRegression(C=self.params.C, class_weight="balanced",
                                                                  max_iter=3000, random_state=seed))


@CLASSIFIERS.register("linear_svm")
class LinearSVM(Classifier):
    """Standardized features, linear support-vector machine with class-balanced weights."""

    name = "linear_svm"
    Params = SVMParams
    params: SVMParams

    def build(self, seed: int) -> Any:
        from sklearn.pipeline import make_pipeline
        from sklearn.preprocessing import StandardScaler
        from sklearn.svm import LinearSVC

        return make_pipeline(StandardScaler(), LinearSVC(C=self.params.C, class_weight="balanced",
                                                         max_iter=20000, random_state=seed))


def fit_predict(classifier: str, seed: int, X_train: np.ndarray, y_train: np.ndarray,
                X_test: np.ndarray) -> np.ndarray:
    """Fit a fresh registered classifier and predict; convergence warnings are not errors."""
    from sklearn.exceptions import ConvergenceWarning

    estimator = CLASSIFIERS.get(classifier)().build(seed)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        estimator.fit(X_train, y_train)
    return estimator.predict(X_test)


# ------------------------------------------------------------------ folds


@dataclass
class Folds:
    """Specimen-grouped folds over the kept rows of a table (indices into the full table)."""

    splits: list[tuple[np.ndarray, np.ndarray]]
    keep: np.ndarray
    classes: list[str]
    dropped_classes: dict[str, int] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)

    @property
    def n_splits(self) -> int:
        return len(self.splits)


def specimens_per_class(y: np.ndarray, groups: np.ndarray) -> dict[str, int]:
    return {str(c): int(len(np.unique(groups[y == c]))) for c in np.unique(y)}


def grouped_folds(y: np.ndarray, groups: np.ndarray, cv: CVConfig, where: str = "") -> Folds:
    """StratifiedGroupKFold folds; classes with too few specimens per ``cv.small_classes``.

    A class needs two specimens at least (one to train on, one to test on): classes with one
    are dropped. With ``reduce`` the number of folds drops to the smallest specimen count of
    the remaining classes; with ``drop`` classes with fewer specimens than folds are dropped.
    Every change is logged and listed in ``notes``.
    """
    from sklearn.model_selection import StratifiedGroupKFold

    counts = specimens_per_class(y, groups)
    minimum = 2 if cv.small_classes == "reduce" else cv.folds
    dropped = {c: n for c, n in counts.items() if n < minimum}
    kept = sorted(set(counts) - set(dropped))
    prefix = f"{where}: " if where else ""
    notes = [f"{prefix}dropped class {c!r}: {n} specimen(s), fewer than the {minimum} grouped CV needs "
             f"(small_classes={cv.small_classes})" for c, n in sorted(dropped.items())]
    if len(kept) < 2:
        raise StudyError(f"{prefix}specimen-grouped CV needs two classes with >= {minimum} specimens each; "
                         f"specimens per class: {counts}")
    n_splits = min(cv.folds, min(counts[c] for c in kept))
    if n_splits < cv.folds:
        smallest = min(kept, key=lambda c: counts[c])
        notes.append(f"{prefix}folds reduced from {cv.folds} to {n_splits}: class {smallest!r} has "
                     f"{counts[smallest]} specimens (small_classes=reduce)")
    for n in notes:
        log.warning(n)
    keep = np.isin(y, kept)
    rows = np.flatnonzero(keep)
    splitter = StratifiedGroupKFold(n_splits=n_splits, shuffle=True, random_state=cv.seed)
    splits = [(rows[tr], rows[te]) for tr, te in splitter.split(rows, y[rows], groups[rows])]
    for tr, te in splits:
        assert not set(groups[tr]) & set(groups[te]), "a specimen is on both sides of a fold"
    return Folds(splits, keep, kept, dropped, notes)


# ------------------------------------------------------------------ Dask helpers


def run_study_tasks(fn: Callable[..., Any], items: list[Any], *, client: Any, progress: ProgressFn | None,
                    stage: str, **data: Any) -> list[Any]:
    """``map_tasks`` with the (array) arguments in ``data`` sent to the workers once, not per task."""
    with client_or_default(client) as c:
        shared = {k: c.scatter([v], broadcast=True)[0] for k, v in data.items()}
        return map_tasks(fn, items, client=c, progress=progress, stage=stage, **shared)


def _cv_task(item: tuple[str, str, int], tables: dict[str, np.ndarray], y: np.ndarray,
             splits: list[tuple[np.ndarray, np.ndarray]], seed: int) -> np.ndarray:
    name, classifier, fold = item
    train, test = splits[fold]
    return fit_predict(classifier, seed, tables[name][train], y[train], tables[name][test])


# ------------------------------------------------------------------ the classification study


def run_classification(tables: list[FeatureTable], cv: CVConfig, *, classifiers: list[str] | None = None,
                       client: Any = None, progress: ProgressFn | None = None) -> xr.Dataset:
    """Grouped-CV balanced accuracy of every (feature set, classifier); same folds for all.

    Returns ``balanced_accuracy(feature_set, classifier, fold)``, its ``mean``/``std`` over
    folds, the pooled out-of-fold ``confusion(feature_set, classifier, true_class,
    predicted_class)``, ``pooled_balanced_accuracy`` and the notes (dropped classes, folds).
    """
    if not tables:
        raise StudyError("no feature sets to classify")
    classifiers = classifiers or cv.classifiers
    first = tables[0]
    for t in tables[1:]:
        if not np.array_equal(t.samples, first.samples):
            raise StudyError(f"feature sets {first.name!r} and {t.name!r} hold different samples")
    folds = grouped_folds(first.y, first.groups, cv, where=f"dataset {first.dataset!r}")
    items = [(t.name, c, f) for t in tables for c in classifiers for f in range(folds.n_splits)]
    preds = run_study_tasks(_cv_task, items, client=client, progress=progress, stage="cross-validation",
                            tables={t.name: t.X for t in tables}, y=first.y, splits=folds.splits, seed=cv.seed)
    names = [t.name for t in tables]
    classes = folds.classes
    scores = np.full((len(names), len(classifiers), folds.n_splits), np.nan)
    confusion = np.zeros((len(names), len(classifiers), len(classes), len(classes)), np.int64)
    pooled = np.full((len(names), len(classifiers)), np.nan)
    index = {c: i for i, c in enumerate(classes)}
    oof: dict[tuple[int, int], np.ndarray] = {}
    for (name, clf, f), pred in zip(items, preds):
        i, j = names.index(name), classifiers.index(clf)
        test = folds.splits[f][1]
        scores[i, j, f] = balanced_accuracy(first.y[test], pred)
        oof.setdefault((i, j), np.empty(len(first.y), dtype=object))[test] = pred
    rows = np.flatnonzero(folds.keep)
    for (i, j), pred in oof.items():
        pooled[i, j] = balanced_accuracy(first.y[rows], pred[rows].astype(str))
        np.add.at(confusion[i, j], ([index[v] for v in first.y[rows]], [index[v] for v in pred[rows]]), 1)
    ds = xr.Dataset(
        {"balanced_accuracy": (("feature_set", "classifier", "fold"), scores),
         "mean": (("feature_set", "classifier"), np.nanmean(scores, axis=2)),
         "std": (("feature_set", "classifier"), np.nanstd(scores, axis=2)),
         "pooled_balanced_accuracy": (("feature_set", "classifier"), pooled),
         "confusion": (("feature_set", "classifier", "true_class", "predicted_class"), confusion)},
        coords={"feature_set": np.array(names, object), "classifier": np.array(classifiers, object),
                "fold": np.arange(folds.n_splits), "true_class": np.array(classes, object),
                "predicted_class": np.array(classes, object),
                "n_features": ("feature_set", np.array([t.X.shape[1] for t in tables]))},
        attrs={"study": "classification", "dataset": first.dataset, "n_samples": int(folds.keep.sum()),
               "n_specimens": int(len(np.unique(first.groups[folds.keep]))), "n_splits": folds.n_splits,
               "chance": 1.0 / len(classes), "dropped_classes": folds.dropped_classes, "notes": folds.notes,
               "cv": cv.model_dump(mode="json"), "feature_sets": {t.name: t.identity for t in tables},
               "citation": "Ling et al. 2017 (features + random forest, grouped by specimen)"},
    )
    return ds


def classification_table(ds: xr.Dataset) -> pd.DataFrame:
    """Tidy summary: one row per (feature set, classifier) with mean, std and pooled accuracy."""
    rows = []
    for fs in ds.feature_set.values:
        for clf in ds.classifier.values:
            sel = ds.sel(feature_set=fs, classifier=clf)
            rows.append({"feature_set": str(fs), "classifier": str(clf), "n_features": int(sel.n_features),
                         "balanced_accuracy_mean": float(sel["mean"]), "balanced_accuracy_std": float(sel["std"]),
                         "pooled_balanced_accuracy": float(sel.pooled_balanced_accuracy),
                         "folds": int(ds.sizes["fold"]), "chance": float(ds.attrs["chance"])})
    return pd.DataFrame(rows)


def fold_table(ds: xr.Dataset) -> pd.DataFrame:
    """Tidy per-fold scores (feature_set, classifier, fold, balanced_accuracy)."""
    return ds["balanced_accuracy"].to_dataframe().reset_index()[["feature_set", "classifier", "fold",
                                                                  "balanced_accuracy"]]
