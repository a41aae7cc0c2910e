"""Prefect artifacts of xaiflow flow runs: result tables, Markdown summaries, progress, figures, links.

Every flow publishes what a user looks for in the UI through these few helpers, so the
flows stay thin and the artifacts look alike across stages.

Figures: a Prefect image artifact holds a URL, and the UI shows it with an ``<img>`` tag,
which browsers refuse for ``file://`` URLs on an ``http://`` page. So a figure's URL is
``$XAIFLOW_FIGURES_URL/<absolute path>`` when the figure lies under one of the folders of
``$XAIFLOW_FIGURES_ROOT`` (``os.pathsep``-separated): ``deploy/demo.py`` and ``deploy/serve.py``
serve those folders read-only on a fixed loopback port (``deploy/local.py``, 127.0.0.1:4210 unless
``$XAIFLOW_FIGURES_PORT`` says otherwise) and set both. The URL names the port and the file, not the
server process, so the artifacts of earlier runs show their figures again once a figure server runs
after a restart. Without a figure server the artifact carries the ``file://`` URL (a link the user
can open on the machine that ran the flow), and the Markdown summaries list every figure's path
either way. The report (``report.html``) is published the same way, as a link artifact.
"""

from __future__ import annotations

import math
import os
import re
from pathlib import Path
from typing import Any, Iterable
from urllib.parse import quote

from prefect.artifacts import (create_image_artifact, create_link_artifact, create_markdown_artifact,
                               create_progress_artifact, create_table_artifact, update_progress_artifact)

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


def served_roots() -> list[Path]:
    """The folders a figure server serves for this process (``$XAIFLOW_FIGURES_ROOT``)."""
    return [Path(r).resolve() for r in os.environ.get(FIGURES_ROOT, "").split(os.pathsep) if r]


def figure_url(path: str | os.PathLike[str]) -> str:
    """The URL under which the UI can show a figure or open a report page (see the module docstring)."""
    path = Path(path).resolve()
    base = os.environ.get(FIGURES_URL)
    if base and any(path.is_relative_to(root) for root in served_roots()):
        return f"{base.rstrip('/')}{quote(path.as_posix())}"
    return path.as_uri()


def publish_figure(path: str | os.PathLike[str], key: str) -> str:
    """An image artifact of one figure under a descriptive ``key`` (one artifact history per key across
    runs); returns its URL."""
    url = figure_url(path)
    create_image_artifact(image_url=url, key=artifact_key(key), description=f"`{Path(path).name}` "
                                                                           f"({Path(path).resolve()})")
    return url


def publish_figures(paths: Iterable[str | os.PathLike[str]], prefix: str) -> list[str]:
    """One image artifact per figure, keyed ``<prefix>-<file name>`` (``report-confusion-matrix``);
    returns their URLs."""
    urls, keys = [], set()
    for p in paths:
        key, n = artifact_key(prefix, Path(p).stem), 2
        while key in keys:  # two figures of one name (in different folders)
            key, n = artifact_key(prefix, Path(p).stem, str(n)), n + 1
        keys.add(key)
        urls.append(publish_figure(p, key))
    return urls


def publish_link(path: str | os.PathLike[str], key: str, text: str, description: str) -> str:
    """A link artifact to a file (a report page), served like the figures; returns the URL."""
    url = figure_url(path)
    create_link_artifact(url, link_text=text, key=artifact_key(key), description=description)
    return url


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
