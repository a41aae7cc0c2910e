"""ROAD and region perturbation: the imputation by hand, curves of a one-pixel model by hand, and on a
model that learned the synthetic structures a good map beats random orders while the report flags
what does not.

The contract (outputs, determinism, batch independence) is covered for both metrics by the
registry loop in ``test_metrics.py``.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
import xarray as xr
from torch import Tensor, nn

from xaiflow.attribution.engine import run_attribution
from xaiflow.config import AttributionConfig
from xaiflow.faithfulness_report import (
    Interval,
    bootstrap_mean,
    faithfulness_section,
    faithfulness_summary,
    ranks_and_flags,
)
from xaiflow.metrics import make_metric
from xaiflow.metrics.road import ImputationError, imputation_system, noisy_linear_impute
from xaiflow.metrics.runner import run_metrics
from xaiflow.models.base import MicrographModel

torch.set_num_threads(1)

WEIGHTS = {(dy, dx): (1 / 12 if dy and dx else 1 / 6) for dy in (-1, 0, 1) for dx in (-1, 0, 1) if dy or dx}


def dense_imputation(image: np.ndarray, removed: np.ndarray) -> np.ndarray:
    """The neighbour-average system written out pixel by pixel and solved densely: the reference."""
    h, w = removed.shape
    unknown = [tuple(p) for p in np.argwhere(removed)]
    pos = {p: i for i, p in enumerate(unknown)}
    a = np.zeros((len(unknown), len(unknown)))
    b = np.zeros((len(unknown), image.shape[0]))
    for i, (y, x) in enumerate(unknown):
        for (dy, dx), wt in WEIGHTS.items():
            ny, nx = y + dy, x + dx
            if 0 <= ny < h and 0 <= nx < w:
                a[i, i] += wt
                if (ny, nx) in pos:
                    a[i, pos[ny, nx]] -= wt
                else:
                    b[i] += wt * image[:, ny, nx]
    out = image.astype(np.float64).copy()
    solved = np.linalg.solve(a, b)
    for i, (y, x) in enumerate(unknown):
        out[:, y, x] = solved[i]
    return out


@pytest.mark.parametrize("channels", [1, 3])
def test_imputation_solves_the_neighbour_average_system(channels):
    rng = np.random.default_rng(0)
    image = rng.normal(size=(channels, 5, 6))
    removed = np.zeros((5, 6), bool)
    removed[[0, 2, 2, 3, 4], [0, 2, 3, 3, 5]] = True  # a corner, a cluster of three, the opposite corner
    got = noisy_linear_impute(image, removed, noise=0.0, rng=rng)
    np.testing.assert_allclose(got, dense_imputation(image, removed), rtol=1e-5, atol=1e-5)
    np.testing.assert_array_equal(got[:, ~removed], image[:, ~removed].astype(np.float32))  # kept pixels kept
    # every removed pixel is the weighted mean of its in-image neighbours (imputed ones included)
    for y, x in np.argwhere(removed):
        num = den = 0.0
        for (dy, dx), wt in WEIGHTS.items():
            if 0 <= y + dy < 5 and 0 <= x + dx < 6:
                num, den = num + wt * got[:, y + dy, x + dx], den + wt
        np.testing.assert_allclose(got[:, y, x], num / den, rtol=1e-5, atol=1e-5)


def test_imputation_by_hand_and_its_noise():
    image = np.arange(9, dtype=np.float64).reshape(1, 3, 3)  # 0 1 2 / 3 4 5 / 6 7 8
    centre = np.zeros((3, 3), bool); centre[1, 1] = True
    # direct neighbours 1, 3, 5, 7 (weight 1/6), diagonal 0, 2, 6, 8 (1/12): (16/6 + 16/12) / 1 = 4
    assert noisy_linear_impute(image, centre, 0.0, np.random.default_rng(0))[0, 1, 1] == pytest.approx(4.0)
    corner = np.zeros((3, 3), bool); corner[0, 0] = True
    # in-image neighbours of (0, 0): 1 and 3 (1/6), 4 (1/12): (4/6 + 4/12) / (5/12) = 2.4
    assert noisy_linear_impute(image, corner, 0.0, np.random.default_rng(0))[0, 0, 0] == pytest.approx(2.4)
    a, _, idx = imputation_system(corner)
    assert a.shape == (1, 1) and a[0, 0] == pytest.approx(5 / 12) and idx.tolist() == [0]
    # noise: N(0, noise^2) on the removed pixels only, drawn from the given stream
    big = np.random.default_rng(1).normal(size=(1, 40, 40))
    removed = np.random.default_rng(2).random((40, 40)) < 0.5
    clean = noisy_linear_impute(big, removed, 0.0, np.random.default_rng(0))
    noisy = noisy_linear_impute(big, removed, 0.05, np.random.default_rng(3))
    diff = (noisy - clean)[0]
    assert np.abs(diff[~removed]).max() == 0 and abs(diff[removed].std() - 0.05) < 0.005
    np.testing.assert_array_equal(noisy, noisy_linear_impute(big, removed, 0.05, np.random.default_rng(3)))
    with pytest.raises(ImputationError, match="every pixel removed"):
        imputation_system(np.ones((3, 3), bool))


class PixelModel(MicrographModel):
    """Logits ``(scale * x[0, y, x], 0)`` of one pixel: the probability of class 0 is known in closed form."""

    arch = "pixel_toy"
    cam_layer = "head"
    _named = ("head",)

    def __init__(self, y: int, x: int, scale: float = 1.0, channels: int = 1) -> None:
        super().__init__(2, channels)
        self.y, self.x, self.scale = y, x, scale
        self.head = nn.Identity()

    def forward(self, x: Tensor) -> Tensor:
        score = self.scale * x[:, 0, self.y, self.x]
        return torch.stack([score, torch.zeros_like(score)], dim=1)


@pytest.mark.parametrize("channels", [1, 3])
def test_road_curves_of_a_one_pixel_model_by_hand(channels):
    """4x4 image, the model reads pixel (1, 2) of channel 0. The map ranks that pixel first, then raster
    order; fractions 0.25 and 0.5 remove 4 and 8 pixels."""
    rng = np.random.default_rng(0)
    image = rng.normal(size=(channels, 4, 4))
    maps = np.arange(16, dtype=np.float32)[::-1].reshape(1, 4, 4).copy()  # raster order, highest first
    maps[0, 1, 2] = 100.0  # the model's pixel first
    model = PixelModel(1, 2, scale=2.0, channels=channels).eval()
    sigmoid = lambda v: 1 / (1 + np.exp(-v))
    order = np.argsort(-maps[0].ravel(), kind="stable")

    def prob(removed_flat: np.ndarray) -> float:
        removed = np.zeros(16, bool); removed[removed_flat] = True
        return float(sigmoid(2.0 * dense_imputation(image, removed.reshape(4, 4))[0, 1, 2]))

    p0 = float(sigmoid(2.0 * image[0, 1, 2]))
    morf = [p0, prob(order[:4]), prob(order[:8])]
    lerf = [p0, prob(order[-4:]), prob(order[-8:])]  # the read pixel is never removed: stays p0
    assert lerf == pytest.approx([p0] * 3)
    out = make_metric("road", fractions=(0.25, 0.5), noise=0.0, random_reference=False).compute(
        maps, torch.from_numpy(image[None].astype(np.float32)), np.array([0]), model=model)
    np.testing.assert_allclose(out["road_morf_curve"][0], morf, rtol=1e-5)
    np.testing.assert_allclose(out["road_lerf_curve"][0], lerf, rtol=1e-5)
    area = lambda c: np.trapezoid(c, [0, 0.25, 0.5]) / 0.5
    np.testing.assert_allclose(out["road_morf"], [area(morf)], rtol=1e-5)
    np.testing.assert_allclose(out["road"], [area(lerf) - area(morf)], rtol=1e-5)


def test_region_perturbation_aopc_and_fills():
    rng = np.random.default_rng(0)
    x = torch.from_numpy(rng.normal(size=(2, 1, 24, 24)).astype(np.float32))
    maps = rng.normal(size=(2, 24, 24)).astype(np.float32)
    model = PixelModel(5, 7).eval()
    for fill in ("road", "blur"):
        out = make_metric("region_perturbation", fill=fill, n_segments=16, n_steps=3).compute(
            maps, x, np.array([0, 1]), index=np.array([3, 4]), model=model)
        curve = out["region_perturbation_curve"]
        np.testing.assert_allclose(out["region_perturbation"], (curve[:, :1] - curve).mean(axis=1), rtol=1e-6)
        assert out["region_perturbation_random_curve"].shape == (2, 4)
        np.testing.assert_allclose(curve[:, 0], out["region_perturbation_random_curve"][:, 0])  # untouched image


def test_fractions_are_validated():
    with pytest.raises(ValueError, match=r"fractions must increase strictly within \(0, 1\)"):
        make_metric("road", fractions=(0.5, 0.3))
    with pytest.raises(ValueError, match="fractions"):
        make_metric("road", fractions=(0.2, 1.0))


# ---------------------------------------------------------------- intervals, flags, ranks

def test_bootstrap_interval_and_ranks():
    rng = np.random.default_rng(0)
    v = rng.normal(1.0, 0.5, size=(400, 2))
    mean, lo, hi = bootstrap_mean(v)
    np.testing.assert_allclose(mean, v.mean(axis=0))
    se = v.std(axis=0, ddof=1) / np.sqrt(400)
    np.testing.assert_allclose(hi - lo, 2 * 1.96 * se, rtol=0.15)  # normal theory
    assert np.isnan(bootstrap_mean(np.empty((0, 3)))[0]).all()


def test_intervals_and_ranks_use_the_samples_finished_for_every_method(tmp_path):
    """Method b's run stopped after 10 of 20 samples; a's values on the other 10 are much higher and
    must not lift its interval (nor the random row or the curves) above b's."""
    n = 20
    value = np.zeros((n, 2, 2), np.float32)  # (sample, method a/b, metric road/road_random)
    value[:, :, 0] = np.linspace(0.1, 0.2, n)[:, None]
    value[10:, 0, 0] = 5.0  # a, only where b has nothing
    value[:, :, 1] = np.linspace(-0.01, 0.01, n)[:, None]
    value[10:, 0, 1] = 3.0
    done = np.ones(value.shape, bool)
    done[10:, 1] = False
    curve = np.repeat(value[:, :, :1], 3, axis=2); curve[~done[:, :, 0]] = np.nan
    random_curve = np.repeat(value[:, :, 1:], 3, axis=2); random_curve[~done[:, :, 1]] = np.nan
    outputs = {"road": {"key": "road", "higher_is_better": True, "dim": None},
               "road_random": {"key": "road", "higher_is_better": None, "dim": None},
               "road_curve": {"key": "road", "higher_is_better": None, "dim": "road_fraction"},
               "road_random_curve": {"key": "road", "higher_is_better": None, "dim": "road_fraction"}}
    ds = xr.Dataset({"value": (("sample", "xai_method", "metric"), value),
                     "done": (("sample", "xai_method", "metric"), done),
                     "road_curve": (("sample", "xai_method", "road_fraction"), curve),
                     "road_random_curve": (("sample", "xai_method", "road_fraction"), random_curve)},
                    coords={"sample": np.array([f"s{i}" for i in range(n)], object),
                            "xai_method": np.array(["a", "b"], object),
                            "metric": np.array(["road", "road_random"], object), "road_fraction": [0.0, 0.2, 0.5]},
                    attrs={"outputs": outputs})
    ds.to_zarr(tmp_path / "ws.zarr", group="metrics/syn/m", consolidated=False, zarr_format=3)
    rows = {r.method: r for r in faithfulness_summary(tmp_path / "ws.zarr", "syn", "m")}
    assert rows["a"].value.n == rows["b"].value.n == 10
    assert rows["a"].value == rows["b"].value and rows["a"].rank == rows["b"].rank == 1
    np.testing.assert_allclose(rows["a"].value.mean, value[:10, 0, 0].mean(), rtol=1e-6)
    html, _ = faithfulness_section(tmp_path / "ws.zarr", "syn", "m", tmp_path)
    random = bootstrap_mean(value[:10, :, 1].mean(axis=1).astype(np.float64))
    assert f"<i>{random[0]:.3f} [{random[1]:.3f}, {random[2]:.3f}]</i>" in html  # the random row: same 10 samples


