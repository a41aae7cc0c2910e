"""Localization metrics against expert masks of several named classes, on a real workspace: masks
for a subset of the images, a per-label region choice and several metric keys with different regions
in one run, each number stored beside its chance level (the region's area share)."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from cli_run import run
from conftest import folder_config, train_tiny, write_folder_dataset
from xaiflow import store
from xaiflow.attribution.engine import run_attribution
from xaiflow.config import AttributionConfig, parse_config
from xaiflow.ingest import ingest_dataset
from xaiflow.metrics.localization import pointing_game, relevance_mass_accuracy, relevance_rank_accuracy
from xaiflow.metrics.runner import MetricsError, metrics_group, run_metrics
from xaiflow.plugins import PluginSpec
from xaiflow.report import metric_table
from xaiflow.saliency import open_saliency

CLASSES = ["matrix", "carbide_network", "spheroidite", "widmanstatten"]
LABELS = ("network", "spheroidite", "pearlite")
UNANNOTATED = ("s0_1", "s1_1", "s2_1", "s4_0")
EVIDENCE = {"network": "carbide_network", "spheroidite": "spheroidite"}  # pearlite: no region
RUN_LEVEL = {"pearlite": "widmanstatten", "*": ["carbide_network", "spheroidite", "widmanstatten"]}
METRICS = [
    {"name": "pointing_game", "key": "pg_evidence", "params": {"mask_class": EVIDENCE}},
    {"name": "relevance_mass_accuracy", "key": "rma_evidence",
     "params": {"mask_class": "network=carbide_network,spheroidite=spheroidite"}},
    {"name": "relevance_rank_accuracy", "key": "rra_any"},  # the run's selection
]


@pytest.fixture(scope="module")
def ws(tmp_path_factory, client):
    """12 noise micrographs of three classes (6 specimens), 4-class index masks for 8 of them, a
    1-epoch CNN and saliency/grad_cam maps of every image."""
    tmp = tmp_path_factory.mktemp("mask_selection")
    root = write_folder_dataset(tmp / "data", n_specimens=6, per_specimen=2, classes=LABELS)
    rng = np.random.default_rng(3)
    (root / "masks").mkdir()
    for png in sorted((root / "img").glob("*.png")):
        if png.stem not in UNANNOTATED:
            blocks = rng.integers(0, 4, (6, 8)).astype(np.uint8)  # 8x8 px blocks of random classes
            Image.fromarray(np.kron(blocks, np.ones((8, 8), np.uint8))).save(root / "masks" / png.name)
    cfg = folder_config(root, source={"masks": {"dir": "masks", "classes": CLASSES}},
                        split={"fractions": {"train": 0.5, "val": 0.17, "test": 0.33}})
    ws = tmp / "ws.zarr"
    ingest_dataset(parse_config({"datasets": [cfg]}).datasets[0], ws, client=client)
    model_id = train_tiny(ws, "tiny")
    run_attribution(ws, AttributionConfig(dataset="tiny", model=model_id, device="cpu",
                                          methods=[PluginSpec(name="saliency"), PluginSpec(name="grad_cam")]),
                    client=client)
    return ws, model_id


def expected_regions(ws, selection: dict[str, list[str]]) -> np.ndarray:
    """Regions by the definition: the selected classes of each image's label, empty without a mask."""
    masks = store.open_group(ws, "masks/tiny")
    labels = store.strings(masks.label.values)
    out = np.zeros(masks.mask.shape, bool)
    for i, lab in enumerate(labels):
        if masks.has_mask.values[i]:
            out[i] = np.isin(masks.mask.values[i], [CLASSES.index(c) for c in selection.get(lab, selection["*"])])
    return out


