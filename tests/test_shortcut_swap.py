"""The content-swap shortcut test on real trained models, verdicts on balanced accuracy, the
evidence/suspect mask classes from the CLI, and the training-split warning.

The collection (tests/databar.py): 72 micrographs of 48 px, three classes, whose structures carry
no class information; the class is written only in the *content* of a data bar at a fixed
position (the length of its scale bar). A small CNN trained on it reads the bar: swapping the
bar between images of different classes sends the prediction to the donor's class. The same
collection with the bar's content drawn independently of the class gives a model at chance that
follows nothing. Measured before writing the test (12 epochs): the bar model had balanced
accuracy 0.72-0.78 on val+test and followed the donor's class in 75-92% of swaps (measured again
with the rates paired with the unedited predictions: 75% against 12% for the unedited images of
the same pairs and 31% with a random image's bar; balanced accuracy 0.74 -> 0.15 under the swap,
-> 0.31 with a random image's bar, paired 95% interval of the difference 0.09-0.24); the
randomized model predicted one class (balanced accuracy 0.33) and followed the donor in 33% of
swaps, exactly as often as its unedited predictions did.
"""

import json
import shutil

import numpy as np
import pytest
import torch
import xarray as xr
import yaml
import zarr
from cli_run import run
from conftest import train_tiny
from databar import databar_config, write_databar_collection

from xaiflow import store
from xaiflow.attribution.engine import run_attribution
from xaiflow.conclusion import conclusion
from xaiflow.config import AttributionConfig, parse_config
from xaiflow.ingest import ingest_dataset
from xaiflow.maskspec import MaskSelection
from xaiflow.scores import balanced_accuracy
from xaiflow.shortcut import (
    INCONCLUSIVE,
    SHORTCUT,
    STRUCTURE,
    ShortcutError,
    Thresholds,
    _Masks,
    _predict,
    content_swap,
    decide_masks,
    shortcut_report,
    swap_pairs,
)

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
    # against the unedited predictions of the same pairs (the recipient already predicted as the donor's class)
    assert 0 < follow["chance"] <= 0.5 and follow["excess_ci"][0] >= th["follow_margin"]
    assert follow["over_reference_ci"][0] > 0  # and beyond a random image's bar
    cond = swap["conditions"]
    assert cond["original"]["balanced_accuracy"] - cond["swap"]["balanced_accuracy"] >= th["swap_collapse"]
    assert swap["collapse"] > swap["reference_drop"] and swap["collapse_over_reference_ci"][0] > 0
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
    assert "%" in text and "Caution:" in text and "not the structure" in text and "for the unedited images" in text


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


class _Reads(torch.nn.Module):
    """A 4-class model that reads one band of rows only: mean above the images' mean -> class 1, else 0."""

    def __init__(self, rows: slice) -> None:
        super().__init__()
        self.rows = rows

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        hi = (x[:, 0, self.rows].mean((1, 2)) > 0).float()
        return torch.stack([5 * (1 - hi), 5 * hi, 0 * hi, 0 * hi], 1)


