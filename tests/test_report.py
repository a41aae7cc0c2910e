"""HTML report and shortcut command on a real tiny workspace: sections, embedded figures, metric
spread, and clear errors (unknown model, no saliency, method not computed)."""

import json
import re

import numpy as np
import pytest
from cli_run import run
from conftest import ingest_synthetic, train_tiny

from xaiflow.attribution.engine import run_attribution
from xaiflow.config import AttributionConfig
from xaiflow.metrics.runner import run_metrics
from xaiflow.models.catalog import ModelNotFoundError
from xaiflow.report import ReportError, metric_table, write_report

pytestmark = pytest.mark.slow  # trains, attributes, computes metrics and renders reports


@pytest.fixture(scope="module")
def tiny(tmp_path_factory, client):
    ws = tmp_path_factory.mktemp("report") / "ws.zarr"
    ingest_synthetic(ws, client, images_per_specimen=2, shortcut={"probability": 0.8})
    model_id = train_tiny(ws, model_params={"widths": [8, 8]})
    run_attribution(ws, AttributionConfig(dataset="syn", model=model_id, device="cpu",
                                          methods=["saliency", "grad_cam"]), client=client)
    return ws, model_id


def test_report_sections_figures_and_metrics(tiny, client, tmp_path):
    ws, model = tiny
    path = write_report(ws, model, out=tmp_path / "r1")
    page = path.read_text()
    for title in ("Shortcut verdict", "Example overlays", "Class-mean maps", "Metrics", "Method agreement",
                  "Mask agreement"):
        assert title in page
    assert "Metrics were not computed" in page
    assert f"Not computed: <code>xaiflow uncertainty -w {ws} -m {model}</code>" in page
    for command in ("adversarial", "concepts", "importance", "probe"):
        assert f"Not computed: <code>xaiflow {command} -w {ws} -m {model}" in page
    assert len(re.findall(r"src='data:image/png;base64,", page)) == 5  # examples, means, 2 agreement, mask
    assert {"examples.png", "class_means.png", "mask_ratio.png", "shortcut.json"} <= {p.name for p in path.parent.iterdir()}
    verdict = json.loads((path.parent / "shortcut.json").read_text())["verdict"]
    assert f"class='verdict {verdict}'" in page

    run_metrics(ws, "syn", model, ["sparseness", "entropy"], device="cpu", client=client)
    rows = metric_table(ws, "syn", model)
    sparse = next(r for r in rows if r["method"] == "saliency" and r["metric"] == "sparseness")
    assert sparse["n"] == 18 and sparse["p10"] <= sparse["median"] <= sparse["p90"] and np.isfinite(sparse["std"])
    page = write_report(ws, model, out=tmp_path / "r2").read_text()
    assert "Metrics were not computed" not in page and f"{sparse['mean']:.3f} ± {sparse['std']:.3f}" in page


def test_report_errors(tiny):
    ws, model = tiny
    with pytest.raises(ModelNotFoundError, match="no trained model 'nope'"):
        write_report(ws, "nope")
    with pytest.raises(ReportError, match=r"method\(s\) \['lime'\] not computed"):
        write_report(ws, model, methods=["lime"])
    with pytest.raises(ReportError, match="no saliency computed for dataset 'other'"):
        write_report(ws, model, dataset="other")


@pytest.mark.timeout(300)  # the commands run in this process: no subprocess timeout
def test_cli_report_and_shortcut(tiny, tmp_path):
    ws, model = tiny
    res = run("report", "-w", str(ws), "--model", model, "--out", str(tmp_path / "cli"))
    assert res.returncode == 0, res.stderr
    assert (tmp_path / "cli" / "report.html").is_file()
    js = run("shortcut", "-w", str(ws), "--model", model, "--json")
    assert js.returncode == 0, js.stderr
    data = json.loads(js.stdout)
    assert data["kind"] == "masks" and data["verdict"] in {"shortcut", "structure", "inconclusive"}
    bad = run("report", "-w", str(ws), "--model", "nope")
    assert bad.returncode == 2 and "no trained model 'nope'" in bad.stderr and "Traceback" not in bad.stderr


def test_report_uncertainty_and_adversarial_sections(tiny, client, tmp_path):
    from xaiflow.adversarial import AttackSettings, inspect_adversarial
    from xaiflow.uncertainty import estimate_uncertainty

    ws, model = tiny
    estimate_uncertainty(ws, [model], "syn", passes=4, client=client)
    inspect_adversarial(ws, model, "syn", attack=AttackSettings(epsilon=1.0, steps=4, step_size=0.5), split=None,
                        max_samples=6, client=client)
    page = write_report(ws, model, out=tmp_path / "r3").read_text()
    section = page[page.index("<h2>7. Uncertainty</h2>"):page.index("<h2>8. Concepts (TCAV)</h2>")]
    assert f"uncertainty/syn/{model} (mc dropout, 4 draws per sample, test split)" in section
    assert re.search(r"expected calibration error \d\.\d{3}: the model is ", section)
    assert "reliability diagram" in section
    adversarial = page[page.index("<h2>11. Adversarial inspection</h2>"):]
    assert "6 samples attacked (epsilon 1, PGD 4 steps)" in adversarial and "fisher_trace" in adversarial
    assert (tmp_path / "r3" / "reliability.png").is_file() and (tmp_path / "r3" / "adversarial_scores.png").is_file()
