"""The content-swap shortcut test on real trained models, verdicts on balanced accuracy, the
evidence/suspect mask classes from the CLI, and the training-split warning.

The collection (tests/databar.py): 72 micrographs of 48 px, three classes, whose structures carry
no class information; the class is written only in the *content* of a data bar at a fixed
position (the length of its scale bar). A small CNN trained on it reads the bar: swapping the
bar between images of different classes sends the prediction to the donor's class. The same
collection with the bar's content drawn independently of the class gives a model at chance that
follows nothing. Measured before writing the test (12 epochs): the bar model had balanced
accuracy 0.72-0.78 on val+test and followed the donor's class in 83-92% of swaps (chance 46-50%);
the randomized model predicted one class (balanced accuracy 0.33) and followed the donor in 33%.
"""

import json

import numpy as np
import pytest
import yaml

from cli_run import run
from conftest import train_tiny
from databar import databar_config, write_databar_collection
from xaiflow.attribution.engine import run_attribution
from xaiflow.conclusion import conclusion
from xaiflow.config import AttributionConfig, parse_config
from xaiflow.ingest import ingest_dataset
from xaiflow.scores import balanced_accuracy
from xaiflow.shortcut import (INCONCLUSIVE, SHORTCUT, STRUCTURE, ShortcutError, Thresholds, decide_masks,
                              shortcut_report, swap_pairs)

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _bar_model(root, client, randomized: bool) -> tuple[str, str]:
    data = write_databar_collection(root / "data", randomized=randomized)
    ws = root / "ws.zarr"
    ingest_dataset(parse_config({"datasets": [databar_config(data)]}).datasets[0], ws, client=client)
    model = train_tiny(ws, dataset="bar", epochs=12, batch_size=8, lr=0.01, patience=20,
                       model_params={"widths": [8, 16]}, augment={"crop": None, "flips": False, "rot90": False})
    run_attribution(ws, AttributionConfig(dataset="bar", model=model, device="cpu", methods=["saliency"]),
                    client=client)
    return str(ws), model


@pytest.fixture(scope="module")
def bars(tmp_path_factory, client):
    """{"bar": (workspace, model), "randomized": (workspace, model)}; maps of every split."""
    return {name: _bar_model(tmp_path_factory.mktemp(name), client, name == "randomized")
            for name in ("bar", "randomized")}


@pytest.fixture(scope="module")
def bar_report(bars):
    ws, model = bars["bar"]
    return shortcut_report(ws, model, evidence="structure", suspect="databar")


def test_content_swap_flags_a_shortcut_in_the_bar_content(bar_report):
    rep = bar_report
    assert rep.kind == "masks" and rep.verdict == SHORTCUT, rep.reasons
    assert rep.evidence == ["structure"] and rep.suspect == ["databar"]
    swap, th = rep.content_swap, rep.thresholds
    assert rep.balanced_accuracy >= 0.6  # the model reads the bar (structures carry nothing)
    assert swap["n_pairs"] == 2 * rep.n_samples  # every image has a bar: no pair left out
    follow = swap["follow_donor"]
    assert follow["rate"] >= 0.75 and follow["ci"][0] <= follow["rate"] <= follow["ci"][1]
    # chance: a prediction independent of the donor hits its class with P([q != recipient class] / 2) <= 1/2
    assert 0 < follow["chance"] <= 0.5 and follow["excess_ci"][0] >= th["follow_margin"]
    cond = swap["conditions"]
    assert cond["original"]["balanced_accuracy"] - cond["swap"]["balanced_accuracy"] >= th["swap_collapse"]
    lo, hi = cond["swap"]["balanced_accuracy_ci"]
    assert lo <= cond["swap"]["balanced_accuracy"] <= hi < cond["original"]["balanced_accuracy_ci"][0]
    # balanced over ordered class pairs: 24 images x 2 swaps per class, half to each other class
    assert set(swap["class_pairs"].values()) == {24} and len(swap["class_pairs"]) == 6
    assert any(r.startswith("swapping the databar content") for r in rep.reasons)
    data = json.loads(rep.to_json())
    assert data["content_swap"]["follow_donor"]["rate"] == pytest.approx(follow["rate"])


