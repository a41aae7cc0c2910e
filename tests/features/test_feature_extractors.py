"""The contract (:func:`xaiflow.testing.check_extractor`) for every registered feature extractor,
plus known answers per extractor.

The contract tests loop over ``FEATURES.names()``: a new extractor is covered by registering
it (and, if it cannot run without arguments, as the CNN extractor needs a network, an entry in
``params_for``)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from xaiflow.features import FEATURES, FeatureError, build_extractor
from xaiflow.features.twopoint import radial_autocovariance
from xaiflow.models import UnknownLayerError, build_model
from xaiflow.models.checkpoint import save_checkpoint
from xaiflow.preprocess import to_input
from xaiflow.registry import UnknownEntryError
from xaiflow.sources.synthetic import generate_micrograph
from xaiflow.testing import check_extractor


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    """A real small_cnn checkpoint (seeded weights; training is tested with the workspace)."""
    torch.manual_seed(0)
    model = build_model("small_cnn", num_classes=3, widths=[4, 8])
    directory = tmp_path_factory.mktemp("models") / "tiny"
    save_checkpoint(directory, model, {"train": {"dataset": "none"}})
    return directory


@pytest.fixture(scope="module")
def images():
    rng = np.random.default_rng(0)
    classes = ["particles", "lamellae", "network"]
    return np.stack([generate_micrograph(classes[i % 3], (40, 40), rng)[0] for i in range(6)])


def params_for(name: str, checkpoint) -> dict:
    """Arguments for the contract tests; extractors not listed run with their defaults."""
    return {"cnn": {"model": str(checkpoint), "layers": ["block1", "block2"], "pooling": ["mean", "max", "gram"],
                    "gram_channels": 3}}.get(name, {})


@pytest.mark.parametrize("name", FEATURES.names())
@pytest.mark.parametrize("dtype", [np.uint8, np.uint16, np.float32])
def test_contract(name, dtype, checkpoint, images):
    data = images.astype(dtype) * (257 if dtype == np.uint16 else 1)
    ext = build_extractor(name, params_for(name, checkpoint))
    out = check_extractor(ext, data)
    assert out.std(axis=0).max() > 0, "features do not vary between images"
    assert ext.get_params() == {**ext.get_params(), **params_for(name, checkpoint)}


@pytest.mark.parametrize("name", FEATURES.names())
def test_flat_image_gives_finite_features(name, checkpoint):
    flat = np.full((2, 32, 32), 7, np.uint8)
    ext = build_extractor(name, params_for(name, checkpoint)).fit(flat)
    assert np.isfinite(ext.transform(flat)).all()


@pytest.mark.parametrize("name", FEATURES.names())
def test_bad_inputs_are_refused(name, checkpoint, images):
    ext = build_extractor(name, params_for(name, checkpoint)).fit(images)
    bad = images.astype(np.float32)
    bad[1, 3, 3] = np.nan
    with pytest.raises(FeatureError, match="NaN"):
        ext.transform(bad)
    with pytest.raises(FeatureError, match=r"shape \(N, H, W\)"):
        ext.transform(images[0])
    with pytest.raises(FeatureError, match="unknown parameter.*'colour'.*valid"):
        build_extractor(name, {**params_for(name, checkpoint), "colour": 1})


def test_unknown_extractor_lists_valid_names():
    with pytest.raises(UnknownEntryError, match="unknown feature extractor 'vlad'; valid: cnn, glcm, lbp, twopoint"):
        build_extractor("vlad")


def test_unknown_layer_lists_valid_layers(checkpoint):
    with pytest.raises(UnknownLayerError, match="no layer 'conv5'; valid layers: block1, block2, pool, head"):
        build_extractor("cnn", {"model": str(checkpoint), "layers": ["conv5"]})


@pytest.mark.parametrize("params, message", [
    ({}, "exactly one of model"),
    ({"model": "x", "backbone": "vgg16"}, "exactly one of model"),
    ({"model": "nope", "models_dir": "/nonexistent"}, "no checkpoint 'nope' in /nonexistent"),
    ({"backbone": "vgg16", "weights_path": "/nonexistent/vgg16.pt"}, "vgg16"),
])
def test_cnn_model_errors(params, message):
    with pytest.raises((FeatureError, ValueError, ImportError), match=message):
        build_extractor("cnn", params)


def test_cnn_pooling_matches_hooked_activations(checkpoint, images):
    from xaiflow.models.checkpoint import load_checkpoint

    ext = build_extractor("cnn", {"model": str(checkpoint), "layers": ["block2"], "pooling": ["mean", "max", "gram"]})
    out = ext.transform(images)
    model, _ = load_checkpoint(checkpoint)
    acts = {}
    model.get_layer("block2").register_forward_hook(lambda _m, _i, o: acts.__setitem__("a", o))
    with torch.no_grad():
        model(to_input(images))
    a = acts["a"].double()
    c = a.shape[1]
    f = a.flatten(2)
    gram = (f @ f.transpose(1, 2) / f.shape[2]).numpy()
    iu = np.triu_indices(c)
    expected = np.concatenate([a.mean((2, 3)).numpy(), a.amax((2, 3)).numpy(), gram[:, iu[0], iu[1]]], axis=1)
    np.testing.assert_allclose(out, expected, rtol=1e-4, atol=1e-5)
    assert ext.feature_labels()[c] == "block2/max/c0" and ext.feature_families()[-1] == "block2/gram"


def test_cnn_reduced_gram_is_a_projection_of_the_full_gram(checkpoint, images):
    full = build_extractor("cnn", {"model": str(checkpoint), "pooling": ["gram"]})
    reduced = build_extractor("cnn", {"model": str(checkpoint), "pooling": ["gram"], "gram_channels": 2}).fit(images)
    with pytest.raises(FeatureError, match="must be fitted"):
        build_extractor("cnn", {"model": str(checkpoint), "pooling": ["gram"], "gram_channels": 2}).transform(images)
    c = 8  # block2 (cam layer) of the [4, 8] network
    g = np.zeros((len(images), c, c))
    iu = np.triu_indices(c)
    g[:, iu[0], iu[1]] = full.transform(images)
    g = g + np.triu(g, 1).transpose(0, 2, 1)
    w = reduced._projections["block2"].astype(np.float64)
    projected = np.einsum("ci,ncd,dj->nij", w, g, w)
    ju = np.triu_indices(2)
    np.testing.assert_allclose(reduced.transform(images), projected[:, ju[0], ju[1]], rtol=1e-3, atol=1e-4)
    # the first direction carries the most Gram energy over the fit images
    assert projected[:, 0, 0].mean() >= projected[:, 1, 1].mean()


def test_glcm_matches_skimage(images):
    from skimage.feature import graycomatrix, graycoprops

    from xaiflow.features.base import normalize_images

    out = build_extractor("glcm", {"distances": [1, 3], "levels": 16, "props": ["contrast", "correlation"]})\
        .transform(images[:1])
    q = np.minimum((normalize_images(images[:1])[0] * 16).astype(np.uint8), 15)
    m = graycomatrix(q, [1, 3], [0, np.pi / 4, np.pi / 2, 3 * np.pi / 4], levels=16, symmetric=True, normed=True)
    expected = np.concatenate([graycoprops(m, "contrast").mean(1), graycoprops(m, "correlation").mean(1)])
    np.testing.assert_allclose(out[0], expected, rtol=1e-5)


def test_lbp_histograms_are_normalized(images):
    ext = build_extractor("lbp", {"radii": [1, 2], "points_per_radius": 8})
    out = ext.transform(images)
    assert out.shape[1] == 10 + 18
    np.testing.assert_allclose(out[:, :10].sum(1), 1, rtol=1e-5)
    np.testing.assert_allclose(out[:, 10:].sum(1), 1, rtol=1e-5)


def test_twopoint_matches_brute_force():
    rng = np.random.default_rng(1)
    field = rng.normal(size=(1, 10, 12))
    field -= field.mean()
    r_max = 3
    sums, counts = np.zeros(r_max), np.zeros(r_max)
    for dy in range(-9, 10):
        for dx in range(-11, 12):
            r = int(np.rint(np.hypot(dy, dx)))
            if not 1 <= r <= r_max:
                continue
            a = field[0, max(0, dy):10 + min(0, dy), max(0, dx):12 + min(0, dx)]
            b = field[0, max(0, -dy):10 + min(0, -dy), max(0, -dx):12 + min(0, -dx)]
            sums[r - 1] += (a * b).mean()
            counts[r - 1] += 1
    np.testing.assert_allclose(radial_autocovariance(field, r_max)[0], sums / counts, rtol=1e-6, atol=1e-10)


def test_twopoint_known_answers():
    rng = np.random.default_rng(2)
    noise = (rng.random((2, 64, 64)) > 0.5).astype(np.uint8) * 255
    smooth = np.kron(noise[:, :8, :8], np.ones((8, 8), np.uint8))  # 8 px blocks
    ext = build_extractor("twopoint", {"r_max": 8})
    white, blocks = ext.transform(noise), ext.transform(smooth)
    assert np.abs(white).max() < 0.06  # uncorrelated pixels
    assert (blocks[:, 0] > 0.8).all() and (np.diff(blocks[:, :6], axis=1) < 0).all()  # decays over the block size
    with pytest.raises(FeatureError, match="more than half the image side"):
        build_extractor("twopoint", {"r_max": 40}).transform(noise)
