"""Concept scores (TCAV) on real stores, real Dask workers and a real torch model that learned the
synthetic classes: the class-defining structure is found, the shared matrix is not."""

from __future__ import annotations

import numpy as np
import pytest
import xarray as xr
from PIL import Image

from xaiflow import concepts as cc
from xaiflow import store
from xaiflow.models.catalog import ModelCatalog

CONCEPTS = ["particles=mask:structure@particles", "lamellae=mask:structure@lamellae",
            "network=mask:structure@network", "matrix=mask:matrix"]


@pytest.fixture(scope="module")
def scored(learned, client):
    ws, model = learned
    specs = [cc.with_defaults(cc.parse_concept(c), 0.3, 0) for c in CONCEPTS]
    group = cc.run_tcav(ws, model, "syn", specs, layers=["block3"], settings=cc.TcavSettings(runs=20, examples=50),
                        client=client)
    return ws, model, group


def test_tcav_finds_the_defining_structure_of_every_class(scored):
    ws, model, group = scored
    assert group == f"concepts/syn/{model}/tcav"
    ds = xr.open_zarr(ws, group=group, consolidated=False).load()  # readable without xaiflow
    assert dict(ds["score"].sizes) == {"concept": 4, "layer": 1, "class": 3, "run": 20}
    mean = ds["mean_score"].sel(layer="block3")
    for k in ("particles", "lamellae", "network"):
        own = float(mean.sel(concept=k, **{"class": k}))
        assert bool(ds["significant"].sel(concept=k, layer="block3", **{"class": k})), (k, own)
        assert own >= float(mean.sel({"class": k}).max()) - 1e-6, k  # ranked first (ties allowed)
        assert own > float(mean.sel(concept="matrix", **{"class": k})), k
    # the matrix texture is shared by every class: its CAV is no better than chance and drives nothing
    assert not ds["significant"].sel(concept="matrix").any()
    assert float(ds["cav_accuracy"].sel(concept="matrix").mean()) < 0.65
    assert float(ds["cav_accuracy"].sel(concept="particles").mean()) > 0.7
    provenance = ds.attrs["provenance"]
    assert provenance["runs"] == 20 and provenance["examples_per_set"]["matrix"] == 50
    table = cc.tcav_table(ds)
    assert len(table) == 12 and table[0]["class"] == "particles" and table[0]["concept"] == "particles"


def test_activations_are_a_resumable_chunk_job_of_the_scored_samples(scored):
    ws, model, _ = scored
    acts = store.open_group(ws, f"concepts/syn/{model}/activations")
    scored_rows = acts["scored"].values
    assert np.array_equal(scored_rows, store.strings(store.open_group(ws, "images/syn")["split"].values) == "test")
    grads = acts["grad__block3"].values
    assert grads.shape[1] == 16  # one value per channel of block3
    assert np.isfinite(grads[scored_rows]).all() and np.isnan(grads[~scored_rows]).all()
    entry = ModelCatalog(ws).get(model)
    assert cc.prepare_activations(str(ws), entry, "syn", ["block3"], scored_rows, "cpu", overwrite=False).chunks == ()


def test_metadata_and_folder_concepts(learned, tmp_path):
    ws, _ = learned
    images = store.open_group(ws, "images/syn")
    pool = np.flatnonzero(store.strings(images["split"].values) != "test")
    meta = cc.concept_examples(str(ws), "syn", cc.parse_concept("lam=meta:label=lamellae"), pool, (48, 48), 10, 0)
    assert meta.shape == (10, 48, 48)
    folder = tmp_path / "examples"
    folder.mkdir()
    for i in range(3):
        Image.fromarray(np.full((20, 30), 40 * i, np.uint8)).save(folder / f"e{i}.png")
    (folder / "notes.txt").write_text("not an image")
    got = cc.concept_examples(str(ws), "syn", cc.parse_concept(f"mine=folder:{folder}"), pool, (48, 48), 10, 0)
    assert got.shape == (3, 48, 48)


def test_concept_text_options_override_the_run_defaults():
    spec = cc.with_defaults(cc.parse_concept("bar=mask:shortcut@a,patch=8,min=0.5"), 0.3, 32)
    assert (spec.mask_class, spec.label, spec.patch, spec.min_fraction) == ("shortcut", "a", 8, 0.5)
    plain = cc.with_defaults(cc.parse_concept("s=mask:structure"), 0.3, 32)
    assert (plain.patch, plain.min_fraction) == (32, 0.3)


@pytest.mark.parametrize("text, message", [
    ("nokind", "expected name=mask:CLASS"),
    ("x=mask:structure,size=3", "unknown option 'size'"),
    ("x=mask:structure,min=2", "less than or equal to 1"),
    ("x=shape:round", "unknown kind 'shape'"),
    ("bad name=mask:structure", "concept 'bad name=mask:structure'"),
])
def test_bad_concepts_are_refused(text, message):
    with pytest.raises(cc.ConceptError, match=message):
        cc.parse_concept(text)


def test_concepts_that_cannot_be_built_name_the_problem(learned, tmp_path):
    ws, model = learned
    pool = np.arange(10)
    for text, message in [("a=mask:carbide", "no mask class 'carbide'; mask classes"),
                          ("a=mask:structure@pearlite", "no class 'pearlite'"),
                          ("a=meta:detector=SE", "no coordinate 'detector'"),
                          (f"a=folder:{tmp_path}", "no image")]:
        with pytest.raises(cc.ConceptError, match=message):
            cc.concept_examples(str(ws), "syn", cc.parse_concept(text), pool, (48, 48), 10, 0)
    with pytest.raises(cc.ConceptError, match="runs=1"):
        cc.run_tcav(ws, model, "syn", [cc.parse_concept("a=mask:structure")], settings=cc.TcavSettings(runs=1))
    with pytest.raises(cc.ConceptError, match="concept names must differ"):
        cc.run_tcav(ws, model, "syn", [cc.parse_concept("a=mask:structure")] * 2)


def test_holm_correction():
    p = np.array([0.01, 0.04, 0.03, np.nan])
    np.testing.assert_allclose(cc.holm(p), [0.03, 0.06, 0.06, np.nan])


@pytest.mark.timeout(300)
def test_cli_concepts(scored, tmp_path):
    from cli_run import run

    ws, model, _ = scored
    res = run("concepts", "-w", str(ws), "-m", model, "-c", "particles=mask:structure@particles,min=0.3",
              "-c", "matrix=mask:matrix", "--runs", "2", "--examples", "6", "--cluster", "threads",
              "--out", str(tmp_path))
    assert res.returncode == 0, res.stderr
    assert "2 concept(s) x 2 random runs" in res.stdout and "particles" in res.stdout
    assert list(tmp_path.glob("concepts_syn_*_tcav.png"))
    bad = run("concepts", "-w", str(ws), "-m", model, "-c", "x=mask:carbide", "--cluster", "threads")
    assert bad.returncode == 2 and "no mask class 'carbide'" in bad.stderr