def test_randomized_bar_is_not_flagged(bars):
    ws, model = bars["randomized"]
    rep = shortcut_report(ws, model, evidence="structure", suspect="databar")
    assert rep.verdict != SHORTCUT, rep.reasons
    follow = rep.content_swap["follow_donor"]
    assert follow["excess_ci"][0] < rep.thresholds["follow_margin"]
    assert rep.content_swap["collapse"] < rep.thresholds["swap_collapse"]


def test_training_split_warning_and_conclusion(bar_report):
    rep = bar_report
    # the maps cover every split, so the judged samples include the model's training and validation images
    assert rep.training_overlap["train"] > 0 and rep.training_overlap["val"] > 0
    assert sum(rep.training_overlap.values()) < rep.n_samples  # the test split is not counted
    assert len(rep.warnings) == 1
    assert f"{rep.training_overlap['train']} in its training split" in rep.warnings[0]
    text = conclusion(rep)
    assert text.startswith("The model's predictions follow the content of the databar")
    assert "%" in text and "Caution:" in text and "not the structure" in text


def test_swap_pairs_are_seeded_and_balanced():
    labels = np.repeat([0, 1, 2, 3], [10, 7, 7, 4])
    rec, don = swap_pairs(labels, 3, np.random.default_rng(5))
    again = swap_pairs(labels, 3, np.random.default_rng(5))
    assert np.array_equal(rec, again[0]) and np.array_equal(don, again[1])
    assert len(rec) == 3 * len(labels) and (labels[rec] != labels[don]).all()
    assert np.array_equal(np.bincount(rec, minlength=len(labels)), np.full(len(labels), 3))
    for c in range(4):  # each recipient class's swaps are spread evenly over the other classes
        counts = np.bincount(labels[don][labels[rec] == c], minlength=4)
        others = np.delete(counts, c)
        assert others.max() - others.min() <= 1


def test_verdicts_use_balanced_accuracy():
    th = Thresholds()
    # the case: 6 imbalanced classes; removing the structures sends balanced accuracy from 0.46 to
    # chance (0.17) while plain accuracy barely moves (the majority class is still found)
    y = np.repeat(np.arange(6), [70, 6, 6, 6, 6, 6])
    before = np.where(np.arange(len(y)) % 3 == 0, y, 0)  # the majority class, a third of the others
    after = np.zeros_like(y)  # everything the majority class
    bal = {"accuracy": float((before == y).mean()), "balanced_accuracy": balanced_accuracy(y, before)}
    drop_plain = bal["accuracy"] - float((after == y).mean())
    drop_bal = bal["balanced_accuracy"] - balanced_accuracy(y, after)
    assert drop_plain < th.ablation_drop <= drop_bal  # plain accuracy would call it "inconclusive"
    verdict, reasons = decide_masks(bal, {"structure": drop_bal}, {}, {}, 1 / 6, th)
    assert verdict == STRUCTURE and "balanced accuracy" in reasons[0]
    # a majority-class guesser: plain accuracy 0.7 looks learned, balanced accuracy says chance
    guess = {"accuracy": float((after == y).mean()), "balanced_accuracy": balanced_accuracy(y, after)}
    assert guess["accuracy"] >= 0.7 and decide_masks(guess, {"structure": 0.0}, {}, {}, 1 / 6, th)[0] == INCONCLUSIVE


def test_near_chance_model_following_its_shortcut_is_flagged():
    """A shortcut fully predictive in train/val but random in test: near chance on test, yet the
    has_shortcut split shows it follows the marker; "near chance" must not hide that."""
    th = Thresholds()
    split = {"usable": True, "gap": 0.9, "balanced_accuracy_with": 0.95, "balanced_accuracy_without": 0.05}
    verdict, reasons = decide_masks({"accuracy": 0.36, "balanced_accuracy": 0.36}, {"structure": 0.0}, split, {},
                                    1 / 3, th)
    assert verdict == SHORTCUT and "gap 0.90" in reasons[0]


