"""Feature reduction: accuracy against the number of features kept (Ling et al. 2017, sec. 4).

How many of the (thousands of) CNN or texture features does a classifier need? For each
feature set, reduction method and ``k``, a classifier is trained on ``k`` features inside
specimen-grouped CV folds; the reduction itself is fitted on the training fold only (no
peeking at the test specimens). Methods are an extension point (:data:`REDUCERS`):

* ``pca``: the first k principal components of the standardized features;
* ``rf_importance``: the k features a random forest ranks highest (impurity importance);
* ``mutual_information``: the k features with the highest mutual information with the
  class (``sklearn.feature_selection.mutual_info_classif``).

Reported: mean and standard deviation over folds of the balanced accuracy for every k, the
full-feature accuracy (same classifier and folds, all original features), the smallest k
reaching ``target`` (default 95 %) of it (``k95``), and which original features survive at
that k: for selections, how often each feature is selected across folds; for PCA, each
feature's share of the squared loadings of the kept components. Shares are also summed per
feature family (CNN layer and pooling, texture statistic).
"""

from __future__ import annotations

import warnings
from abc import abstractmethod
from typing import Any

import numpy as np
import pandas as pd
import xarray as xr
from pydantic import Field, PositiveInt

from xaiflow.plugins import Plugin, PluginParams
from xaiflow.registry import Registry
from xaiflow.runtime import ProgressFn
from xaiflow.scores import balanced_accuracy
from xaiflow.studies.classify import fit_predict, grouped_folds, run_study_tasks
from xaiflow.studies.config import CVConfig, ReductionConfig
from xaiflow.studies.data import FeatureTable, StudyError

FULL = "all_features"


class Reducer(Plugin):
    """Fit on training rows, then keep k features (or components); a :class:`~xaiflow.plugins.Plugin`."""

    family = "feature reduction method"
    error = StudyError

    @abstractmethod
    def fit(self, X: np.ndarray, y: np.ndarray, seed: int) -> "Reducer":
        """Learn the reduction from training rows only."""

    @abstractmethod
    def max_k(self) -> int:
        """The largest k this fitted reducer can give."""

    @abstractmethod
    def transform(self, X: np.ndarray, k: int) -> np.ndarray:
        """(N, F) -> (N, k)."""

    @abstractmethod
    def weights(self, k: int) -> np.ndarray:
        """(F,) share of each original feature in what is kept at k (sums to 1)."""


REDUCERS: Registry[type[Reducer]] = Registry("feature reduction method")


class ImportanceParams(PluginParams):
    n_estimators: PositiveInt = Field(200, description="trees of the forest whose impurity importance ranks")


class NeighborsParams(PluginParams):
    n_neighbors: PositiveInt = Field(3, description="neighbours of the k-NN mutual information estimate")


class _Ranking(Reducer):
    """Keep the k highest-scoring original features; subclasses define the scores."""

    @abstractmethod
    def _scores(self, X: np.ndarray, y: np.ndarray, seed: int) -> np.ndarray:
        """(F,) higher = keep first."""

    def fit(self, X: np.ndarray, y: np.ndarray, seed: int) -> "_Ranking":
        scores = self._scores(X, y, seed)
        self.order = np.lexsort((np.arange(len(scores)), -scores))  # ties: lower index first
        return self

    def max_k(self) -> int:
        return len(self.order)

    def transform(self, X: np.ndarray, k: int) -> np.ndarray:
        return X[:, self.order[:k]]

    def weights(self, k: int) -> np.ndarray:
        w = np.zeros(len(self.order))
        w[self.order[:k]] = 1.0 / k
        return w


