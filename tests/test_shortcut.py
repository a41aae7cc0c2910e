"""Shortcut report on real trained models: a planted shortcut is flagged, its absence is not.

Three tiny small CNNs on 48 px synthetic micrographs (3 classes x 6 specimens x 3 images): one
trained with a strong marker at its class's corner in every image, one without any marker, one
with the marker at a random corner (present but meaningless). Checked by hand before writing
the test (12 epochs): moving the marker to the mirrored corners cost the shortcut model 0.46
accuracy (1.00 -> 0.54) and the random-marker model 0.09; removing the structures cost the
clean model 0.65. Merely removing the marker cost the random-marker model 0.33, which is why
removal does not decide. Drops are in balanced accuracy; the evidence and suspect mask classes
default to the synthetic source's ``structure`` and ``shortcut``.
"""

import json

import numpy as np
import pytest

from conftest import ingest_synthetic, train_tiny
from xaiflow import store
from xaiflow.attribution.engine import run_attribution
from xaiflow.config import AttributionConfig
from xaiflow.models.catalog import ModelNotFoundError
from xaiflow.shortcut import SHORTCUT, STRUCTURE, ShortcutError, shortcut_report

pytestmark = pytest.mark.slow  # three trainings + attribution: ~60 s at load 7


def _trained(ws, shortcut, client):
    ingest_synthetic(ws, client, specimens_per_class=6, size=48, chunk_size=16, shortcut=shortcut)
    model_id = train_tiny(ws, epochs=12, batch_size=8, lr=0.005, patience=20, model_params={"widths": [8, 16, 32]},
                          augment={"crop": None, "flips": False, "rot90": False})
    run_attribution(ws, AttributionConfig(dataset="syn", model=model_id, device="cpu",
                                          methods=["saliency", "input_x_gradient"]), client=client)
    return model_id


@pytest.fixture(scope="module")
def models(tmp_path_factory, client):
    root = tmp_path_factory.mktemp("shortcut")
    return {name: (root / f"{name}.zarr", _trained(root / f"{name}.zarr", sc, client))
            for name, sc in [("planted", {"probability": 1.0, "size": 32}), ("clean", None),
                             ("random", {"probability": 1 / 3, "size": 32})]}


def test_planted_shortcut_is_flagged(models):
    ws, model = models["planted"]
    rep = shortcut_report(ws, model)
    assert rep.kind == "masks" and rep.verdict == SHORTCUT, rep.reasons
    assert rep.evidence == ["structure"] and rep.suspect == ["shortcut"]
    assert rep.ablation["drop"]["shortcut_moved"] >= rep.thresholds["ablation_drop"]
    # swapping the marker region (the union of both images' corners) moves the donor's marker in: the model
    # (which also reads the structures) follows the donor's class more often than chance (measured: excess
    # over chance with a 95% interval from +0.02)
    follow = rep.content_swap["follow_donor"]
    assert rep.content_swap["n_pairs"] == 2 * rep.n_samples and follow["excess_ci"][0] > 0, follow
    assert rep.shortcut_split["n_with"] == rep.n_samples  # probability 1.0: every image has it
    rows = {(r["method"], r["mask_class"]): r for r in rep.mask_mass}
    assert rows[("saliency", "shortcut")]["area_share"] > 0
    data = json.loads(rep.to_json())
    assert data["verdict"] == SHORTCUT and data["reasons"]


def test_clean_model_is_not_flagged(models):
    ws, model = models["clean"]
    rep = shortcut_report(ws, model)
    assert rep.verdict == STRUCTURE, rep.reasons
    assert "shortcut" not in rep.ablation["drop"] and rep.content_swap == {}  # no marker pixels to remove or swap
    assert rep.ablation["drop"]["structure"] >= rep.thresholds["ablation_drop"]
    assert np.isnan([r["ratio"] for r in rep.mask_mass if r["mask_class"] == "shortcut"]).all()


def test_meaningless_marker_is_not_flagged(models):
    ws, model = models["random"]
    rep = shortcut_report(ws, model)
    assert rep.verdict != SHORTCUT, rep.reasons
    assert rep.ablation["drop"]["shortcut_moved"] < rep.thresholds["ablation_drop"]
    assert rep.shortcut_split["usable"] and abs(rep.shortcut_split["gap"]) < rep.thresholds["split_gap"]


def test_metadata_path_and_errors(models):
    ws, model = models["clean"]
    with pytest.raises(ModelNotFoundError, match="no trained model 'nope'"):
        shortcut_report(ws, "nope")
    with pytest.raises(ShortcutError, match="no dataset 'other'"):
        shortcut_report(ws, model, "other")
    store.delete_group(ws, "masks/syn")  # without masks: the metadata report (one um_per_px: no confound)
    rep = shortcut_report(ws, model, split="train")
    assert rep.kind == "metadata" and rep.metadata["cramers_v_label"] == 0.0
    assert len(rep.metadata["per_bin"]) == 1 and rep.metadata["per_bin"][0]["n"] == rep.n_samples
    assert {r["method"] for r in rep.metadata["attribution_by_bin"]} == {"saliency", "input_x_gradient"}
    # judged on the training split: said, with the count
    assert rep.training_overlap == {"train": rep.n_samples} and len(rep.warnings) == 1
    assert rep.warnings[0].startswith(f"{rep.n_samples} in its training split")
    rep = shortcut_report(ws, model, evidence="structure")  # test split: no overlap; no masks to use the classes on
    assert rep.training_overlap == {} and len(rep.warnings) == 1 and "not used" in rep.warnings[0]
