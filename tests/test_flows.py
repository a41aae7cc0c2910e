"""Flows under Prefect's test harness (one harness per session: it takes ~13 s to start)."""

import json
import time
from pathlib import Path

import pytest
import yaml

import xaiflow
from conftest import folder_config, write_folder_dataset, write_tiny_run_config
from services import tiny_pipeline_config

pytestmark = pytest.mark.prefect


def test_ingest_flow_runs_library_ingest(prefect_harness, tmp_path):
    from xaiflow_flows.ingest import ingest_flow

    root = write_folder_dataset(tmp_path / "data")
    config = tmp_path / "run.yaml"
    config.write_text(yaml.safe_dump({"datasets": [folder_config(root)]}))
    ws = tmp_path / "ws.zarr"
    results = ingest_flow(config_path=str(config), workspace=str(ws), cluster="threads")
    assert [(r["dataset"], r["status"], r["n_samples"]) for r in results] == [("tiny", "written", 12)]
    assert xaiflow.open_workspace(ws)["images/tiny"].ds.sizes["sample"] == 12
    again = ingest_flow(config_path=str(config), workspace=str(ws), cluster="threads")
    assert again[0]["status"] == "up-to-date"


def test_train_flow_trains_and_predicts(prefect_harness, tmp_path):
    from xaiflow_flows.train import train_flow
    from xaiflow import store

    config = write_tiny_run_config(tmp_path)
    ws = tmp_path / "ws.zarr"
    from xaiflow_flows.ingest import ingest_flow

    ingest_flow(config_path=str(config), workspace=str(ws), cluster="threads")
    rows = train_flow(config_path=str(config), workspace=str(ws), cluster="threads")
    (row,) = rows
    preds = store.open_group(ws, f"predictions/syn/{row['model_id']}")
    assert preds.sizes["sample"] == 24 and 0 <= row["test_balanced_accuracy"] <= 1


def _task_runs(flow_run_id, prefix: str) -> list[dict]:
    """The task runs of a flow run and its subflow runs whose names start with ``prefix`` (REST API)."""
    import httpx
    from prefect.settings import PREFECT_API_URL

    api = PREFECT_API_URL.value()
    body = {"flow_runs": {"parent_flow_run_id": {"any_": [str(flow_run_id)]}}, "limit": 200}
    response = httpx.post(f"{api}/flow_runs/filter", json=body)
    response.raise_for_status()
    runs = [str(flow_run_id), *(r["id"] for r in response.json())]
    body = {"task_runs": {"flow_run_id": {"any_": runs}}, "limit": 200}
    response = httpx.post(f"{api}/task_runs/filter", json=body)
    response.raise_for_status()
    return [t for t in response.json() if t["name"].startswith(prefix)]


def test_group_size_covers_the_target_seconds():
    from xaiflow_flows.jobs import TASK_SECONDS, group_size

    assert group_size(0.1) == int(TASK_SECONDS / 0.1) and group_size(TASK_SECONDS * 3) == 1
    assert group_size(0.0) >= 1 and group_size(2.0, target=10) == 5


