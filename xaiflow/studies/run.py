"""The studies as the CLI and the flows run them: config sections in, stored results out.

* :func:`classification_study` - grouped-CV balanced accuracy of every feature set and
  classifier (``studies/<dataset>/classification``), run by ``xaiflow features``;
* :func:`generalization_study` - the train-on-A / test-on-B matrix;
* :func:`reduction_study` - accuracy against the number of features kept, and k95.

Each returns a :class:`~xaiflow.studies.report.StudyOutput` (the dataset, the headline
table, the CSV and figure paths).
"""

from __future__ import annotations

import os
from typing import Any

from xaiflow.features.config import FeaturesConfig
from xaiflow.runtime import ProgressFn
from xaiflow.studies import classify, figures, generalization, reduction
from xaiflow.studies.config import StudyConfig
from xaiflow.studies.data import (FeatureTable, StudyError, extractor_keys, load_feature_table,
                                  resolve_feature_sets)
from xaiflow.studies.report import StudyOutput, publish

CLASSIFICATION = "classification"


def _dataset(features: FeaturesConfig | None, studies: StudyConfig | None, explicit: str | None = None) -> str:
    dataset = explicit or (studies.dataset if studies else None) or (features.datasets[0] if features else None)
    if dataset is None:
        raise StudyError("no dataset: set studies.dataset (or features.dataset) in the config")
    return dataset


def _cnn_leak_notes(workspace: str | os.PathLike[str], dataset: str, tables: list[FeatureTable]) -> list[str]:
    """Warn when CNN features come from a model trained on this dataset's train/val specimens:
    those specimens are in the CV test folds too, so the scores are optimistic."""
    from xaiflow.models.catalog import ModelCatalog

    catalog = ModelCatalog(workspace)
    users: dict[tuple[str, str], list[str]] = {}
    for t in tables:
        for key, ident in t.identity.items():
            model_id = ident.get("model_id")
            if model_id in catalog.ids() and catalog.get(model_id).dataset == dataset:
                users.setdefault((key, model_id), []).append(t.name)
    return [f"features {key!r} (in {', '.join(sets)}) come from {model_id}, trained on {dataset!r} (its train/val "
            "specimens): their grouped-CV scores are optimistic, those specimens are not held out from the "
            "feature extractor" for (key, model_id), sets in users.items()]


def classification_study(workspace: str | os.PathLike[str], features: FeaturesConfig | None,
                         studies: StudyConfig | None, *, dataset: str | None = None,
                         out_dir: str | os.PathLike[str] | None = None, client: Any = None,
                         progress: ProgressFn | None = None) -> StudyOutput:
    """Every defined feature set and every single extractor group of the dataset, every classifier.

    ``dataset`` defaults to ``studies.dataset``, then the first dataset of ``features``.
    """
    studies = studies or StudyConfig()
    dataset = _dataset(features, studies, dataset)
    defined = studies.feature_sets
    names = list(defined) + [k for k in extractor_keys(workspace, dataset) if k not in defined]
    sets = resolve_feature_sets(workspace, dataset, studies.feature_sets, names)
    tables = [load_feature_table(workspace, dataset, n, keys) for n, keys in sets.items()]
    ds = classify.run_classification(tables, studies.cv, client=client, progress=progress)
    ds.attrs["notes"] = ds.attrs["notes"] + _cnn_leak_notes(workspace, dataset, tables)
    headline = classify.classification_table(ds)
    return publish(workspace, dataset, CLASSIFICATION, ds, headline,
                   {"summary": headline, "folds": classify.fold_table(ds)}, figures.classification_figure, out_dir)


def generalization_study(workspace: str | os.PathLike[str], studies: StudyConfig | None, *,
                         out_dir: str | os.PathLike[str] | None = None, client: Any = None,
                         progress: ProgressFn | None = None) -> StudyOutput:
    """The generalization matrix of ``studies.generalization`` (stored under the domains' datasets)."""
    if studies is None or studies.generalization is None:
        raise StudyError("the config has no studies.generalization section (domains to train and test on)")
    cfg = studies.generalization
    ds = generalization.run_generalization(workspace, cfg, studies.cv, studies.feature_sets, client=client,
                                           progress=progress)
    dataset = "+".join(dict.fromkeys(d.dataset for d in cfg.domains))
    headline = generalization.summary_table(ds)
    return publish(workspace, dataset, cfg.name, ds, headline,
                   {"summary": headline, "matrix": generalization.matrix_table(ds)},
                   figures.generalization_figure, out_dir)


def reduction_study(workspace: str | os.PathLike[str], features: FeaturesConfig | None, studies: StudyConfig | None,
                    *, out_dir: str | os.PathLike[str] | None = None, client: Any = None,
                    progress: ProgressFn | None = None) -> StudyOutput:
    """Accuracy against k for ``studies.reduction``, with the k reaching its target."""
    if studies is None or studies.reduction is None:
        raise StudyError("the config has no studies.reduction section")
    cfg = studies.reduction
    dataset = _dataset(features, studies, cfg.dataset)
    sets = resolve_feature_sets(workspace, dataset, studies.feature_sets, cfg.feature_sets)
    tables = [load_feature_table(workspace, dataset, n, keys) for n, keys in sets.items()]
    ds = reduction.run_reduction(tables, cfg, studies.cv, client=client, progress=progress)
    headline = reduction.k_table(ds)
    return publish(workspace, dataset, cfg.name, ds, headline,
                   {"summary": headline, "curve": reduction.curve_table(ds), "features": reduction.survivor_table(ds),
                    "families": reduction.family_table(ds)}, figures.reduction_figure, out_dir)
