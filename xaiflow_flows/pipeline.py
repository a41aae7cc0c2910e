"""The whole pipeline as one Prefect flow: ingest -> train -> predict -> features -> studies ->
attribute -> evaluate -> uncertainty -> concepts -> importance -> probes -> adversarial -> report,
each stage a subflow run named after it (the stage flows of
``xaiflow_flows/<stage>.py``, which their stand-alone flows also call). The run config is read and
validated once, here, and the config object is handed to every stage.

Every stage reuses finished work through the library: ingest skips up-to-date datasets,
training reuses a checkpoint with the same model id, predictions made by the same
checkpoint are kept, feature groups and studies are reused, attribution and metrics skip
chunks marked done. A re-run therefore only does what is missing. A stage whose config
section is absent (e.g. no ``features:``) is reported as skipped.

The parameters are one pydantic model, :class:`PipelineParams`, so the Prefect UI renders
a typed form with defaults and descriptions (``Run > Custom run``); ``Run > Quick run``
uses the defaults (the quick-start config).

Models side by side: a config's ``compare:`` models (:meth:`xaiflow.config.RunConfig.compared`,
e.g. the same structures without the planted shortcut) are trained, predicted and explained by the
same stages right after the ``train:`` model, and the report shows their shortcut verdicts beside
its own (the stage table prints each as ``shortcut verdict: ...``). Metrics and the inspections
(uncertainty, concepts, importance, probes, adversarial), the heavier stages, run on the
``train:`` model only.

Dask: unless the cluster profile is ``threads`` or a scheduler address, the pipeline
starts the profile's cluster once and hands its address to every stage, so all stages
share one set of workers (and one dashboard, shown in the summary).
"""

from __future__ import annotations

import time
from contextlib import contextmanager
from functools import partial
from pathlib import Path
from typing import Any, Callable, Iterator, Literal, get_args

from prefect import flow, get_run_logger
from pydantic import BaseModel, ConfigDict, Field

from xaiflow.attribution import METHODS
from xaiflow.clusters import profile_names
from xaiflow.metrics import METRICS
from xaiflow_flows.artifacts import publish_figures, publish_link, publish_summary, publish_table
from xaiflow_flows.runners import on_cluster

Stage = Literal["ingest", "train", "predict", "features", "studies", "attribute", "evaluate", "uncertainty", "concepts",
                "importance", "probes", "adversarial", "report"]
STAGES: tuple[str, ...] = get_args(Stage)


#: the form's choices, read when the module is imported (a served deployment shows the profiles of
#: $XAIFLOW_CLUSTER_DIR and the methods and metrics of $XAIFLOW_PLUGINS of the serving process)
ClusterProfile = Literal[tuple(profile_names())]  # type: ignore[valid-type]
Device = Literal["auto", "cpu", "cuda", "mps"]
MethodName = Literal[tuple(METHODS.names())]  # type: ignore[valid-type]
MetricName = Literal[tuple(METRICS.names())]  # type: ignore[valid-type]


