"""Prefect artifacts of xaiflow flow runs: result tables, Markdown summaries, progress and figures.

Every flow publishes what a user looks for in the UI through these few helpers, so the
flows stay thin and the artifacts look alike across stages.

Figures: a Prefect image artifact holds a URL, and the UI shows it with an ``<img>`` tag,
which browsers refuse for ``file://`` URLs on an ``http://`` page. So a figure's URL is
``$XAIFLOW_FIGURES_URL/<path relative to $XAIFLOW_FIGURES_ROOT>`` when both are set and
the figure lies under that root: ``deploy/demo.py`` and ``deploy/serve.py --figures-port``
start a small read-only static file server on loopback for the root and set them. Else the
artifact carries the ``file://`` URL (shown as a link the user can open on the machine that
ran the flow), and the Markdown summaries list every figure's path either way.
"""

from __future__ import annotations

import math
import os
import re
from pathlib import Path
from typing import Any, Iterable
from urllib.parse import quote

from prefect.artifacts import (create_image_artifact, create_markdown_artifact, create_progress_artifact,
                               create_table_artifact, update_progress_artifact)

FIGURES_URL = "XAIFLOW_FIGURES_URL"
FIGURES_ROOT = "XAIFLOW_FIGURES_ROOT"


def artifact_key(*parts: str) -> str:
    """A Prefect artifact key (lowercase letters, digits and dashes) from free text."""
    return re.sub(r"-+", "-", re.sub(r"[^a-z0-9-]", "-", "-".join(parts).lower())).strip("-")


def _cell(v: Any) -> Any:
    if isinstance(v, float):
        return None if math.isnan(v) else round(v, 4)
    return v if isinstance(v, (int, str, bool)) or v is None else str(v)


def publish_table(rows: list[dict[str, Any]], key: str, description: str) -> None:
    """A table artifact; floats rounded to 4 digits, NaN as empty cells."""
    create_table_artifact([{k: _cell(v) for k, v in r.items()} for r in rows], key=artifact_key(key),
                          description=description)


def figure_url(path: str | os.PathLike[str]) -> str:
    """The URL under which the UI can show a figure (see the module docstring)."""
    path = Path(path).resolve()
    base, root = os.environ.get(FIGURES_URL), os.environ.get(FIGURES_ROOT)
    if base and root and path.is_relative_to(Path(root).resolve()):
        return f"{base.rstrip('/')}/{quote(path.relative_to(Path(root).resolve()).as_posix())}"
    return path.as_uri()


def publish_figures(paths: Iterable[str | os.PathLike[str]], key: str) -> list[str]:
    """One image artifact per figure; returns their URLs."""
    urls = []
    for i, p in enumerate(paths):
        url = figure_url(p)
        create_image_artifact(image_url=url, key=artifact_key(key, str(i)), description=f"`{Path(p).name}`")
        urls.append(url)
    return urls


def publish_summary(title: str, key: str, workspace: str | os.PathLike[str], headline: dict[str, Any],
                    figures: Iterable[str | os.PathLike[str]] = (), notes: Iterable[str] = ()) -> str:
    """A Markdown artifact: headline numbers, the workspace and every figure (link and path)."""
    lines = [f"# {title}", "", "| | |", "|---|---|"]
    lines += [f"| {k} | {_cell(v) if not isinstance(v, (list, dict)) else v} |" for k, v in headline.items()]
    lines += ["", f"Workspace: `{Path(workspace).resolve()}`", ""]
    figures = list(figures)
    if figures:
        lines += ["## Figures", ""] + [f"- [{Path(p).name}]({figure_url(p)}) `{Path(p).resolve()}`" for p in figures]
    lines += [""] + [f"- {n}" for n in notes]
    text = "\n".join(lines).rstrip() + "\n"
    create_markdown_artifact(text, key=artifact_key(key), description=title)
    return text


class Progress:
    """A progress artifact for a chunk loop: ``p = Progress(key, n, what); p.advance()`` per chunk."""

    def __init__(self, key: str, total: int, description: str) -> None:
        self.total, self.done = total, 0
        self.id = create_progress_artifact(0.0 if total else 100.0, key=artifact_key(key), description=description)

    def advance(self, n: int = 1) -> None:
        self.done += n
        update_progress_artifact(self.id, 100.0 * self.done / max(self.total, 1))