@REDUCERS.register("rf_importance")
class RandomForestImportance(_Ranking):
    """Rank by random-forest impurity importance (as Ling et al. 2017 inspected their forests)."""

    name = "rf_importance"
    Params = ImportanceParams
    params: ImportanceParams

    def _scores(self, X: np.ndarray, y: np.ndarray, seed: int) -> np.ndarray:
        from sklearn.ensemble import RandomForestClassifier

        rf = RandomForestClassifier(n_estimators=self.params.n_estimators, class_weight="balanced", n_jobs=1,
                                    random_state=seed)
        return rf.fit(X, y).feature_importances_


@REDUCERS.register("mutual_information")
class MutualInformation(_Ranking):
    """Rank by mutual information between each feature and the class (k-NN estimate)."""

    name = "mutual_information"
    Params = NeighborsParams
    params: NeighborsParams

    def _scores(self, X: np.ndarray, y: np.ndarray, seed: int) -> np.ndarray:
        from sklearn.feature_selection import mutual_info_classif

        return mutual_info_classif(X, y, n_neighbors=self.params.n_neighbors, random_state=seed)


@REDUCERS.register("pca")
class PrincipalComponents(Reducer):
    """The first k principal components of the standardized features."""

    name = "pca"

    def fit(self, X: np.ndarray, y: np.ndarray, seed: int) -> "PrincipalComponents":
        from sklearn.decomposition import PCA
        from sklearn.preprocessing import StandardScaler

        self.scaler = StandardScaler().fit(X)
        self.pca = PCA(n_components=min(X.shape), svd_solver="full", random_state=seed).fit(self.scaler.transform(X))
        return self

    def max_k(self) -> int:
        return int(self.pca.n_components_)

    def transform(self, X: np.ndarray, k: int) -> np.ndarray:
        return self.pca.transform(self.scaler.transform(X))[:, :k]

    def weights(self, k: int) -> np.ndarray:
        return (self.pca.components_[:k] ** 2).sum(axis=0) / k


def default_ks(n_features: int, n: int = 12) -> list[int]:
    """About ``n`` values from 1 to ``n_features`` on a log scale, ``n_features`` included."""
    return sorted({int(v) for v in np.unique(np.round(np.geomspace(1, n_features, n)))} | {n_features})


def _reduction_task(item: tuple[str, str, int], X: dict[str, np.ndarray], y: np.ndarray,
                    splits: list[tuple[np.ndarray, np.ndarray]], ks: dict[str, list[int]], classifier: str,
                    seed: int) -> tuple[list[float], np.ndarray]:
    """One Dask task: one feature set, method and fold; accuracy and feature weights for every k."""
    name, method, fold = item
    train, test = splits[fold]
    x = X[name]
    if method == FULL:
        return [balanced_accuracy(y[test], fit_predict(classifier, seed, x[train], y[train], x[test]))], np.zeros(0)
    reducer = REDUCERS.get(method)().fit(x[train], y[train], seed)
    scores, weights = [], []
    for k in ks[name]:
        if k > reducer.max_k():
            scores.append(float("nan"))
            weights.append(np.full(x.shape[1], np.nan))
            continue
        pred = fit_predict(classifier, seed, reducer.transform(x[train], k), y[train], reducer.transform(x[test], k))
        scores.append(balanced_accuracy(y[test], pred))
        weights.append(reducer.weights(k))
    return scores, np.stack(weights)


def _first_reaching(ks: list[int], mean: np.ndarray, goal: float) -> int | None:
    for k, m in zip(ks, mean):
        if np.isfinite(m) and m >= goal:
            return int(k)
    return None


