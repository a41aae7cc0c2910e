"""Report flow: the library's report of a model (:func:`xaiflow.report.write_report`: a folder with
a ``report.html``, its figures as PNG files and ``shortcut.json``); the figures are published as
image artifacts keyed by name (``report-class-means``, ...), the report as a link artifact (``report``),
the verdict and paths as a Markdown summary."""

from __future__ import annotations

import json
from pathlib import Path

from prefect import flow, get_run_logger

from xaiflow_flows.artifacts import publish_figures, publish_link, publish_summary
from xaiflow.config import RunConfig, load_config
from xaiflow.models.catalog import ModelCatalog
from xaiflow.report import write_report


@flow(name="stage-report", flow_run_name="report")
def report_stage(run: RunConfig, workspace: str, model: str | None = None, dataset: str | None = None,
                 out: str | None = None, beside: list[str] | None = None) -> dict:
    """Write the report of the model whose maps the config (or ``model``/``dataset``) names, with the shortcut
    verdicts of the ``beside`` models next to its own (``comparison`` in the result)."""
    attribution = run.attribution
    if attribution is not None:
        model, dataset = model or attribution.model, dataset or attribution.dataset
    dataset, model_id = ModelCatalog(workspace).resolve_maps(model, dataset, run=run)
    shortcut = run.shortcut.model_dump() if run.shortcut else None  # evidence/suspect mask classes
    path = Path(write_report(workspace, model_id, dataset=dataset, out=out, beside=beside,
                             shortcut_options=shortcut)).resolve()
    figures = sorted(path.parent.glob("*.png"))
    verdict = json.loads((path.parent / "shortcut.json").read_text())
    urls = publish_figures(figures, "report")
    link = publish_link(path, "report", f"Report of {model_id}: {path.name}", f"{path} (shortcut verdict: "
                                                                             f"{verdict['verdict']})")
    publish_summary(f"Report of {model_id}", "report-summary", workspace,
                    {"report": f"[{path.name}]({link}) `{path}`", "shortcut verdict": verdict["verdict"],
                     "accuracy": verdict["accuracy"]}, figures, notes=verdict["reasons"])
    get_run_logger().info("report %s: %s (%d figures)", path, verdict["verdict"], len(figures))
    comparison = path.parent / "comparison.json"
    return {"report": str(path), "verdict": verdict["verdict"], "figures": [str(p) for p in figures],
            "figure_urls": urls, "report_url": link, "model_id": model_id,
            "comparison": json.loads(comparison.read_text()) if beside and comparison.is_file() else []}


@flow(name="xaiflow-report")
def report_flow(workspace: str = "workspace/quickstart.zarr", model: str | None = None, dataset: str | None = None,
                config_path: str = "configs/quickstart.yaml", out: str | None = None) -> dict:
    """Write the report of a model: example overlays, class means, metric tables, agreement, shortcut verdict.

    Args:
        workspace: the Zarr workspace.
        model: model id or unique prefix (default: attribution.model, else the model of the config's `train:` section).
        dataset: dataset whose maps the report shows (default: the config's attribution dataset).
        config_path: run config naming the default model and dataset.
        out: report folder (default: <workspace>.reports/<model> beside the workspace).
    """
    return report_stage(run=load_config(config_path), workspace=workspace, model=model, dataset=dataset, out=out)
