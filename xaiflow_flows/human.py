"""The human-vs-model study as a flow (:mod:`xaiflow.human`): annotator agreement, human class vs the
model's, and each attribution method's maps against the regions experts painted (or imported masks),
stored as ``human/<dataset>/<model>``; the tables and figures are published as artifacts.

The study reads stored maps and annotations only (no chunked job, no Dask cluster): one task-free flow
with a typed parameter model, so the Prefect UI shows a form.
"""

from __future__ import annotations

from pathlib import Path

from prefect import flow, get_run_logger
from pydantic import BaseModel, ConfigDict, Field

from xaiflow_flows.artifacts import publish_figure, publish_summary, publish_table
from xaiflow import human as hm
from xaiflow.human_report import agreement_figure, contours_figure
from xaiflow.studies.report import default_out_dir


class HumanStudyParams(BaseModel):
    """What to compare: the workspace, dataset and model, where the human regions come from, and how."""

    model_config = ConfigDict(extra="forbid")

    workspace: str = Field("workspace/quickstart.zarr", description="the Zarr workspace")
    dataset: str | None = Field(None, description="dataset (default: the model's training dataset)")
    model: str | None = Field(None, description="model id or unique prefix (default: the only model)")
    methods: list[str] | None = Field(None, description="attribution method keys (default: every stored one)")
    from_masks: str | None = Field(
        None, description="also compare with imported masks as annotator 'masks': their classes, e.g. 'structure' "
                          "or 'network=carbide_network,*=particles' ('default': every class but the first)")
    absolute: bool = Field(False, description="score |map| instead of the signed map")
    n_boot: int = Field(1000, ge=10, le=100_000, description="bootstrap resamples of the samples")
    seed: int = Field(0, ge=0, description="seed of the bootstrap")
    out_dir: str | None = Field(None, description="folder for the figures (default: beside the workspace)")


@flow(name="xaiflow-human", flow_run_name="human")
def human_flow(study: HumanStudyParams | None = None) -> dict:
    """Humans and the model side by side: do experts agree, do they reach the model's class, and do the maps
    point where they painted (every number with a bootstrap 95% interval and its chance level)?"""
    p = study or HumanStudyParams()
    selection = None if p.from_masks in (None, "", "default") else p.from_masks
    result = hm.run_study(p.workspace, p.dataset, p.model, methods=p.methods, from_masks=selection,
                          use_masks=p.from_masks is not None, absolute=p.absolute, n_boot=p.n_boot, seed=p.seed)
    for (title, rows, columns), key in zip(hm.printed_tables(result),
                                           ("human-agreement", "human-vs-model", "human-vs-truth", "human-maps")):
        publish_table([{c: r.get(c) for c in columns} for r in rows], key, title)
    folder = Path(p.out_dir) if p.out_dir else default_out_dir(p.workspace)
    stem = str(result.group).replace("/", "_")
    figures = [agreement_figure(result, folder / f"{stem}_agreement.png"),
               contours_figure(p.workspace, result, folder / f"{stem}_regions.png")]
    publish_figure(figures[0], "human-map-agreement-chart")
    publish_figure(figures[1], "human-regions")
    words = hm.conclusions(result)
    publish_summary("Humans and the model", "human-summary", p.workspace,
                    {"group": result.group, "annotators": ", ".join(result.annotators),
                     "images": result.n_samples, "Fleiss' kappa": result.fleiss.get("kappa")}, figures, notes=words)
    get_run_logger().info("%s: %s", result.group, " ".join(words))
    return {**result.to_dict(), "figures": [str(f) for f in figures]}
