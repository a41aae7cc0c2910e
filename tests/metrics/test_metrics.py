"""Metrics: the shared contract over the registry, hand-computed cases, sanity checks, Quantus cross-checks.

The contract test (:func:`xaiflow.testing.check_metric`, with each metric's ``quick_params``)
loops over ``METRICS.names()``, so a new metric is covered by registering it.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import Tensor, nn

from tiny_cnn import TinyCNN
from xaiflow.attribution import make_method
from xaiflow.attribution.base import AttributionMethod
from xaiflow.metrics import METRICS, make_metric
from xaiflow.metrics.complexity import entropy, gini
from xaiflow.metrics.faithfulness import attribution_orders, baseline_input, random_orders, unit_ranks
from xaiflow.metrics.localization import pointing_game, relevance_mass_accuracy, relevance_rank_accuracy
from xaiflow.metrics.randomization import cascade_layers, spearman
from xaiflow.models.base import MicrographModel
from xaiflow.registry import UnknownEntryError
from xaiflow.testing import check_metric

torch.set_num_threads(1)

class RegionModel(MicrographModel):
    """Logits ``(scale * mean of x over a region, 0)``: the probability of class 0 is known in closed form."""

    arch = "region_toy"
    cam_layer = "head"
    _named = ("head",)

    def __init__(self, region: np.ndarray, scale: float = 4.0) -> None:
        super().__init__(2, 1)
        self.register_buffer("region", torch.as_tensor(region, dtype=torch.float32))
        self.scale = scale
        self.head = nn.Identity()

    def forward(self, x: Tensor) -> Tensor:
        score = self.scale * (x[:, 0] * self.region).sum(dim=(1, 2)) / self.region.sum()
        return torch.stack([score, torch.zeros_like(score)], dim=1)


class InputMethod(AttributionMethod):
    """A 'method' that ignores the model (|x|, like an edge detector): randomization must not move it."""

    name = "input_magnitude"
    libraries = ()

    def _attribute(self, x: Tensor, target: Tensor) -> Tensor:
        return x.abs()


def sigmoid(v):
    return 1.0 / (1.0 + np.exp(-np.asarray(v, dtype=np.float64)))


@pytest.fixture(scope="module")
def batch():
    """Three 32x32 inputs, random maps, square masks, an untrained tiny CNN and its saliency method."""
    torch.manual_seed(0)
    model = TinyCNN(num_classes=2).eval()
    rng = np.random.default_rng(0)
    x = torch.from_numpy(rng.normal(size=(3, 1, 32, 32)).astype(np.float32))
    maps = rng.normal(size=(3, 32, 32)).astype(np.float32)
    masks = np.zeros((3, 32, 32), bool)
    masks[:, 4:14, 6:20] = True
    return {"x": x, "maps": maps, "targets": np.array([0, 1, 0]), "masks": masks, "model": model,
            "method": make_method("saliency", model), "index": np.array([5, 9, 11])}


# ---------------------------------------------------------------- contract, for every registered metric

@pytest.mark.parametrize("name", METRICS.names())
def test_metric_contract(name, batch):
    check_metric(name, batch["maps"], batch["x"], batch["targets"], model=batch["model"], masks=batch["masks"],
                 method=batch["method"], index=batch["index"])


def test_unknown_metric_lists_valid_ones():
    with pytest.raises(UnknownEntryError, match="unknown metric 'auc'; valid: deletion, entropy"):
        make_metric("auc")


def test_bad_maps_and_training_mode_are_refused(batch):
    with pytest.raises(ValueError, match=r"maps must be a float array \(B, H, W\)"):
        make_metric("sparseness").compute(batch["maps"][0])
    model = TinyCNN(num_classes=2).train()
    with pytest.raises(ValueError, match="eval mode"):
        make_metric("deletion").compute(batch["maps"], batch["x"], batch["targets"], model=model)


# ---------------------------------------------------------------- complexity, by hand

def test_gini_and_entropy_hand_computed():
    one = np.zeros((4, 4)); one[1, 2] = -3.0  # sign is ignored
    two = np.zeros((4, 4)); two[0, 0] = two[3, 3] = 2.0
    uniform = np.full((4, 4), 0.5)
    maps = np.stack([one, two, uniform]).astype(np.float32)
    # ascending |a|: zeros then the non-zeros; G = sum (2i - n - 1) a_i / (n sum a)
    np.testing.assert_allclose(gini(maps), [15 / 16, (13 + 15) / (16 * 2), 0.0], atol=1e-12)
    np.testing.assert_allclose(entropy(maps), [0.0, math.log(2), math.log(16)], atol=1e-12)
    zero = np.zeros((1, 4, 4), np.float32)
    assert np.isnan(gini(zero)).all() and np.isnan(entropy(zero)).all()


# ---------------------------------------------------------------- localization, by hand

MAP = np.array([[9, 1, 0, 0],
                [2, 8, 0, 0],
                [0, 0, -5, 0],
                [0, 0, 0, 4]], np.float32)


def mask_of(*pixels) -> np.ndarray:
    m = np.zeros((4, 4), bool)
    for p in pixels:
        m[p] = True
    return m


def test_localization_hand_computed():
    top_left = mask_of((0, 0), (0, 1), (1, 0), (1, 1))
    corner = mask_of((3, 3))
    maps, masks = np.stack([MAP, MAP]), np.stack([top_left, corner])
    # maximum 9 at (0, 0); positive mass 9+1+2+8+4 = 24; top-4 values 9, 8, 4, 2
    np.testing.assert_allclose(pointing_game(maps, masks), [1.0, 0.0])
    np.testing.assert_allclose(relevance_mass_accuracy(maps, masks), [20 / 24, 4 / 24])
    np.testing.assert_allclose(relevance_rank_accuracy(maps, masks), [3 / 4, 0.0])
    # |map|: -5 counts as relevance
    centre = mask_of((2, 2))
    np.testing.assert_allclose(relevance_mass_accuracy(MAP[None], centre[None]), [0.0])
    np.testing.assert_allclose(relevance_mass_accuracy(MAP[None], centre[None], absolute=True), [5 / 29])
    two = mask_of((2, 2), (1, 1))
    np.testing.assert_allclose(relevance_rank_accuracy(MAP[None], two[None], absolute=True), [1 / 2])  # top-2: 9, 8


def test_localization_ties_empty_masks_and_zero_maps():
    flat = np.ones((1, 4, 4), np.float32)
    quarter = mask_of((0, 0), (0, 1), (1, 0), (1, 1))[None]
    # a constant map scores chance level (the mask's area fraction), not a hit
    np.testing.assert_allclose(pointing_game(flat, quarter), [0.25])
    np.testing.assert_allclose(relevance_rank_accuracy(flat, quarter), [0.25])
    np.testing.assert_allclose(relevance_mass_accuracy(flat, quarter), [0.25])
    # ties at the K-th value only: top-2 of [5, 3, 3, 3, ...] with mask {5, one 3}: 1 + 1 * (1/3)
    tie = np.zeros((1, 4, 4), np.float32); tie[0, 0, :] = [5, 3, 3, 3]
    np.testing.assert_allclose(relevance_rank_accuracy(tie, mask_of((0, 0), (0, 1))[None]), [(1 + 1 / 3) / 2])
    empty = np.zeros((1, 4, 4), bool)
    for fn in (pointing_game, relevance_mass_accuracy, relevance_rank_accuracy):
        assert np.isnan(fn(MAP[None], empty)).all(), fn.__name__
    assert np.isnan(relevance_mass_accuracy(-flat, quarter)).all()  # no positive relevance


# ---------------------------------------------------------------- faithfulness, by hand

LEFT = np.zeros((4, 4)); LEFT[:, :2] = 1  # the toy model's region: 8 of 16 pixels


def test_deletion_and_insertion_curves_hand_computed():
    """RegionModel(scale 4) on an all-ones image: p(class 0) = sigmoid(4 * share of the region still present)."""
    model = RegionModel(LEFT).eval()
    x = torch.ones(2, 1, 4, 4)
    oracle = (LEFT + np.arange(16).reshape(4, 4)[::-1] / 100).astype(np.float32)  # region first, no ties
    maps = np.stack([oracle, -oracle])  # best and worst order
    targets = np.array([0, 0])
    fractions = [0, 0.25, 0.5, 0.75, 1.0]  # 0, 4, 8, 12, 16 pixels
    deletion = make_metric("deletion", n_steps=4, random_reference=False).compute(maps, x, targets, model=model)
    best, worst = sigmoid(4 * np.array([1, 0.5, 0, 0, 0])), sigmoid(4 * np.array([1, 1, 1, 0.5, 0]))
    np.testing.assert_allclose(deletion["deletion_curve"], [best, worst], rtol=1e-6)
    np.testing.assert_allclose(deletion["deletion"], [np.trapezoid(best, fractions), np.trapezoid(worst, fractions)],
                               rtol=1e-6)
    insertion = make_metric("insertion", n_steps=4, baseline="zeros", random_reference=False).compute(
        maps, x, targets, model=model)
    np.testing.assert_allclose(insertion["insertion_curve"][0], sigmoid(4 * np.array([0, 0.5, 1, 1, 1])), rtol=1e-6)
    assert insertion["insertion"][0] > insertion["insertion"][1]


def test_tied_pixels_do_not_make_morf_and_lerf_depend_on_position():
    """A map flat except for a hot spot, a model that reads a bar at the bottom (a data bar): flipping
    image, map and model upside down must not change the scores (in expectation over 48 images).
    Measured: every mean moves by < 0.005; raster-order ties gave ROAD gaps of -0.24 and +0.23 (the
    tied top rows were removed first), deletion 0.85 against 0.56."""
    n, size = 48, 16
    bar = np.zeros((size, size)); bar[-3:] = 1
    rng = np.random.default_rng(0)
    x = rng.normal(size=(n, 1, size, size)).astype(np.float32); x[:, :, -3:] += 1.0
    maps = np.zeros((n, size, size), np.float32); maps[:, 6:10, 6:10] = 1.0
    cases = {"upright": (maps, x, bar), "flipped": (maps[:, ::-1], x[:, :, ::-1], bar[::-1])}
    means = {}
    for case, (m, images, region) in cases.items():
        model = RegionModel(region.copy(), scale=2.0).eval()
        args = (m.copy(), torch.from_numpy(images.copy()), np.zeros(n, np.int64))
        out = make_metric("road", noise=0.0, random_reference=False).compute(*args, index=np.arange(n), model=model)
        out |= make_metric("deletion", n_steps=8, random_reference=False).compute(*args, index=np.arange(n),
                                                                                  model=model)
        means[case] = {k: float(v.mean()) for k, v in out.items() if v.ndim == 1}
    for key, value in means["upright"].items():
        assert abs(value - means["flipped"][key]) < 0.03, (key, means)
    assert abs(means["upright"]["road"]) < 0.03 and abs(means["flipped"]["road"]) < 0.03, means


def test_random_map_is_worse_than_the_oracle_and_chance_is_seeded():
    region = np.zeros((32, 32)); region[8:20, 4:16] = 1
    model = RegionModel(region).eval()
    x = torch.ones(4, 1, 32, 32)
    rng = np.random.default_rng(1)
    oracle = region + 0.01 * rng.random((32, 32))
    maps = np.stack([oracle, oracle, rng.normal(size=(32, 32)), rng.normal(size=(32, 32))]).astype(np.float32)
    out = make_metric("deletion", n_steps=16).compute(maps, x, np.zeros(4, np.int64), index=np.arange(4), model=model)
    assert out["deletion"][:2].max() < out["deletion"][2:].min()
    assert (out["deletion"][:2] < out["deletion_random"][:2] - 0.1).all()  # the oracle beats chance
    # the random reference depends on the sample index only, not on the map or the batch
    orders = random_orders(np.array([16, 16]), np.array([3, 3]), seed=0)
    np.testing.assert_array_equal(orders[0], orders[1])
    assert not np.array_equal(random_orders(np.array([16]), np.array([4]), 0)[0], orders[0])


def test_superpixel_units_are_ranked_by_mean_attribution():
    labels = np.repeat(np.repeat(np.arange(4).reshape(2, 2), 2, 0), 2, 1)[None]  # four 2x2 blocks
    maps = np.zeros((1, 4, 4), np.float32)
    maps[0, 2:, 2:] = 1.0  # block 3 first
    maps[0, 0, 0] = 3.0  # block 0: mean 0.75, second; blocks 1 and 2 tie at 0: third and fourth
    ranks, counts = unit_ranks(maps, labels, attribution_orders(maps, np.array([0]), 0, labels))
    assert counts.tolist() == [4]
    block_ranks = ranks[0, ::2, ::2]
    assert block_ranks[0, 0] == 1 and block_ranks[1, 1] == 0 and {block_ranks[0, 1], block_ranks[1, 0]} == {2, 3}
    np.testing.assert_array_equal(ranks[0], np.repeat(np.repeat(block_ranks, 2, 0), 2, 1))


def test_ties_are_ordered_at_random_per_sample_and_deterministically():
    """A flat map: the order is a permutation that depends on (seed, index) only, not on raster position."""
    flat = np.zeros((3, 8, 8), np.float32)
    flat[:, 3, 5] = 1.0  # one pixel above the tie: always first
    orders = attribution_orders(flat, np.array([7, 7, 8]), seed=0)
    assert all(o[0] == 3 * 8 + 5 and sorted(o) == list(range(64)) for o in orders)
    np.testing.assert_array_equal(orders[0], orders[1])  # same sample, same order
    assert not np.array_equal(orders[0], orders[2])
    assert not np.array_equal(orders[0], attribution_orders(flat[:1], np.array([7]), seed=1)[0])
    # the first half of the tied pixels is not the top half of the image
    rows = np.stack([order[1:33] // 8 for order in attribution_orders(flat, np.array([1, 2, 3]), 0)])
    assert 2.5 < rows.mean() < 4.5  # raster order: rows 0 to 4, mean 1.5


def test_baselines():
    x = torch.arange(32.0).reshape(2, 1, 4, 4)
    assert torch.equal(baseline_input(x, "zeros", 1.0), torch.zeros_like(x))
    assert torch.allclose(baseline_input(x, "mean", 1.0)[0], torch.full((1, 4, 4), 7.5))
    blurred = baseline_input(x, "blur", 1.0)
    assert blurred.shape == x.shape and blurred.std() < x.std()
    assert torch.allclose(blurred.mean(dim=(1, 2, 3)), x.mean(dim=(1, 2, 3)), atol=1e-4)


# ---------------------------------------------------------------- randomization

def trained_tiny_cnn() -> tuple[TinyCNN, Tensor, Tensor]:
    """A TinyCNN trained (seeded, ~1 s) to tell a bright square on the left from one on the right."""
    torch.manual_seed(0)
    gen = torch.Generator().manual_seed(0)
    x = 0.3 * torch.randn(32, 1, 32, 32, generator=gen)
    y = torch.arange(32) % 2
    for i in range(32):
        col = 4 if y[i] == 0 else 20
        row = int(torch.randint(4, 20, (1,), generator=gen))
        x[i, 0, row:row + 8, col:col + 8] += 2.0
    model = TinyCNN(num_classes=2)
    opt = torch.optim.Adam(model.parameters(), lr=0.02)
    for _ in range(25):
        opt.zero_grad()
        nn.functional.cross_entropy(model(x), y).backward()
        opt.step()
    model.eval()
    with torch.no_grad():
        assert (model(x).argmax(1) == y).float().mean() > 0.9
    return model, x[:6], y[:6]


def test_randomization_correlation_drops_for_a_trained_cnn_and_not_for_a_model_free_map():
    model, x, y = trained_tiny_cnn()
    assert cascade_layers(model) == ["head", "conv2", "conv1"]  # pool has no parameters
    metric = make_metric("model_randomization")
    for name in ("saliency", "grad_cam"):
        method = make_method(name, model)
        maps = method.attribute(x, y).numpy()
        out = metric.compute(maps, x, y.numpy(), model=model, method=method)
        rho = np.nanmean(out["model_randomization_spearman"], axis=0)
        assert rho[-1] < 0.5, (name, rho)  # fully randomized: the map no longer resembles the trained one
        assert np.nanmean(out["model_randomization"]) < 0.5
    ignoring = InputMethod(model)
    maps = ignoring.attribute(x, y).numpy()
    out = metric.compute(maps, x, y.numpy(), model=model, method=ignoring)
    np.testing.assert_allclose(out["model_randomization_spearman"], 1.0, atol=1e-6)
    np.testing.assert_allclose(out["model_randomization_ssim"], 1.0, atol=1e-6)
    with torch.no_grad():  # the trained model itself is untouched
        assert (model(x).argmax(1) == y).all()


def test_spearman_hand_computed():
    a = np.arange(16, dtype=np.float64).reshape(1, 4, 4)
    np.testing.assert_allclose(spearman(a, a ** 3), [1.0])
    np.testing.assert_allclose(spearman(a, -a), [-1.0])
    assert np.isnan(spearman(a, np.ones_like(a))).all()


# ---------------------------------------------------------------- cross-checks against Quantus

@pytest.fixture(scope="module")
def quantus():
    return pytest.importorskip("quantus")


def quantus_inputs(seed: int = 0, nonnegative: bool = False):
    rng = np.random.default_rng(seed)
    maps = rng.normal(size=(6, 1, 16, 16)).astype(np.float32)
    if nonnegative:
        maps = np.abs(maps)
    masks = np.zeros((6, 1, 16, 16), np.float32)
    for i in range(6):
        y0, x0 = rng.integers(0, 10, 2)
        masks[i, 0, y0:y0 + 5, x0:x0 + 6] = 1
    x = rng.normal(size=(6, 1, 16, 16)).astype(np.float32)
    return x, np.zeros(6, np.int64), maps, masks


def test_complexity_matches_quantus(quantus):
    x, y, maps, _ = quantus_inputs()
    kw = {"disable_warnings": True, "normalise": False}
    q_sparse = quantus.Sparseness(**kw)(model=None, x_batch=x, y_batch=y, a_batch=maps.copy())
    q_entropy = quantus.Complexity(**kw)(model=None, x_batch=x, y_batch=y, a_batch=np.abs(maps))
    np.testing.assert_allclose(make_metric("sparseness").compute(maps[:, 0])["sparseness"], q_sparse, rtol=1e-4)
    np.testing.assert_allclose(make_metric("entropy").compute(maps[:, 0])["entropy"], q_entropy, rtol=1e-4)


def test_localization_matches_quantus(quantus):
    x, y, maps, masks = quantus_inputs(1, nonnegative=True)  # Arras' mass counts positive relevance only
    kw = {"disable_warnings": True}
    for name, cls in (("pointing_game", quantus.PointingGame),
                      ("relevance_mass_accuracy", quantus.RelevanceMassAccuracy),
                      ("relevance_rank_accuracy", quantus.RelevanceRankAccuracy)):
        expected = cls(**kw)(model=None, x_batch=x, y_batch=y, a_batch=maps.copy(), s_batch=masks.copy())
        ours = make_metric(name).compute(maps[:, 0], masks=masks[:, 0].astype(bool))[name]
        np.testing.assert_allclose(ours, expected, rtol=1e-5, err_msg=name)


def test_deletion_curve_matches_quantus_pixel_flipping(quantus):
    """Quantus' PixelFlipping (constant baseline, equal steps) gives our deletion curve after the first point."""
    torch.manual_seed(0)
    model = TinyCNN(num_classes=2).eval()
    x, y, maps, _ = quantus_inputs(2)
    n_steps = 8
    flipping = quantus.PixelFlipping(features_in_step=16 * 16 // n_steps, perturb_baseline=0.0, disable_warnings=True)
    expected = np.array(flipping(model=model, x_batch=x, y_batch=y, a_batch=maps.copy(), softmax=True, device="cpu"))
    ours = make_metric("deletion", n_steps=n_steps, random_reference=False).compute(
        maps[:, 0], torch.from_numpy(x), y, model=model)["deletion_curve"]
    np.testing.assert_allclose(ours[:, 1:], expected, rtol=1e-4, atol=1e-6)
