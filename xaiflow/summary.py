"""Plain-data summaries of a workspace, for ``xaiflow info`` and flow artifacts."""

from __future__ import annotations

import os
from dataclasses import dataclass, field

import pandas as pd

from xaiflow import schema, store


@dataclass
class GroupSummary:
    path: str
    shape: str
    status: str
    notes: list[str] = field(default_factory=list)
    table: pd.DataFrame | None = None


def split_table(ds) -> pd.DataFrame:
    """Images per class and split, with specimen counts, classes in their declared order."""
    df = pd.DataFrame({"label": ds[schema.LABEL].values, "split": ds[schema.SPLIT].values,
                       "group": ds[schema.GROUP].values})
    counts = pd.crosstab(df["label"], df["split"]).reindex(columns=[s for s in schema.SPLITS if s in set(df["split"])])
    counts = counts.reindex(ds.attrs.get(schema.ATTR_CLASSES) or counts.index, fill_value=0)
    counts["total"] = counts.sum(axis=1)
    counts["specimens"] = df.groupby("label")["group"].nunique().reindex(counts.index, fill_value=0)
    counts.index.name = "class"
    return counts


def markdown_table(df: pd.DataFrame) -> str:
    """A DataFrame as a GitHub-flavoured Markdown table (for Prefect artifacts and reports)."""
    header = [str(df.index.name or "")] + [str(c) for c in df.columns]
    rows = [[str(i)] + [str(v) for v in row] for i, row in zip(df.index, df.itertuples(index=False))]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return "\n".join(lines + ["| " + " | ".join(r) + " |" for r in rows])


def describe_workspace(workspace: str | os.PathLike[str]) -> list[GroupSummary]:
    out = []
    for path in store.list_groups(workspace):
        ds = store.open_group(workspace, path, check_complete=False)
        main = [v for v in ds.data_vars if v not in (schema.DONE, schema.LEGACY_CHUNK_DONE)]
        shape = ", ".join(f"{v}{tuple(ds[v].shape)} {ds[v].dtype}" for v in main)
        summary = GroupSummary(path, shape, str(ds.attrs.get(schema.ATTR_STATUS, "")))
        if path.startswith(schema.IMAGES + "/") and schema.SPLIT in ds.coords:
            n_groups = len(set(ds[schema.GROUP].values.tolist()))
            summary.notes.append(f"{ds.sizes[schema.SAMPLE]} samples, {len(ds.attrs.get(schema.ATTR_CLASSES, []))} "
                                 f"classes, {n_groups} specimens")
            summary.table = split_table(ds)
            skipped = ds.attrs.get(schema.ATTR_SKIPPED) or []
            if skipped:
                summary.notes.append(f"[yellow]{len(skipped)} skipped[/]: " + "; ".join(
                    f"{s['file']}: {s['reason']}" for s in skipped[:5]) + (" ..." if len(skipped) > 5 else ""))
        if path.startswith(schema.MASKS + "/"):
            summary.notes.append(f"mask classes: {ds.attrs.get(schema.ATTR_MASK_CLASSES)}")
        out.append(summary)
    return out