def test_attribute_flow_groups_chunks_into_few_tasks_on_dask(prefect_harness, tmp_path):
    from xaiflow_flows.attribute import attribute_flow
    from xaiflow_flows.ingest import ingest_flow
    from xaiflow_flows.train import train_flow
    from xaiflow.saliency import open_saliency

    config = write_tiny_run_config(tmp_path, attribution={"dataset": "syn", "methods": ["saliency", "grad_cam"],
                                                          "device": "cpu"})
    run = yaml.safe_load(config.read_text())
    run["datasets"][0]["chunk_size"] = 2  # 12 chunks: more than two per worker
    config.write_text(yaml.safe_dump(run))
    ws = tmp_path / "ws.zarr"
    ingest_flow(config_path=str(config), workspace=str(ws), cluster="threads")
    (row,) = train_flow(config_path=str(config), workspace=str(ws), cluster="threads")
    state = attribute_flow(config_path=str(config), workspace=str(ws), cluster="threads", return_state=True)
    res = state.result()
    assert res["chunks_run"] == 12 and res["maps_computed"] == {"saliency": 24, "grad_cam": 24}
    # one chunk per worker runs first as plain Dask tasks (measuring the work), one Prefect task covers the
    # other 10 (far less than 30 s of work); the server records task runs a moment after they end
    deadline = time.monotonic() + 30
    while not (runs := _task_runs(state.state_details.flow_run_id, "attribute-chunks")) and \
            time.monotonic() < deadline:
        time.sleep(0.5)
    time.sleep(1.0)
    runs = _task_runs(state.state_details.flow_run_id, "attribute-chunks")
    assert len(runs) == 1 and all(r["state_type"] == "COMPLETED" for r in runs), runs
    ds = open_saliency(ws, "syn", row["model_id"])
    assert bool(ds.done.all()) and ds.attrs["status"] == "complete"
    again = attribute_flow(config_path=str(config), workspace=str(ws), cluster="threads")
    assert again["chunks_run"] == 0 and again["chunks_skipped"] == 12


def _artifacts(flow_run_id, subflows: bool = False) -> dict[str, list[dict]]:
    """Artifacts of a flow run (and of its subflow runs), read back through the server's REST API (as
    the UI does): type -> artifacts."""
    import httpx
    from prefect.settings import PREFECT_API_URL

    api, runs = PREFECT_API_URL.value(), [str(flow_run_id)]
    if subflows:
        body = {"flow_runs": {"parent_flow_run_id": {"any_": runs}}, "limit": 200}
        response = httpx.post(f"{api}/flow_runs/filter", json=body)
        response.raise_for_status()
        runs += [r["id"] for r in response.json()]
    body = {"artifacts": {"flow_run_id": {"any_": runs}}, "limit": 200, "offset": 0, "sort": "CREATED_DESC"}
    response = httpx.post(f"{api}/artifacts/filter", json=body)
    response.raise_for_status()
    out: dict[str, list[dict]] = {}
    for a in response.json():
        out.setdefault(a["type"], []).append(a)
    return out


def test_evaluate_flow_in_chunk_groups_with_artifacts(prefect_harness, tmp_path):
    from xaiflow_flows.attribute import attribute_flow
    from xaiflow_flows.evaluate import evaluate_flow
    from xaiflow_flows.ingest import ingest_flow
    from xaiflow_flows.train import train_flow
    from xaiflow import store

    config = write_tiny_run_config(tmp_path, attribution={"dataset": "syn", "methods": ["saliency", "grad_cam"],
                                                          "splits": ["test"], "device": "cpu"})
    ws = str(tmp_path / "ws.zarr")
    ingest_flow(config_path=str(config), workspace=ws, cluster="threads")
    (row,) = train_flow(config_path=str(config), workspace=ws, cluster="threads")
    attribute_flow(config_path=str(config), workspace=ws, cluster="threads")
    state = evaluate_flow(config_path=str(config), workspace=ws, metrics=["deletion", "sparseness"], device="cpu",
                          cluster="threads", return_state=True)
    res = state.result()
    n_test = 2 * int((store.open_group(ws, "images/syn").split.values == "test").sum())  # maps of 2 methods
    assert res["chunks_run"] >= 1 and res["computed"] == {"deletion": n_test, "sparseness": n_test}
    values = store.open_group(ws, f"metrics/syn/{row['model_id']}")
    assert values.attrs["status"] == "complete"
    test = values.split.values == "test"
    assert bool(values["done"].values[test].all()) and not bool(values["done"].values[~test].any())
    rows = {(r["method"], r["metric"]): r for r in res["summary"]}
    outputs = ("deletion", "deletion_random", "sparseness")
    assert set(rows) == {(m, k) for m in ("saliency", "grad_cam") for k in outputs}
    assert all(r["n"] == int(test.sum()) and 0 <= r["mean"] <= 1 for r in rows.values())

    arts = _artifacts(state.state_details.flow_run_id, subflows=True)  # the evaluate stage publishes them
    (table,) = [a for a in arts["table"] if a["key"] == "metrics-means"]
    assert {(r["method"], r["metric"]) for r in json.loads(table["data"])} == set(rows)
    (progress,) = arts["progress"]
    assert progress["data"] == 100.0
    (summary,) = arts["markdown"]
    assert "saliency deletion" in summary["data"] and str(tmp_path) in summary["data"]

    again = evaluate_flow(config_path=str(config), workspace=ws, metrics=["deletion", "sparseness"], device="cpu",
                          cluster="threads")
    assert again["chunks_run"] == 0


