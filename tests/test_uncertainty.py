"""Uncertainty (MC dropout, ensembles, calibration) on real stores, real Dask workers and real torch models."""

from __future__ import annotations

import numpy as np
import pytest
import xarray as xr
import zarr

from conftest import ingest_synthetic, train_tiny
from xaiflow import store
from xaiflow import uncertainty as unc


@pytest.fixture(scope="module")
def workspace(tmp_path_factory, client):
    """27 synthetic images in 4 chunks, two tiny models (dropout 0.3) that differ only in their seed."""
    ws = tmp_path_factory.mktemp("unc") / "ws.zarr"
    ingest_synthetic(ws, client, size=32, chunk_size=8, images_per_specimen=3)
    params = {"widths": [8, 16], "dropout": 0.3}
    models = [train_tiny(ws, seed=s, model_params=params) for s in (0, 1)]
    return ws, models


def test_mc_dropout_draws_are_stored_resumable_and_seeded_per_chunk(workspace, client):
    ws, (model, _) = workspace
    group = unc.estimate_uncertainty(ws, [model], "syn", passes=6, client=client)
    assert group == f"uncertainty/syn/{model}"
    plain = xr.open_zarr(ws, group=group, consolidated=False)  # readable without xaiflow
    assert dict(plain["probabilities"].sizes) == {"sample": 27, "draw": 6, "class": 3}
    assert plain.attrs["provenance"]["kind"] == "mc_dropout"
    ds = plain.load()
    probs = ds["probabilities"].values.astype(float)
    np.testing.assert_allclose(probs.sum(-1), 1.0, atol=1e-5)
    assert np.ptp(probs, axis=1).max() > 1e-4, "dropout passes should differ"
    # entropy = expected entropy + mutual information, recomputed from the stored draws
    mean = probs.mean(1)
    total = -(mean * np.log(mean)).sum(-1)
    expected = -(probs * np.log(probs)).sum(-1).mean(1)
    np.testing.assert_allclose(ds["entropy"], total, rtol=1e-4)
    np.testing.assert_allclose(ds["mutual_information"], total - expected, atol=1e-5)
    assert (ds["mutual_information"] > 0).all()
    np.testing.assert_array_equal(ds["correct"], mean.argmax(1) == ds["label_index"].values)

    # nothing left to do on a re-run; a different setting is refused with what differs
    job = unc.prepare(ws, [model], "syn", passes=6)
    assert job.chunks == () and job.n_chunks == 4
    with pytest.raises(unc.UncertaintyError, match=r"passes 6 \(asked: 8\)"):
        unc.prepare(ws, [model], "syn", passes=8)

    # a chunk's draws depend on its seed only: recomputed one chunk after the other in this process
    # (in reverse order, in this process instead of the workers), they are the same numbers
    unc.estimate_uncertainty(ws, [model], "syn", passes=6, overwrite=True,
                             runner=lambda job: job.finalize([job.run_chunk(c) for c in reversed(job.chunks)]))
    again = zarr.open_array(str(ws), path=f"{group}/probabilities", mode="r")[:]
    np.testing.assert_array_equal(again, ds["probabilities"].values)


def test_ensemble_calibration_and_per_class_summary(workspace, client):
    ws, models = workspace
    group = unc.estimate_uncertainty(ws, models, "syn", passes=1, client=client)
    assert group.startswith("uncertainty/syn/ensemble-")
    ds = unc.open_uncertainty(ws, group)
    assert list(ds["member"].values) == sorted(models)
    assert unc.prepare(ws, models[::-1], "syn", passes=1).chunks == ()  # the same ensemble in another order
    rows = {r["class"]: r for r in unc.per_class(ds)}
    assert rows["all"]["samples"] == 27 and set(rows) == {"particles", "lamellae", "network", "all"}
    cal = unc.calibration(ds, n_bins=5)
    assert sum(b["count"] for b in cal["bins"]) == 27
    manual = sum(b["count"] / 27 * abs(b["accuracy"] - b["confidence"]) for b in cal["bins"] if b["count"])
    assert cal["ece"] == pytest.approx(manual)
    test = unc.open_uncertainty(ws, group, "test")
    assert 0 < test.sizes["sample"] < 27
    with pytest.raises(unc.UncertaintyError, match="no sample in split 'holdout'"):
        unc.open_uncertainty(ws, group, "holdout")