def run_reduction(tables: list[FeatureTable], cfg: ReductionConfig, cv: CVConfig, *, client: Any = None,
                  progress: ProgressFn | None = None) -> xr.Dataset:
    """The reduction study (see the module docstring) as an ``xarray.Dataset``.

    ``balanced_accuracy(feature_set, reduction, k, fold)`` (``reduction``: the method) with
    ``mean``/``std`` over folds, ``full_mean``/``full_std(feature_set)``,
    ``k_target(feature_set, reduction)`` (NaN when never reached), and the surviving features
    as a tidy ``survivor`` dimension (feature set, reduction, rank, label, family, weight)
    plus ``family_share`` per family.
    """
    if not tables:
        raise StudyError("reduction: no feature sets")
    first = tables[0]
    folds = grouped_folds(first.y, first.groups, cv, where=f"reduction on {first.dataset!r}")
    ks: dict[str, list[int]] = {}
    notes = list(folds.notes)
    for t in tables:
        f = t.X.shape[1]
        ks[t.name] = default_ks(f) if cfg.ks is None else sorted({min(k, f) for k in cfg.ks} | {f})
        if cfg.ks is not None and max(cfg.ks) > f:
            notes.append(f"feature set {t.name!r} has {f} features: ks above it were clipped to {f}")
    grid = sorted(set().union(*ks.values()))
    methods = list(cfg.methods)
    items = [(t.name, m, f) for t in tables for m in [FULL, *methods] for f in range(folds.n_splits)]
    results = run_study_tasks(_reduction_task, items, client=client, progress=progress, stage="reduction",
                              X={t.name: t.X for t in tables}, y=first.y, splits=folds.splits, ks=ks,
                              classifier=cfg.classifier, seed=cv.seed)
    names = [t.name for t in tables]
    acc = np.full((len(names), len(methods), len(grid), folds.n_splits), np.nan)
    full = np.full((len(names), folds.n_splits), np.nan)
    weights: dict[tuple[int, int], list[np.ndarray]] = {}
    for (name, method, fold), (scores, w) in zip(items, results):
        i = names.index(name)
        if method == FULL:
            full[i, fold] = scores[0]
            continue
        j = methods.index(method)
        for k, s in zip(ks[name], scores):
            acc[i, j, grid.index(k), fold] = s
        weights.setdefault((i, j), [None] * folds.n_splits)[fold] = w  # type: ignore[list-item]
    with warnings.catch_warnings():  # k beyond a set's features or PCA rank: NaN, by design
        warnings.simplefilter("ignore", RuntimeWarning)
        mean, std = np.nanmean(acc, axis=3), np.nanstd(acc, axis=3)
    full_mean, full_std = full.mean(axis=1), full.std(axis=1)

    k_target = np.full((len(names), len(methods)), np.nan)
    survivors: list[dict[str, Any]] = []
    shares: list[dict[str, Any]] = []
    for i, t in enumerate(tables):
        for j, method in enumerate(methods):
            k = _first_reaching(grid, mean[i, j], cfg.target * full_mean[i])
            if k is None:
                notes.append(f"{t.name}/{method}: no k reaches {cfg.target:.0%} of the full-feature accuracy "
                             f"{full_mean[i]:.3f}")
                continue
            k_target[i, j] = k
            w = np.nanmean(np.stack([fw[ks[t.name].index(k)] for fw in weights[(i, j)]]), axis=0)
            w = w / w.sum() if w.sum() > 0 else w
            for rank, f in enumerate(np.argsort(-w, kind="stable")[:min(cfg.top, k if method != "pca" else cfg.top)]):
                survivors.append({"feature_set": t.name, "reduction": method, "rank": rank + 1,
                                  "label": t.labels[f], "family": t.families[f], "weight": float(w[f])})
            fam = pd.Series(w).groupby(np.array(t.families)).sum().sort_values(ascending=False)
            shares += [{"feature_set": t.name, "reduction": method, "family": str(name), "share": float(v)}
                       for name, v in fam.items()]
    surv, share = pd.DataFrame(survivors), pd.DataFrame(shares)

    def column(df: pd.DataFrame, key: str, kind: Any) -> np.ndarray:
        if kind is object:  # plain str (labels read from the store are numpy strings)
            return np.array([str(v) for v in df[key]] if len(df) else [], dtype=object)
        return df[key].to_numpy().astype(kind) if len(df) else np.array([], kind)

    return xr.Dataset(
        {"balanced_accuracy": (("feature_set", "reduction", "k", "fold"), acc),
         "mean": (("feature_set", "reduction", "k"), mean), "std": (("feature_set", "reduction", "k"), std),
         "full_accuracy": (("feature_set", "fold"), full),
         "full_mean": ("feature_set", full_mean), "full_std": ("feature_set", full_std),
         "k_target": (("feature_set", "reduction"), k_target),
         "survivor_weight": ("survivor", column(surv, "weight", float)),
         "family_share": ("family_row", column(share, "share", float))},
        coords={"feature_set": np.array(names, object), "reduction": np.array(methods, object), "k": np.array(grid),
                "fold": np.arange(folds.n_splits),
                "n_features": ("feature_set", np.array([t.X.shape[1] for t in tables])),
                **{f"survivor_{c}": ("survivor", column(surv, c, object if c != "rank" else int))
                   for c in ("feature_set", "reduction", "rank", "label", "family")},
                **{f"share_{c}": ("family_row", column(share, c, object))
                   for c in ("feature_set", "reduction", "family")}},
        attrs={"study": "reduction", "dataset": first.dataset, "target": cfg.target, "classifier": cfg.classifier,
               "n_splits": folds.n_splits, "classes": folds.classes, "chance": 1.0 / len(folds.classes),
               "notes": notes, "cv": cv.model_dump(mode="json"), "config": cfg.model_dump(mode="json"),
               "feature_sets": {t.name: t.identity for t in tables},
               "citation": "Ling et al. 2017 (accuracy against the number of features kept)"},
    )