def test_uncertainty_and_adversarial_flows_publish_their_results(prefect_harness, tmp_path):
    from xaiflow_flows.ingest import ingest_flow
    from xaiflow_flows.inspection import adversarial_flow, uncertainty_flow
    from xaiflow_flows.train import train_flow
    from xaiflow import store

    config = write_tiny_run_config(tmp_path)
    ws = str(tmp_path / "ws.zarr")
    ingest_flow(config_path=str(config), workspace=ws, cluster="threads")
    (row,) = train_flow(config_path=str(config), workspace=ws, cluster="threads")
    state = uncertainty_flow(workspace=ws, passes=3, split="all", out_dir=str(tmp_path / "fig"), cluster="threads",
                             return_state=True)
    res = state.result()
    assert res["group"] == f"uncertainty/syn/{row['model_id']}" and 0 <= res["ece"] <= 1
    assert res["per_class"][-1]["class"] == "all" and res["per_class"][-1]["samples"] == 24
    assert store.open_group(ws, res["group"]).sizes["draw"] == 3
    arts = _artifacts(state.state_details.flow_run_id, subflows=True)
    assert {a["key"] for a in arts["table"]} == {"uncertainty-per-class"}
    assert (tmp_path / "fig" / f"uncertainty_syn_{row['model_id']}_reliability.png").stat().st_size > 0

    res = adversarial_flow(workspace=ws, epsilon=0.5, steps=4, step_size=0.2, split="all", max_samples=8,
                           out_dir=str(tmp_path / "fig"), cluster="threads")
    assert {r["attack"] for r in res["detection"]} == {"fgsm", "pgd"}
    assert int(store.open_group(ws, res["group"])["selected"].values.sum()) == 8


def test_figure_artifacts_get_descriptive_keys(prefect_harness, tmp_path):
    """One image artifact per figure keyed after its file (``report-confusion-matrix``), the report a link."""
    from prefect import flow

    from xaiflow_flows.artifacts import publish_figures, publish_link

    names = ["confusion_matrix.png", "Class Means.png", "sub/confusion_matrix.png"]
    for name in names:
        (tmp_path / name).parent.mkdir(exist_ok=True)
        (tmp_path / name).write_bytes(b"\x89PNG")
    (tmp_path / "report.html").write_text("<html></html>")

    @flow
    def publish() -> list[str]:
        publish_link(tmp_path / "report.html", "report", "the report", "the report of a model")
        return publish_figures([tmp_path / n for n in names], "report")

    state = publish(return_state=True)
    assert state.result() == [(tmp_path / n).resolve().as_uri() for n in names]
    arts = _artifacts(state.state_details.flow_run_id)
    assert sorted(a["key"] for a in arts["image"]) == ["report-class-means", "report-confusion-matrix",
                                                        "report-confusion-matrix-2"]
    (link,) = arts["markdown"]
    assert link["key"] == "report" and link["data"] == f"[the report]({(tmp_path / 'report.html').as_uri()})"


