"""Invariance probes (rotations, flips, zoom, contrast, noise) on real stores, real Dask workers and real
torch models: the transforms and their alignment, the stored group, resuming, and the orientation verdict
for models trained with and without rotation augmentation and for one invariant by construction."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import typer
import xarray as xr
from torch import nn
from typer.testing import CliRunner

from tests.conftest import ingest_synthetic, train_tiny
from xaiflow import probes
from xaiflow.models.catalog import ModelCatalog
from xaiflow.models.checkpoint import save_checkpoint

ROTATIONS = ["rot90", "rot180", "rot270"]


@pytest.fixture(scope="module")
def workspace(tmp_path_factory, client):
    """72 synthetic 32 px images (6 specimens per class, 5 chunks) and two small CNNs that differ only in
    the augmentation they were trained with (random flips and quarter turns, or none); 40 epochs, so both
    classify the validation images."""
    ws = tmp_path_factory.mktemp("probes") / "ws.zarr"
    ingest_synthetic(ws, client, size=32, chunk_size=16, specimens_per_class=6, images_per_specimen=4)
    train = {"epochs": 40, "lr": 0.005, "batch_size": 8, "patience": 40, "model_params": {"widths": [8, 16, 32]}}
    augmented = train_tiny(ws, augment={"flips": True, "rot90": True}, **train)
    plain = train_tiny(ws, augment={"flips": False, "rot90": False}, **train)
    return ws, augmented, plain


def symmetrized(ws, model_id: str) -> str:
    """A copy of the model whose convolution kernels are averaged over the 8 symmetries of the square, so every
    layer commutes with quarter turns and mirrors (batch norm, ReLU, 2x2 max-pooling of even sizes and global
    pooling already do): rotation- and mirror-invariant by construction, saved to the catalog as ``symmetric``."""
    catalog = ModelCatalog(ws)
    entry = catalog.get(model_id)
    model = entry.load()
    with torch.no_grad():
        for conv in (m for m in model.modules() if isinstance(m, nn.Conv2d)):
            w = conv.weight
            conv.weight.copy_(torch.stack([torch.rot90(v, k, (2, 3)) for v in (w, w.flip(3)) for k in range(4)]).mean(0))
    save_checkpoint(catalog.directory / "symmetric", model, entry.manifest.config)
    return "symmetric"


# ------------------------------------------------------------------ transforms

def test_geometric_transforms_align_back_to_the_original_frame():
    rng = np.random.default_rng(0)
    images = rng.random((3, 6, 8)).astype(np.float32)  # not square: rotations swap the sides
    samples = np.arange(3)
    for spec in [*ROTATIONS, "flip_h", "flip_v"]:
        t = probes.parse_transform(spec)
        moved = t.apply(images, samples)
        assert moved.shape != images.shape or not np.array_equal(moved, images)
        original, back = t.align(images, moved)  # the image's own pixels as a map: turned back exactly
        np.testing.assert_array_equal(back, images)
        np.testing.assert_array_equal(original, images)
    assert probes.parse_transform("rot90").apply(images, samples).shape == (3, 8, 6)
    np.testing.assert_array_equal(probes.parse_transform("flip_h").apply(images, samples), images[:, :, ::-1])
    np.testing.assert_array_equal(probes.parse_transform("flip_v").apply(images, samples), images[:, ::-1, :])

    zoom = probes.parse_transform(" Scale:1.250 ")
    assert zoom.spec == "scale:1.25"
    moved = zoom.apply(images, samples)
    assert moved.shape == images.shape and moved.dtype == np.float32
    original, transformed = zoom.align(images, moved)  # the original's map zoomed like the image
    assert original.shape == transformed.shape == images.shape
    np.testing.assert_allclose(original, transformed)
    ramp = np.tile(np.arange(16, dtype=np.float32), (1, 16, 1))
    zoomed = probes.parse_transform("scale:2").apply(ramp, np.arange(1))[0]
    assert zoomed.min() >= 3.5 and zoomed.max() <= 11.5  # only the central half of the ramp is left


def test_photometric_transforms_keep_pixels_in_place_and_noise_is_seeded_per_sample():
    rng = np.random.default_rng(1)
    images = (rng.random((4, 16, 16)) * 200).astype(np.float32)
    samples = np.array([10, 11, 12, 13])
    low = probes.parse_transform("contrast:0.5").apply(images, samples)
    np.testing.assert_allclose(low.mean(axis=(1, 2)), images.mean(axis=(1, 2)), rtol=1e-5)
    np.testing.assert_allclose(low.std(axis=(1, 2)), 0.5 * images.std(axis=(1, 2)), rtol=1e-4)
    high = probes.parse_transform("contrast:3").apply(images, samples)
    assert (high.min(axis=(1, 2)) >= images.min(axis=(1, 2))).all() and (high.max(axis=(1, 2)) <= images.max(axis=(1, 2))).all()
    maps = rng.random((4, 16, 16))
    for spec in ("contrast:0.5", "noise:0.1"):
        assert all(a is b for a, b in zip(probes.parse_transform(spec).align(maps, maps), (maps, maps)))

    noise = probes.parse_transform("noise:0.1", seed=3)
    noisy = noise.apply(images, samples)
    np.testing.assert_array_equal(noise.apply(images[2:3], samples[2:3]), noisy[2:3])  # whatever the batch
    assert not np.array_equal(probes.parse_transform("noise:0.1", seed=4).apply(images, samples), noisy)
    spread = (noisy - images).std(axis=(1, 2)) / np.ptp(images, axis=(1, 2))
    np.testing.assert_allclose(spread, 0.1, rtol=0.25)
    np.testing.assert_array_equal(probes.parse_transform("noise:0").apply(images, samples), images)


@pytest.mark.parametrize(("specs", "message"), [
    (["rotate"], r"unknown transform 'rotate'; valid: rot90, rot180, rot270, flip_h, flip_v, scale:<factor>"),
    (["rot90:2"], "rot90 takes no parameter"),
    (["scale"], "scale needs a number"),
    (["scale:abc"], "scale needs a number"),
    (["scale:1"], r"scale:1: give a zoom factor in \(1, 4\]"),
    (["scale:4.5"], r"scale:4.5: give a zoom factor in \(1, 4\]"),
    (["scale:nan"], "give a zoom factor"),
    (["contrast:0"], "contrast:0: give a contrast factor > 0"),
    (["contrast:-1"], "give a contrast factor > 0"),
    (["noise:-0.1"], "noise:-0.1: give a noise level >= 0"),
    (["rot90", "ROT90"], "a transform is named twice"),
    ([], "no transform given"),
])
def test_bad_transforms_are_refused_with_the_valid_choices(specs, message):
    with pytest.raises(probes.ProbeError, match=message):
        probes.parse_transforms(specs)


def test_map_correlation_compares_absolute_maps():
    rng = np.random.default_rng(2)
    a = rng.normal(size=(3, 8, 8))
    r = probes.map_correlation(a, np.stack([a[0], -a[1], np.ones((8, 8))]))
    np.testing.assert_allclose(r[:2], 1.0)  # the same pixels matter, whatever the sign
    assert np.isnan(r[2])  # a constant map ranks no pixel


# ------------------------------------------------------------------ the job

def test_rotation_probe_tells_the_augmented_model_from_the_plain_one(workspace, client):
    ws, augmented, plain = workspace
    verdicts = {}
    for model in (augmented, plain):
        group = probes.probe_dataset(ws, model, "syn", transforms=[*ROTATIONS, "flip_h"], split=None, client=client)
        assert group == f"probes/syn/{model}"
        stored = xr.open_zarr(ws, group=group, consolidated=False)  # readable without xaiflow
        assert dict(stored["map_correlation"].sizes) == {"sample": 72, "transform": 4}
        assert list(stored["transform"].values) == [*ROTATIONS, "flip_h"]
        assert {"label", "split", "selected"} <= set(stored.coords) and stored["selected"].values.all()
        assert stored.attrs["status"] == "complete"
        made_by = stored.attrs["provenance"]
        assert made_by["method"] == "grad_cam" and made_by["method_params"]["layer"] == "block3"
        assert made_by["checkpoint_sha256"] == ModelCatalog(ws).get(model).sha256 and made_by["seed"] == 0
        ds = stored.load()
        agree = ds["transformed_predicted"].values == ds["predicted"].values[:, None]
        np.testing.assert_array_equal(ds["agreement"].values, agree)
        np.testing.assert_allclose(ds["probability_change"], ds["transformed_probability"] - ds["probability"], atol=1e-6)
        verdicts[model] = probes.rotation_verdict(probes.open_probes(ws, "syn", model))

        job = probes.prepare(ws, model, "syn", transforms=[*ROTATIONS, "flip_h"], split=None)
        assert job.chunks == () and job.n_chunks == 5  # a re-run has nothing left to do
    with pytest.raises(probes.ProbeError, match=r"transforms .* \(asked: \['rot90'\]\).*--overwrite"):
        probes.prepare(ws, plain, "syn", transforms=["rot90"], split=None)
    with pytest.raises(probes.ProbeError, match=r"method 'grad_cam' \(asked: 'saliency'\)"):
        probes.prepare(ws, plain, "syn", transforms=[*ROTATIONS, "flip_h"], method="saliency", split=None)

    # trained on the same images, the model that saw turned and mirrored copies keeps more of its decisions
    # under quarter turns and its Grad-CAM maps turn with the image more closely
    aug, raw = verdicts[augmented], verdicts[plain]
    assert aug["agreement"] > raw["agreement"] and aug["map_correlation"] > raw["map_correlation"] + 0.1
    assert aug["verdict"] == "invariant" and raw["verdict"] == "orientation-dependent"
    assert "prediction agreement" in raw["reason"] and aug["reason"] == ""

    table = probes.summarize(probes.open_probes(ws, "syn", plain))
    assert set(table["class"]) == {"particles", "lamellae", "network", "all"} and len(table) == 16
    overall = table[table["class"] == "all"].set_index("transform")
    assert (overall["samples"] == 72).all() and overall["agreement"].between(0, 1).all()
    assert overall.loc["rot90", "maps"] <= 72


def test_a_model_invariant_by_construction_gets_full_agreement_and_maps_that_turn_with_the_image(workspace, client):
    ws, _, plain = workspace
    symmetric = symmetrized(ws, plain)
    for method in ("saliency", "grad_cam"):
        probes.probe_dataset(ws, symmetric, "syn", transforms=["rot90", "rot180", "flip_v", "scale:1.5"],
                             method=method, split=None, overwrite=True, client=client)
        ds = probes.open_probes(ws, "syn", symmetric)
        turns = ds.sel(transform=["rot90", "rot180", "flip_v"])
        assert turns["agreement"].values.all()
        np.testing.assert_allclose(turns["probability_change"], 0.0, atol=1e-5)
        corr = turns["map_correlation"].values
        assert np.isfinite(corr).sum() > 0.8 * corr.size and np.nanmin(corr) > 0.999
        assert np.nanmean(ds["map_correlation"].sel(transform="scale:1.5")) < 0.999  # a zoom is no symmetry of it
        assert probes.rotation_verdict(ds)["verdict"] == "invariant"
    plain_maps = probes.open_probes(ws, "syn", plain)["map_correlation"].sel(transform="rot90").values
    assert np.nanmean(plain_maps) < 0.9


def test_cli_prints_the_table_and_the_verdict_and_draws_the_figure(workspace, tmp_path):
    from xaiflow.cli.probe import probe

    ws, _, plain = workspace
    app = typer.Typer()
    app.command()(probe)
    figure = tmp_path / "probes.png"
    res = CliRunner().invoke(app, ["-w", str(ws), "-m", plain, "-d", "syn", "--cluster", "threads", "--overwrite",
                                   "-o", str(figure)])
    assert res.exit_code == 0, res.output
    assert "orientation (rot90, rot180, rot270):" in res.output and "least invariant class" in res.output
    assert "scale:1.25" in res.output and "noise:0.05" in res.output
    assert figure.stat().st_size > 0
    stored = xr.open_zarr(ws, group=f"probes/syn/{plain}", consolidated=False)
    assert list(stored["transform"].values) == list(probes.DEFAULT_TRANSFORMS)  # the CLI's default list
    test = stored["split"].values == "test"
    np.testing.assert_array_equal(stored["selected"].values, test)
    assert (stored["predicted"].values[~test] == -1).all() and np.isnan(stored["map_correlation"].values[~test]).all()

    bad = CliRunner().invoke(app, ["-w", str(ws), "-m", plain, "-d", "syn", "--cluster", "threads", "-t", "rot45"])
    assert bad.exit_code == 2 and "unknown transform 'rot45'" in bad.output
