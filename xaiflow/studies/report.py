"""Where study results go: the workspace group, tidy CSV tables and figures on disk.

* ``studies/<dataset>/<name>`` in the workspace: the study's ``xarray.Dataset``, written
  with :func:`xaiflow.store.write_group` (a re-run replaces it) and then marked ``status: complete``;
  a study over several datasets is stored under ``<dataset1>+<dataset2>``.
* ``<out>/<dataset>_<name>_*.csv``: tidy tables (one row per observation), for pandas or a
  spreadsheet;
* ``<out>/<dataset>_<name>.png``: the figure.

``out`` defaults to ``<workspace parent>/<workspace stem>.figures/``.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import pandas as pd
import xarray as xr

from xaiflow import schema, store


@dataclass
class StudyOutput:
    """A finished study: its dataset, where it was stored, its tables and files."""

    name: str
    group: str
    ds: xr.Dataset
    headline: pd.DataFrame
    tables: dict[str, pd.DataFrame] = field(default_factory=dict)
    files: list[Path] = field(default_factory=list)

    @property
    def notes(self) -> list[str]:
        return list(self.ds.attrs.get("notes", []))


def default_out_dir(workspace: str | os.PathLike[str]) -> Path:
    """``ws.zarr`` -> ``ws.figures/`` beside it."""
    return Path(store.local_sibling(workspace, ".figures"))


def store_study(workspace: str | os.PathLike[str], dataset: str, name: str, ds: xr.Dataset) -> str:
    """Write ``studies/<dataset>/<name>`` (replacing it) and mark it complete; returns the group path."""
    group = schema.group_path(schema.STUDIES, dataset, name)
    ds = ds.copy()
    ds.attrs.update({schema.ATTR_SCHEMA_VERSION: schema.SCHEMA_VERSION, schema.ATTR_STATUS: schema.STATUS_INCOMPLETE})
    store.write_group(workspace, group, ds)
    store.set_attrs(workspace, group, **{schema.ATTR_STATUS: schema.STATUS_COMPLETE})
    return group


def publish(workspace: str | os.PathLike[str], dataset: str, name: str, ds: xr.Dataset, headline: pd.DataFrame,
            tables: dict[str, pd.DataFrame], figure: Callable[[xr.Dataset, Path], Path],
            out_dir: str | os.PathLike[str] | None = None) -> StudyOutput:
    """Store the study, write its CSV tables and figure; returns what was written."""
    out = Path(out_dir) if out_dir is not None else default_out_dir(workspace)
    out.mkdir(parents=True, exist_ok=True)
    group = store_study(workspace, dataset, name, ds)
    files = []
    for suffix, table in tables.items():
        path = out / f"{dataset}_{name}_{suffix}.csv"
        table.to_csv(path, index=False)
        files.append(path)
    files.append(figure(ds, out / f"{dataset}_{name}.png"))
    return StudyOutput(name, group, ds, headline, tables, files)