def test_pipeline_takes_the_images_from_data_dir_and_names_its_runs(prefect_harness, tmp_path):
    """``data_dir`` replaces the config's folder root; the run is named after the config, its stage
    subflow runs after the stages."""
    import httpx
    from prefect.settings import PREFECT_API_URL

    from xaiflow_flows.pipeline import PipelineParams, pipeline_flow

    root = write_folder_dataset(tmp_path / "moved", n_specimens=2, per_specimen=2)
    config = tmp_path / "run.yaml"
    config.write_text(yaml.safe_dump({"datasets": [folder_config(tmp_path / "not-here")]}))
    params = PipelineParams(config_path=str(config), workspace=str(tmp_path / "ws.zarr"), data_dir=str(root),
                            cluster="threads", stages=["ingest"])
    state = pipeline_flow(params, return_state=True)
    (row,) = state.result()["results"]["ingest"]
    assert (row["status"], row["n_samples"]) == ("written", 4)
    api, run_id = PREFECT_API_URL.value(), str(state.state_details.flow_run_id)
    assert httpx.get(f"{api}/flow_runs/{run_id}").json()["name"] == "pipeline-run"
    body = {"flow_runs": {"parent_flow_run_id": {"any_": [run_id]}}}
    assert [r["name"] for r in httpx.post(f"{api}/flow_runs/filter", json=body).json()] == ["ingest"]


def test_pipeline_parameters_are_a_typed_form():
    from prefect.utilities.callables import parameter_schema

    from xaiflow.clusters import profile_names
    from xaiflow_flows.pipeline import STAGES, pipeline_flow

    schema = parameter_schema(pipeline_flow.fn).model_dump()
    assert list(schema["properties"]) == ["params"]
    form = schema["definitions"]["PipelineParams"]["properties"]
    assert form["config_path"]["default"] == "configs/quickstart.yaml" and form["config_path"]["description"]
    assert form["stages"]["default"] == list(STAGES)
    assert form["stages"]["items"]["enum"] == list(STAGES) or "$ref" in form["stages"]["items"]
    # choice lists (a select in the UI's form), no "X | None" field (the UI would show a type toggle)
    assert form["device"]["enum"] == ["auto", "cpu", "cuda", "mps"] and form["cluster"]["default"] == "local"
    assert set(form["cluster"]["enum"]) == set(profile_names()) >= {"threads", "local", "slurm", "address"}
    assert "grad_cam" in form["methods"]["items"]["enum"] and "road" in form["metrics"]["items"]["enum"]
    assert form["methods"]["default"] == [] and form["data_dir"]["default"] == ""
    assert not any("anyOf" in f or f.get("type") == "null" for f in form.values())
    assert all(f.get("description") for f in form.values())