def test_per_label_selections_and_keys_in_one_run(ws, client):
    ws, model_id = ws
    res = run_metrics(ws, "tiny", model_id, METRICS, mask_class=RUN_LEVEL, device="cpu", client=client)
    assert res.chunks_run == res.chunks_total
    ds = store.open_group(ws, metrics_group("tiny", model_id))
    assert set(store.strings(ds.metric.values)) == {"pg_evidence", "pg_evidence_chance", "rma_evidence",
                                                    "rma_evidence_chance", "rra_any", "rra_any_chance"}
    identities = ds.attrs["metrics"]
    evidence = {"network": ["carbide_network"], "spheroidite": ["spheroidite"], "*": []}
    assert identities["pg_evidence"]["mask_classes"] == identities["rma_evidence"]["mask_classes"] == evidence
    assert "mask_class" not in identities["pg_evidence"]["params"]  # the runner's, not the metric's
    anything = {"pearlite": ["widmanstatten"], "*": ["carbide_network", "spheroidite", "widmanstatten"]}
    assert identities["rra_any"]["mask_classes"] == anything
    outputs = ds.attrs["outputs"]
    assert outputs["pg_evidence"]["chance"] == "pg_evidence_chance"
    assert outputs["pg_evidence"]["mask_classes"] == ("network -> carbide_network; spheroidite -> spheroidite; "
                                                      "others -> (none)")
    assert outputs["rra_any_chance"]["chance_of"] == "rra_any"

    sal = open_saliency(ws, "tiny", model_id, ["saliency", "grad_cam"])
    has = store.open_group(ws, "masks/tiny").has_mask.values
    labels = store.strings(ds.label.values)
    assert (~has).sum() == len(UNANNOTATED)
    for key, function, selection in (("pg_evidence", pointing_game, evidence),
                                     ("rma_evidence", relevance_mass_accuracy, evidence),
                                     ("rra_any", relevance_rank_accuracy, anything)):
        region = expected_regions(ws, selection)
        share = region.mean(axis=(1, 2))
        for method in ("saliency", "grad_cam"):
            maps = sal.saliency.sel(xai_method=method).values
            stored = ds.value.sel(xai_method=method, metric=key).values
            np.testing.assert_allclose(stored, function(maps, region), rtol=1e-5, equal_nan=True, err_msg=key)
            assert np.isnan(stored[~has]).all()  # no mask: NaN, never a score of 0
            chance = ds.value.sel(xai_method=method, metric=f"{key}_chance").values
            np.testing.assert_allclose(chance, np.where(share > 0, share, np.nan), rtol=1e-6, equal_nan=True)
        assert np.isfinite(ds.value.sel(xai_method="saliency", metric=key).values[has & (labels != "pearlite")]).any()
    pearlite = has & (labels == "pearlite")
    assert pearlite.any() and np.isnan(ds.value.sel(metric="pg_evidence").values[pearlite]).all()
    assert np.isfinite(ds.value.sel(xai_method="saliency", metric="rra_any").values[pearlite]).all()

    # the report's metrics table: every localization mean beside its chance level over the same samples
    rows = {(r["method"], r["metric"]): r for r in metric_table(ws, "tiny", model_id)}
    assert not [m for _, m in rows if m.endswith("_chance")]
    row = rows[("saliency", "pg_evidence")]
    value = ds.value.sel(xai_method="saliency", metric="pg_evidence").values
    chance = ds.value.sel(xai_method="saliency", metric="pg_evidence_chance").values
    assert row["chance"] == pytest.approx(np.nanmean(chance[np.isfinite(value)]))
    assert row["mask_classes"] == outputs["pg_evidence"]["mask_classes"]

    # another region under a stored key is another identity
    with pytest.raises(MetricsError, match=r"'pg_evidence' is stored with .*carbide_network.*another key"):
        run_metrics(ws, "tiny", model_id, [{"name": "pointing_game", "key": "pg_evidence",
                                            "params": {"mask_class": "spheroidite"}}], client=client)


def test_bad_selections_name_the_key_and_the_valid_values(ws, client):
    ws, model_id = ws
    with pytest.raises(MetricsError, match=r"metrics\[pg_x\] on masks/tiny: mask selection names unknown image "
                                           r"label\(s\) \['bainite'\]; labels: "
                                           r"\['network', 'pearlite', 'spheroidite'\]"):
        run_metrics(ws, "tiny", model_id, [{"name": "pointing_game", "key": "pg_x",
                                            "params": {"mask_class": {"bainite": "spheroidite"}}}], client=client)
    with pytest.raises(MetricsError, match=r"unknown mask class\(es\) \['carbide'\]; valid: \['matrix', "):
        run_metrics(ws, "tiny", model_id, ["pointing_game"], mask_class="network=carbide", client=client)


def test_evaluate_cli_prints_chance_and_region(ws):
    ws, model_id = ws
    res = run("evaluate", "-w", str(ws), "-d", "tiny", "-m", model_id, "--metrics", "pointing_game,sparseness",
              "--methods", "saliency", "--mask-class", "network=carbide_network,*=spheroidite+widmanstatten",
              "--cluster", "threads")
    assert res.returncode == 0, res.stderr
    out = " ".join(res.stdout.split())
    assert "(chance 0." in out and "pointing_game_chance" not in out
    assert ("pointing_game: region = mask classes network -> carbide_network; others -> spheroidite+widmanstatten"
            in out)
    bad = run("evaluate", "-w", str(ws), "-d", "tiny", "-m", model_id, "--metrics", "relevance_mass_accuracy",
              "--mask-class", "network=carbide", "--cluster", "threads")
    assert bad.returncode == 2 and "unknown mask class(es) ['carbide']" in bad.stderr and "Traceback" not in bad.stderr