def curve_table(ds: xr.Dataset) -> pd.DataFrame:
    """Tidy curve: feature_set, reduction (method), k, mean, std (evaluated points only)."""
    df = xr.Dataset({"balanced_accuracy_mean": ds["mean"], "balanced_accuracy_std": ds["std"]}).to_dataframe()
    df = df.reset_index()[["feature_set", "reduction", "k", "balanced_accuracy_mean", "balanced_accuracy_std"]]
    return df[np.isfinite(df["balanced_accuracy_mean"])].reset_index(drop=True)


def k_table(ds: xr.Dataset) -> pd.DataFrame:
    """Headline: per feature set and method, the full accuracy, the k reaching the target and its accuracy."""
    rows = []
    for fs in ds.feature_set.values:
        for m in ds.reduction.values:
            k = float(ds.k_target.sel(feature_set=fs, reduction=m))
            at = ds.sel(feature_set=fs, reduction=m, k=int(k)) if np.isfinite(k) else None
            fam = ds.family_share.where((ds.share_feature_set == fs) & (ds.share_reduction == m), drop=True)
            top = ", ".join(f"{f} {s:.0%}" for f, s in zip(fam.share_family.values[:3], fam.values[:3]))
            rows.append({"feature_set": str(fs), "reduction": str(m),
                         "n_features": int(ds.n_features.sel(feature_set=fs)),
                         "full_mean": float(ds.full_mean.sel(feature_set=fs)),
                         "full_std": float(ds.full_std.sel(feature_set=fs)),
                         f"k{round(100 * ds.attrs['target'])}": int(k) if np.isfinite(k) else None,
                         "mean_at_k": float(at["mean"]) if at is not None else None,
                         "std_at_k": float(at["std"]) if at is not None else None,
                         "top_families": top})
    return pd.DataFrame(rows)


def survivor_table(ds: xr.Dataset) -> pd.DataFrame:
    """Tidy list of the surviving features (rank, label, family, weight) per feature set and method."""
    cols = {c: ds[f"survivor_{c}"].values for c in ("feature_set", "reduction", "rank", "label", "family")}
    return pd.DataFrame({**cols, "weight": ds.survivor_weight.values})


def family_table(ds: xr.Dataset) -> pd.DataFrame:
    cols = {c: ds[f"share_{c}"].values for c in ("feature_set", "reduction", "family")}
    return pd.DataFrame({**cols, "share": ds.family_share.values})