@pytest.mark.slow
def test_pipeline_runs_every_stage_and_a_rerun_reuses_work(prefect_harness, tmp_path):
    from xaiflow_flows.pipeline import STAGES, PipelineParams, pipeline_flow
    from xaiflow import store
    from xaiflow.saliency import METHOD, open_saliency

    # every stage up to the report (the e2e deployment runs the inspections), and a compare: model
    config = tiny_pipeline_config(tmp_path, compare=True)
    ws = str(tmp_path / "ws.zarr")
    params = PipelineParams(config_path=str(config), workspace=ws, cluster="threads", device="cpu",
                            metrics=["sparseness", "entropy"], report_out=str(tmp_path / "report"))
    state = pipeline_flow(params, return_state=True)
    first = state.result()
    inspections = ("uncertainty", "concepts", "importance", "probes", "adversarial")
    assert [(r["stage"], r["status"]) for r in first["stages"]] == [
        (s, "skipped (no config section)" if s in inspections else "done") for s in STAGES]
    model, other = (r["model_id"] for r in first["results"]["train"])  # the train: model, then the compare: one
    for group in ("images/syn", f"predictions/syn/{model}", "features/syn/glcm", "studies/syn/reduction",
                  f"saliency/syn/{model}", f"metrics/syn/{model}", f"predictions/syn/{other}", f"saliency/syn/{other}"):
        assert store.group_exists(ws, group), group
    assert not store.group_exists(ws, f"metrics/syn/{other}")  # metrics: the first model only
    assert list(open_saliency(ws, "syn", other)[METHOD].values) == ["grad_cam"]  # its own methods
    report = first["results"]["report"]
    assert Path(report["report"]).is_file() and report["figures"] and report["verdict"]
    assert [r["model"] for r in report["comparison"]] == [model, other]
    assert (Path(report["report"]).parent / "comparison.json").is_file()
    row = {r["stage"]: r for r in first["stages"]}["report"]["result"]
    assert all(f"{r['model']}: shortcut verdict: {r['verdict']}" in row for r in report["comparison"])
    assert all(Path(f).parent == tmp_path / "report" for f in report["figures"])
    arts = _artifacts(state.state_details.flow_run_id)
    (stages,) = [a for a in arts["table"] if a["key"] == "pipeline-stages"]
    assert [r["stage"] for r in json.loads(stages["data"])] == list(STAGES)
    assert len(arts["image"]) == len(report["figures"])  # the report's figures, from the report subflow
    assert {a["key"] for a in arts["markdown"]} == {"pipeline-summary", "pipeline-report"}  # summary, report link
    (summary,) = [a for a in arts["markdown"] if a["key"] == "pipeline-summary"]
    assert f"{model} test balanced accuracy" in summary["data"] and "saliency sparseness" in summary["data"]

    again = pipeline_flow(params)["results"]
    assert again["ingest"][0]["status"] == "up-to-date" and all(r["reused"] for r in again["train"] + again["predict"])
    assert again["attribute"]["chunks_run"] == 0 and again["attribute"]["compared"][0]["chunks_run"] == 0
    assert again["evaluate"]["chunks_run"] == 0


def test_compare_models_change_the_train_section(tmp_path):
    """`compare:` entries are the `train:` section with changes (nested keys merged), each a run config of its
    own whose `{train: this}` is that model, explained with its own methods."""
    from xaiflow.config import ConfigError, load_config

    run = load_config(tiny_pipeline_config(tmp_path, compare=True))
    (other,) = run.compared()
    assert other.train == run.train.model_copy(update={"seed": 1})
    assert [m.name for m in other.attribution.methods] == ["grad_cam"] and other.attribution.model is None
    assert other.features is None and other.compare == []
    data = yaml.safe_load((tmp_path / "run.yaml").read_text())
    data["compare"] = [{"name": "x", "train": {"augment": {"flips": False}}}, {"name": "x", "train": {}}]
    (tmp_path / "run.yaml").write_text(yaml.safe_dump(data))
    with pytest.raises(ConfigError, match="compare names must be unique"):
        load_config(tmp_path / "run.yaml")
    data["compare"] = data["compare"][:1]
    (tmp_path / "run.yaml").write_text(yaml.safe_dump(data))
    (flips_off,) = load_config(tmp_path / "run.yaml").compared()
    assert not flips_off.train.augment.flips and flips_off.train.augment.rot90  # one nested key changed


def test_pipeline_failure_names_the_stage_in_its_table(prefect_harness, tmp_path):
    from xaiflow_flows.pipeline import PipelineParams, pipeline_flow

    config = write_tiny_run_config(tmp_path)
    params = PipelineParams(config_path=str(config), workspace=str(tmp_path / "empty.zarr"), cluster="threads",
                            stages=["train"])
    state = pipeline_flow(params, return_state=True)
    assert state.is_failed()
    (table,) = [a for a in _artifacts(state.state_details.flow_run_id)["table"] if a["key"] == "pipeline-stages"]
    rows = {r["stage"]: r for r in json.loads(table["data"])}
    assert rows["ingest"]["status"] == "skipped (not selected)" and rows["train"]["status"] == "failed"
    assert "images/syn" in rows["train"]["result"]