class PipelineParams(BaseModel):
    """Parameters of the whole pipeline; an empty field means the config's value or the default."""
    # (no field is "X | None": the UI would show a type toggle for it; choices are Literal lists)

    model_config = ConfigDict(extra="forbid")

    config_path: str = Field("configs/quickstart.yaml",
                             description="Run config YAML (datasets, train, features, studies, attribution "
                                         "sections), relative to the flow's working directory, or a shipped "
                                         "config's name")
    workspace: str = Field("workspace/quickstart.zarr", description="Zarr workspace to write (created if missing)")
    data_dir: str = Field("", description="Folder of the images, instead of the `root` of the config's "
                                          "folder sources (empty: the config's)")
    stages: list[Stage] = Field(list(STAGES), min_length=1,
                                description="Stages to run, in pipeline order; finished work is reused")
    cluster: ClusterProfile = Field("local", description="Dask cluster profile (configs/cluster/ and "
                                                         "$XAIFLOW_CLUSTER_DIR); ignored when a scheduler "
                                                         "address is given")
    scheduler_address: str = Field("", pattern=r"^((tcp|tls)://\S+:\d+)?$",
                                   description="An existing Dask scheduler to run on, e.g. tcp://127.0.0.1:8786 "
                                               "(empty: start the cluster profile's cluster)")
    device: Device = Field("auto", description="Torch device for training, attribution and metrics (auto: cuda "
                                               "where there is one, else cpu)")
    methods: list[MethodName] = Field([], description="Attribution methods with default parameters (empty: the "
                                                      "config's attribution.methods)")
    metrics: list[MetricName] = Field([], description="Metrics (empty: the config's evaluation.metrics, else "
                                                      "road, region_perturbation, sparseness, entropy, plus "
                                                      "localization metrics when masks exist)")
    report_out: str = Field("", description="Report folder (empty: <workspace>.reports/<model> beside the "
                                            "workspace)")

    @property
    def dask_cluster(self) -> str:
        """What the stages run on: the scheduler address, else the profile name."""
        return self.scheduler_address or self.cluster


@contextmanager
def shared_cluster(profile: str) -> Iterator[tuple[str, str | None]]:
    """(profile to hand to the stages, dashboard URL): the address of a cluster started once here,
    or the profile unchanged for ``threads`` (in-process per stage) and scheduler addresses."""
    from xaiflow.runtime import dask_client, load_cluster_profile

    cfg = load_cluster_profile(profile)
    if cfg.kind in ("threads", "address"):
        yield profile, None
        return
    with dask_client(cfg) as client:
        yield client.scheduler.address, client.dashboard_link


def _headline(stage: str, result: Any) -> str:
    """One line of what a stage produced, for the stage table."""
    if stage == "ingest":
        return ", ".join(f"{r['dataset']}: {r['status']} ({r['n_samples']})" for r in result)
    if stage == "train":
        return ", ".join(f"{r['model_id']}: test bal. acc. {r.get('test_balanced_accuracy', float('nan')):.3f}"
                         f"{' (reused)' if r.get('reused') else ''}" for r in result)
    if stage == "predict":
        return ", ".join(f"{r['group']}{' (reused)' if r['reused'] else ''}" for r in result)
    if stage == "features":
        return ", ".join(f"{d}: {len(rows)} feature-set x classifier score(s)" for d, rows in result.items())
    if stage == "studies":
        return ", ".join(f"{k}: {v['group']}" for k, v in result.items())
    if stage in ("attribute", "evaluate"):
        return "; ".join(f"{r['group']}: {r['chunks_run']} chunk(s) computed, {r['chunks_skipped']} skipped (done, "
                         "or no maps to score)" for r in (result, *result.get("compared", [])))
    if stage == "uncertainty":
        return f"{result['group']}: expected calibration error {result['ece']:.3f}"
    if stage == "concepts":
        drivers = [f"{r['concept']} -> {r['class']}" for r in result["table"] if r["significant"]]
        return f"{result['group']}: significant {', '.join(drivers) or 'none'}"
    if stage == "importance":
        return f"{result['group']}: " + "; ".join(result["sentences"][-1:])
    if stage == "probes":
        verdict = result["verdict"]
        return f"{result['group']}: orientation {verdict['verdict'] if verdict else 'not probed'}"
    if stage == "adversarial":
        return f"{result['group']}: " + ", ".join(f"{r['attack']} AUC(fisher_trace) {r['fisher_trace']:.2f}"
                                                 for r in result["detection"])
    verdicts = result.get("comparison") or [{"model": result.get("model_id", "model"), "verdict": result["verdict"]}]
    return "; ".join(f"{r['model']}: shortcut verdict: {r['verdict']}" for r in verdicts) + f"; {result['report']}"


