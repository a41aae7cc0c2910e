"""Report flow: the library's report of a model (:func:`xaiflow.report.write_report`: a folder with
a self-contained ``report.html``, its figures as PNG files and ``shortcut.json``); the figures are
published as image artifacts, the verdict and paths as a Markdown summary."""

from __future__ import annotations

import json
from pathlib import Path

from prefect import flow, get_run_logger

from flows.artifacts import publish_figures, publish_summary


@flow(name="xaiflow-report")
def report_flow(workspace: str = "workspace/quickstart.zarr", model: str | None = None, dataset: str | None = None,
                config_path: str = "configs/quickstart.yaml", out: str | None = None) -> dict:
    """Write the report of a model: example overlays, class means, metric tables, agreement, shortcut verdict.

    Args:
        workspace: the Zarr workspace.
        model: model id (default: attribution.model, else the model of the config's `train:` section).
        dataset: dataset whose maps the report shows (default: the config's attribution dataset).
        config_path: run config naming the default model and dataset.
        out: report folder (default: <workspace>.reports/<model> beside the workspace).
    """
    from xaiflow.config import load_config
    from xaiflow.report import write_report

    run = load_config(config_path)
    if model is None:
        model = run.attribution.model if run.attribution else None
    if model is None:
        if run.train is None:
            raise ValueError(f"{config_path}: no `train:` section to take the model from; pass model")
        from xaiflow.training import resolve_model_id

        model = resolve_model_id(workspace, run.train)
    if dataset is None and run.attribution is not None:
        dataset = run.attribution.dataset
    path = Path(write_report(workspace, model, dataset=dataset, out=out)).resolve()
    figures = sorted(path.parent.glob("*.png"))
    verdict = json.loads((path.parent / "shortcut.json").read_text())
    urls = publish_figures(figures, "report-figure")
    publish_summary(f"Report of {model}", "report-summary", workspace,
                    {"report": str(path), "shortcut verdict": verdict["verdict"],
                     "accuracy": verdict["accuracy"]}, figures, notes=verdict["reasons"])
    get_run_logger().info("report %s: %s (%d figures)", path, verdict["verdict"], len(figures))
    return {"report": str(path), "verdict": verdict["verdict"], "figures": [str(p) for p in figures],
            "figure_urls": urls, "model_id": model}