# ---------------------------------------------------------------- on a model that learned the structures

METHODS = ["grad_cam", "integrated_gradients"]  # as test_human: the shared workspace computes them once


@pytest.fixture(scope="module")
def scored(learned, client):
    ws, model = learned
    run_attribution(ws, AttributionConfig(dataset="syn", model=model, device="cpu", splits=["test"],
                                          methods=METHODS), client=client)
    run_metrics(ws, "syn", model, ["road", {"name": "region_perturbation", "params": {"n_segments": 16}}],
                device="cpu", client=client)
    return ws, model


def test_good_maps_beat_random_orders_and_the_report_says_so(scored, tmp_path):
    """Measured (seed 0, 36 test images, tied pixels in random order): ROAD gap integrated gradients 0.25
    [0.20, 0.31], Grad-CAM 0.07 [0.04, 0.11], random orders 0.000 [-0.003, 0.003]."""
    ws, model = scored
    rows = {(r.metric, r.method): r for r in faithfulness_summary(ws, "syn", model)}
    assert {m for m, _ in rows} == {"road", "road_morf", "road_lerf", "region_perturbation"}
    for method in METHODS:
        gap = rows["road", method]
        assert gap.higher_is_better and gap.value.n >= 30
        assert gap.value.lo > gap.random.hi and gap.beats_random, gap  # the interval lies above the random map's
        assert gap.difference.lo > 0
        assert abs(gap.random.mean) < 0.02  # a random order's LeRF and MoRF are the same procedure
    html, covered = faithfulness_section(ws, "syn", model, tmp_path)
    assert "road ↑" in html and "random order" in html and "data:image/png;base64" in html
    assert (tmp_path / "faithfulness_curves.png").stat().st_size > 0
    assert {"road", "road_random", "road_random_morf", "region_perturbation_random"} <= covered


def test_flags_and_shared_ranks():
    """Overlapping intervals share a rank; a method whose difference from random may be 0 is flagged."""
    intervals = {"a": (Interval(0.35, 0.3, 0.4, 10), Interval(0.2, 0.1, 0.3, 10)),
                 "b": (Interval(0.42, 0.35, 0.5, 10), Interval(0.1, -0.01, 0.2, 10)),
                 "c": (Interval(0.05, 0.0, 0.1, 10), Interval(-0.2, -0.3, -0.1, 10))}
    assert ranks_and_flags(intervals, higher=True) == {"a": (1, True), "b": (1, False), "c": (3, False)}
    # lower is better: the same intervals rank the other way round, and c's negative difference is a gain
    assert ranks_and_flags(intervals, higher=False) == {"a": (2, False), "b": (2, False), "c": (1, True)}