#: the config sections a stage needs (a stage missing one is skipped)
NEEDS = {"ingest": ("datasets",), "train": ("train",), "predict": ("train",), "features": ("features",),
         "studies": ("studies", "features"), "attribute": ("attribution",), "evaluate": ("attribution",),
         "uncertainty": ("uncertainty",), "concepts": ("concepts",), "importance": ("importance",),
         "probes": ("probes",),
         "adversarial": ("adversarial",), "report": ("attribution",)}


def _stage_calls(params: PipelineParams, run: Any, cluster: str) -> dict[str, Callable[[], Any]]:
    """Each stage as a call of its stage subflow on the shared cluster, with the validated config."""
    from xaiflow_flows.attribute import attribute_stage
    from xaiflow_flows.evaluate import evaluate_stage
    from xaiflow_flows.features import features_stage
    from xaiflow_flows.ingest import ingest_stage
    from xaiflow_flows.inspection import (adversarial_stage, concepts_stage, importance_stage, probes_stage,
                                  uncertainty_stage)
    from xaiflow_flows.report import report_stage
    from xaiflow_flows.studies import studies_stage
    from xaiflow_flows.train import predict_stage, train_stage
    from xaiflow.models.catalog import ModelCatalog

    ws, device = params.workspace, None if params.device == "auto" else params.device
    runs = (run, *run.compared())  # the train: model first, then the compare: models
    stage = {name: on_cluster(f, cluster) for name, f in (
        ("ingest", ingest_stage), ("train", train_stage), ("predict", predict_stage), ("features", features_stage),
        ("studies", studies_stage), ("attribute", attribute_stage), ("evaluate", evaluate_stage),
        ("uncertainty", uncertainty_stage), ("concepts", concepts_stage), ("importance", importance_stage),
        ("probes", probes_stage),
        ("adversarial", adversarial_stage))}
    return {
        "ingest": lambda: stage["ingest"](run=run, workspace=ws),
        "train": lambda: [row for r in runs for row in stage["train"](run=r, workspace=ws, device=device)],
        "predict": lambda: [row for r in runs for row in stage["predict"](run=r, workspace=ws, device=device or "cpu")],
        "features": lambda: stage["features"](run=run, workspace=ws),
        "studies": lambda: stage["studies"](run=run, workspace=ws),
        "attribute": lambda: _with_compared([stage["attribute"](run=r, workspace=ws, methods=params.methods or None
                                                                if r is run else None, device=device) for r in runs]),
        "evaluate": lambda: stage["evaluate"](run=run, workspace=ws, metrics=params.metrics or None,
                                              device=params.device),
        **{name: partial(stage[name], cfg=_with_device(getattr(run, name), device), workspace=ws, run=run)
           for name in ("uncertainty", "concepts", "importance", "probes", "adversarial")},
        "report": lambda: report_stage(run=run, workspace=ws, out=params.report_out or None,
                                       beside=[ModelCatalog(ws).resolve(run=r).model_id for r in runs[1:]]),
    }


def _with_compared(results: list[dict[str, Any]]) -> dict[str, Any]:
    """The first model's stage result, with the compare models' results under ``compared``."""
    return {**results[0], "compared": results[1:]}


def _with_device(section: Any, device: str | None) -> Any:
    """An inspection's config section with the run's device, when the form sets one (not ``auto``)."""
    return section.model_copy(update={"device": device}) if section is not None and device else section


def _figures(stage: str, result: Any) -> list[str]:
    if stage == "studies":
        return [f for r in result.values() for f in r.get("files", []) if f.endswith(".png")]
    inspections = ("uncertainty", "concepts", "importance", "probes", "adversarial", "report")
    return list(result["figures"]) if stage in inspections else []


