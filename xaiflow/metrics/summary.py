"""Headline numbers of a metrics group: mean ± std over samples per attribution method and metric.

The flows' result tables, the CLI and the report read the same numbers from here, so a
"mean" means the same thing everywhere: the mean over samples whose value is done and
finite (NaN marks maps that are not computed or a metric that is undefined for a sample).
"""

from __future__ import annotations

import os
from typing import Any

import numpy as np

from xaiflow import store
from xaiflow.metrics.runner import DONE, METHOD, METRIC, VALUE, metrics_group


def metric_summary(workspace: str | os.PathLike[str], dataset: str, model_id: str) -> list[dict[str, Any]]:
    """One row per (method, metric): ``method, metric, mean, std, n, higher_is_better``."""
    group = metrics_group(dataset, model_id)
    ds = store.open_group(workspace, group, check_complete=False)
    outputs = ds.attrs.get("outputs", {})
    values = np.where(np.asarray(ds[DONE].values, bool), np.asarray(ds[VALUE].values, np.float64), np.nan)
    rows = []
    for mi, method in enumerate(store.strings(ds[METHOD].values)):
        for ki, metric in enumerate(store.strings(ds[METRIC].values)):
            v = values[:, mi, ki]
            v = v[np.isfinite(v)]
            rows.append({"method": str(method), "metric": str(metric),
                         "mean": float(v.mean()) if len(v) else float("nan"),
                         "std": float(v.std(ddof=1)) if len(v) > 1 else float("nan"), "n": int(len(v)),
                         "higher_is_better": outputs.get(str(metric), {}).get("higher_is_better")})
    return rows