def test_cli_evidence_and_suspect(bars, tmp_path):
    ws, _ = bars["bar"]
    res = run("shortcut", "-w", ws, "--evidence", "structure", "--suspect", "databar")
    assert res.returncode == 0, res.stderr
    assert res.stdout.startswith("shortcut (masks evidence") and "follow the content of the databar" in res.stdout
    assert "warning:" in res.stderr and "training split" in res.stderr
    # not the synthetic mask classes and nothing named: the error lists the mask classes
    res = run("shortcut", "-w", ws)
    assert res.returncode == 2 and "error:" in res.stderr and "'databar'" in res.stderr and "--evidence" in res.stderr
    res = run("shortcut", "-w", ws, "--evidence", "structure", "--suspect", "scale_bar")
    assert res.returncode == 2 and "scale_bar" in res.stderr and "'databar'" in res.stderr
    res = run("shortcut", "-w", ws, "--evidence", "structure,databar", "--suspect", "databar")
    assert res.returncode == 2 and "both evidence and suspect" in res.stderr
    # the config's `shortcut:` section, and the report with its conclusion, swap tables and warning
    config = tmp_path / "run.yaml"
    config.write_text(yaml.safe_dump({"datasets": [databar_config(tmp_path)],
                                      "shortcut": {"evidence": "structure", "suspect": ["databar"], "seed": 3}}))
    res = run("report", "-w", ws, "--config", config, "--out", tmp_path / "report")
    assert res.returncode == 0, res.stderr
    assert "warning:" in res.stderr
    page = (tmp_path / "report" / "report.html").read_text()
    assert page.index("<h2>Conclusion</h2>") < page.index("1. Shortcut verdict")
    assert "Content swap" in page and "class='warning'" in page and "suspect: databar" in page
    saved = json.loads((tmp_path / "report" / "shortcut.json").read_text())
    assert saved["verdict"] == SHORTCUT and saved["content_swap"]["seed"] == 3


def test_mask_roles_errors(bars):
    ws, model = bars["randomized"]
    with pytest.raises(ShortcutError, match=r"unknown mask class\(es\) \['phase'\]"):
        shortcut_report(ws, model, evidence="phase", suspect="databar")
    with pytest.raises(ShortcutError, match="evidence and which the suspect"):
        shortcut_report(ws, model)


def test_conclusion_wording_for_other_verdicts():
    from dataclasses import asdict

    from xaiflow.shortcut import ShortcutReport

    th = asdict(Thresholds())
    swap = {"n_pairs": 60, "collapse": 0.01, "follow_donor": {"rate": 0.05, "n": 60, "chance": 0.04, "ci": [0.0, 0.1],
                                                              "excess_ci": [-0.05, 0.05]}}
    rep = ShortcutReport(model_id="m", dataset="d", kind="masks", verdict=STRUCTURE, reasons=[], n_samples=30,
                         accuracy=0.9, thresholds=th, balanced_accuracy=0.88, chance=1 / 3,
                         evidence=["carbide_network"], suspect=["databar"], ablation={"drop": {"structure": 0.5}},
                         content_swap=swap)
    text = conclusion(rep)
    assert text.startswith("The model relies on the carbide network") and "5% of 60 swaps" in text
    assert "Caution" not in text
    rep.verdict, rep.balanced_accuracy, rep.training_overlap = INCONCLUSIVE, 0.35, {"train": 20}
    text = conclusion(rep)
    assert text.startswith("The model barely beats chance") and "20 of the 30 judged images" in text
    meta = {"by": "source_um_per_px", "scale_baseline": {"balanced_accuracy": 0.55}, "cramers_v_predicted": 0.8,
            "cramers_v_label": 0.6}
    rep = ShortcutReport(model_id="m", dataset="d", kind="metadata", verdict=SHORTCUT, reasons=[], n_samples=30,
                         accuracy=0.7, thresholds=th, balanced_accuracy=0.6, chance=1 / 6, metadata=meta)
    assert "probably learned the pixel size (magnification), not the microstructure" in conclusion(rep)