def _run_name() -> str:
    """The flow run's name: ``pipeline-<config>`` (e.g. ``pipeline-quickstart``) instead of a random one."""
    from prefect.runtime import flow_run

    params = flow_run.parameters.get("params")
    config = params.config_path if isinstance(params, PipelineParams) else (params or {}).get("config_path", "")
    return "-".join(filter(None, ("pipeline", Path(str(config)).stem)))


@flow(name="xaiflow-pipeline", flow_run_name=_run_name)
def pipeline_flow(params: PipelineParams = PipelineParams()) -> dict[str, Any]:
    """Run the xaiflow pipeline (ingest, train, predict, features, studies, attribute, evaluate, uncertainty,
    concepts, importance, probes, adversarial, report)
    on a run config, reusing finished work; publishes a stage table and a summary."""
    from xaiflow.config import load_config

    logger = get_run_logger()
    run = load_config(params.config_path, data_dir=params.data_dir or None)  # once: every stage gets it
    results: dict[str, Any] = {}
    rows: list[dict[str, Any]] = []
    figures: list[str] = []
    with shared_cluster(params.dask_cluster) as (cluster, dashboard):
        if dashboard:
            logger.info("dask dashboard: %s", dashboard)
        calls = _stage_calls(params, run, cluster)
        for stage in STAGES:
            configured = all(getattr(run, section) is not None for section in NEEDS[stage])
            if stage not in params.stages or not configured:
                why = "not selected" if stage not in params.stages else "no config section"
                rows.append({"stage": stage, "status": f"skipped ({why})", "seconds": 0.0, "result": ""})
                continue
            tick = time.perf_counter()
            try:
                results[stage] = calls[stage]()
            except Exception as e:  # the stage table still shows how far the run got, then the run fails
                rows.append({"stage": stage, "status": "failed", "seconds": round(time.perf_counter() - tick, 1),
                             "result": f"{type(e).__name__}: {e}"[:500]})
                publish_table(rows, key="pipeline-stages", description=f"stages of {run.origin} on {params.workspace} "
                                                                       "(failed)")
                raise
            rows.append({"stage": stage, "status": "done", "seconds": round(time.perf_counter() - tick, 1),
                         "result": _headline(stage, results[stage])})
            logger.info("%s: done in %.1f s: %s", stage, rows[-1]["seconds"], rows[-1]["result"])
            figures += _figures(stage, results[stage])
    _publish(params, run.origin, rows, results, figures, dashboard)
    return {"stages": rows, "results": results, "dashboard": dashboard}


def _publish(params: PipelineParams, origin: str, rows: list[dict[str, Any]], results: dict[str, Any],
             figures: list[str], dashboard: str | None) -> None:
    """The stage table, the summary with the headline numbers, and the report's figures."""
    publish_table(rows, key="pipeline-stages", description=f"stages of {origin} on {params.workspace}")
    headline: dict[str, Any] = {"config": origin, "cluster": params.dask_cluster}
    if dashboard:
        headline["dask dashboard (while the run ran)"] = dashboard
    for r in results.get("train", []):
        headline[f"{r['model_id']} test balanced accuracy"] = r.get("test_balanced_accuracy")
    for r in results.get("evaluate", {}).get("summary", []):
        headline[f"{r['method']} {r['metric']}"] = f"{r['mean']:.3f} ± {r['std']:.3f}"
    if "report" in results:
        report = results["report"]
        headline["report"] = f"[{Path(report['report']).name}]({report['report_url']}) `{report['report']}`"
        headline["shortcut verdict"] = results["report"]["verdict"]
        for r in results["report"].get("comparison", [])[1:]:
            headline[f"{r['model']} shortcut verdict"] = r["verdict"]
    publish_summary(f"xaiflow pipeline: {origin}", "pipeline-summary", params.workspace, headline, figures)
    if "report" in results:  # on the pipeline's own run page too (the report subflow has its own)
        path = results["report"]["report"]
        publish_link(path, "pipeline-report", f"Report: {Path(path).name}", path)
        publish_figures(results["report"]["figures"], "pipeline-report")