def _two_of_four(bar_tells_class: bool) -> tuple[_Masks, np.ndarray, np.ndarray]:
    """80 images of 16 px labelled 0 or 1 of 4 declared classes: the top half bright or dark at random
    (independent of the label), a bar in the bottom rows (mask class ``shortcut``; random, or bright for
    class 1 and dark for class 0), and no bar pixels in the masks of images 0-9 and 40-49."""
    rng = np.random.default_rng(0)
    n, h = 80, 16
    labels = np.repeat([0, 1], n // 2)
    img = np.zeros((n, h, h), np.uint8)
    img[:, :8] = np.where(rng.integers(0, 2, n), 200, 50)[:, None, None]
    img[:, 12:] = (np.where(labels, 230, 20)[:, None, None] + rng.integers(-10, 10, (n, 4, h)) if bar_tells_class
                   else rng.integers(0, 256, (n, 4, h)))
    masks = np.zeros((n, h, h), np.uint8)
    masks[:, 4:8] = 1
    masks[:, 12:] = 2
    masks[np.r_[0:10, 40:50], 12:] = 0
    dims = ("sample", "y", "x")
    data = _Masks(xr.DataArray(img, dims=dims), xr.DataArray(masks, dims=dims), [str(v) for v in labels],
                  ["matrix", "structure", "shortcut"], MaskSelection(("structure",)), MaskSelection(("shortcut",)))
    return data, labels, img


def test_swap_of_an_ignored_region_with_classes_missing_is_no_shortcut():
    """Review finding: judged images of 2 of 4 declared classes and a model that reads only the top half.
    The swap changes no prediction, yet the prediction "is the donor's class" in half the pairs; the old
    chance level (donor classes uniform over 3 other classes: at most 1/3) called that a shortcut. Measured
    against the unedited predictions of the same kept pairs, the excess is exactly 0."""
    data, labels, img = _two_of_four(bar_tells_class=False)
    model = _Reads(slice(0, 8))
    original = _predict(model, img.astype(np.float32), img.dtype, "cpu")
    present = data.suspect_present()
    swap = content_swap(model, data, labels, original, 4, present, per_sample=2, device="cpu")
    assert swap["n_pairs"] < 2 * len(labels)  # pairs without bar pixels in either image are left out
    f = swap["follow_donor"]
    assert f["rate"] >= 0.3  # far above the old chance level of at most (1/3) * share changed = 0
    assert f["chance"] == f["rate"] and f["excess"] == 0 and f["excess_ci"] == [0.0, 0.0]
    fp = swap["follow_donor_prediction"]
    assert fp["excess"] == 0 and fp["excess_ci"] == [0.0, 0.0]
    assert swap["collapse"] == 0
    bal = {"accuracy": float((original == labels).mean()), "balanced_accuracy": balanced_accuracy(labels, original)}
    verdict, reasons = decide_masks(bal, {"structure": 0.0, "shortcut_moved": 0.0}, {}, swap, 0.25, Thresholds())
    assert verdict != SHORTCUT, reasons


def test_swap_of_a_read_region_with_classes_missing_is_a_shortcut():
    """The control: the same layout, a bar that tells the class and a model that reads only the bar."""
    data, labels, img = _two_of_four(bar_tells_class=True)
    model = _Reads(slice(12, 16))
    original = _predict(model, img.astype(np.float32), img.dtype)
    assert (original == labels).all()
    swap = content_swap(model, data, labels, original, 4, data.suspect_present(), per_sample=2)
    f = swap["follow_donor"]
    assert f["chance"] == 0 and f["excess_ci"][0] >= 0.9 and f["over_reference_ci"][0] > 0
    verdict, reasons = decide_masks({"accuracy": 1.0, "balanced_accuracy": 1.0}, {"structure": 0.0}, {}, swap,
                                    0.25, Thresholds())
    assert verdict == SHORTCUT and reasons[0].startswith("swapping the shortcut content"), reasons


def test_collapse_counts_only_beyond_random_content():
    """A swap that lowers balanced accuracy no more than a random image's content does is not read for its
    class (a large suspect region can break a model under any pasted content)."""
    th = Thresholds()
    quiet = {"rate": 0.3, "n": 60, "ci": [0.2, 0.4], "chance": 0.3, "excess": 0.0, "excess_ci": [-0.1, 0.1],
             "reference": 0.3, "reference_ci": [0.2, 0.4], "over_reference": 0.0, "over_reference_ci": [-0.1, 0.1]}
    conditions = {k: {"balanced_accuracy": v} for k, v in (("original", 0.9), ("swap", 0.4), ("random_image", 0.4))}
    swap = {"n_pairs": 60, "follow_donor": quiet, "follow_donor_prediction": quiet, "conditions": conditions,
            "collapse": 0.5, "reference_drop": 0.5, "collapse_over_reference_ci": [-0.08, 0.08]}
    original = {"accuracy": 0.9, "balanced_accuracy": 0.9}
    assert decide_masks(original, {"structure": 0.0}, {}, swap, 1 / 3, th)[0] != SHORTCUT
    swap |= {"reference_drop": 0.2, "collapse_over_reference_ci": [0.2, 0.4]}
    verdict, reasons = decide_masks(original, {"structure": 0.0}, {}, swap, 1 / 3, th)
    assert verdict == SHORTCUT and "with a random image's content 0.20" in reasons[0]


def test_training_overlap_counts_the_judged_samples(bars, tmp_path):
    """With masks on a subset, the training-split warning counts over the same samples as n_samples."""
    ws = tmp_path / "ws.zarr"
    shutil.copytree(bars["bar"][0], ws)
    shutil.copytree(store.models_dir(bars["bar"][0]), store.models_dir(ws))
    flags = zarr.open_array(str(ws / "masks" / "bar" / "has_mask"), mode="r+")
    keep = np.arange(flags.shape[0]) % 3 == 0
    flags[:] = keep
    rep = shortcut_report(ws, bars["bar"][1], evidence="structure", suspect="databar", device="cpu")
    assert rep.n_samples == keep.sum()
    images = store.open_group(ws, "images/bar")
    split = store.strings(images["split"].values)[keep]
    assert rep.training_overlap == {s: int((split == s).sum()) for s in ("train", "val")}
    assert f"of the {rep.n_samples} judged samples" in rep.warnings[0]
    assert f"{sum(rep.training_overlap.values())} of the {rep.n_samples} judged images" in conclusion(rep)