def test_calibration_error_of_known_cases():
    def ds(conf, correct):
        return xr.Dataset({"confidence": ("sample", np.asarray(conf, float)), "correct": ("sample", np.asarray(correct))})

    # confident and right 9 times in 10 at confidence 0.9: calibrated
    assert unc.calibration(ds([0.9] * 10, [True] * 9 + [False]))["ece"] == pytest.approx(0.0)
    # confidence 0.9 but right half the time: overconfident by 0.4
    assert unc.calibration(ds([0.9] * 10, [True, False] * 5))["ece"] == pytest.approx(0.4)
    with pytest.raises(unc.UncertaintyError, match="n_bins=1"):
        unc.calibration(ds([0.5], [True]), n_bins=1)


def test_refuses_what_cannot_work(workspace, tmp_path):
    ws, (model, other) = workspace
    with pytest.raises(unc.UncertaintyError, match="passes >= 2"):
        unc.prepare(ws, [model], "syn", passes=1)
    with pytest.raises(unc.UncertaintyError, match="named twice"):
        unc.prepare(ws, [model, model], "syn", passes=1)
    with pytest.raises(unc.UncertaintyError, match="1 to 1000 draws"):
        unc.prepare(ws, [model, other], "syn", passes=600)
    deterministic = train_tiny(ws, model_params={"widths": [8, 16], "dropout": 0.0})
    with pytest.raises(unc.UncertaintyError, match="no dropout layer"):
        unc.prepare(ws, [deterministic], "syn", passes=4)
    assert not store.group_exists(ws, f"uncertainty/syn/{deterministic}")


def test_entropy_of_known_distributions():
    p = np.array([[[0.5, 0.5], [1.0, 0.0]]])  # two draws that disagree
    s = unc.summarize_draws(p)
    np.testing.assert_allclose(s["mean_probability"], [[0.75, 0.25]])
    np.testing.assert_allclose(s["expected_entropy"], [np.log(2) / 2], rtol=1e-6)
    np.testing.assert_allclose(s["entropy"], [-(0.75 * np.log(0.75) + 0.25 * np.log(0.25))], rtol=1e-6)
    same = unc.summarize_draws(np.array([[[0.2, 0.8], [0.2, 0.8]]]))
    assert same["mutual_information"][0] == pytest.approx(0.0, abs=1e-7)


def test_uncertainty_against_attribution_disagreement(workspace, client, tmp_path):
    """Per sample: 1 - the mean Spearman correlation of its methods' maps, related to entropy and mutual
    information over the samples with both; with one method stored, the question cannot be asked."""
    from xaiflow.attribution.engine import run_attribution
    from xaiflow.config import AttributionConfig
    from xaiflow.saliency import open_saliency

    ws, (model, _) = workspace
    run_attribution(ws, AttributionConfig(dataset="syn", model=model, device="cpu", methods=["grad_cam", "saliency"]),
                    client=client)
    ds = unc.open_uncertainty(ws, unc.estimate_uncertainty(ws, [model], "syn", passes=6, client=client))
    sal = open_saliency(ws, "syn", model, with_images=False)
    dis = unc.sample_disagreement(sal)
    assert len(dis) == 27 and ((dis >= 0) & (dis <= 2)).all()
    rel = unc.disagreement_relation(ds, sal)
    assert rel["samples"] == 27 and all(-1 <= rel[k]["rho"] <= 1 for k in ("entropy", "mutual_information"))
    assert unc.relation_figure(rel, tmp_path / "rel.png").stat().st_size > 0
    with pytest.raises(unc.UncertaintyError, match="at least two methods"):
        unc.sample_disagreement(open_saliency(ws, "syn", model, ["grad_cam"], with_images=False))


@pytest.mark.timeout(300)
def test_cli_uncertainty(workspace, tmp_path):
    from cli_run import run

    ws, models = workspace
    res = run("uncertainty", "-w", str(ws), "-m", ",".join(m[:17] for m in models), "--cluster", "threads",
              "--split", "all", "--out", str(tmp_path))
    assert res.returncode == 0, res.stderr
    assert "ensemble of 2" in res.stdout and "expected calibration error" in res.stdout
    assert list(tmp_path.glob("*_reliability.png"))
    bad = run("uncertainty", "-w", str(ws), "-m", models[0], "--passes", "1", "--cluster", "threads")
    assert bad.returncode == 2 and "passes >= 2" in bad.stderr and "Traceback" not in bad.stderr
