"""Aggregate queries on real stored saliency: lazy results, values checked against numpy."""

import numpy as np
import pytest
from scipy.stats import spearmanr

from conftest import ingest_synthetic, train_tiny
from xaiflow import store
from xaiflow.aggregate import QueryError, group_maps, mask_mass, method_agreement, normalized
from xaiflow.attribution.engine import run_attribution
from xaiflow.config import AttributionConfig
from xaiflow.saliency import METHOD, open_saliency


@pytest.fixture(scope="module")
def explained(tmp_path_factory, client):
    ws = tmp_path_factory.mktemp("agg") / "ws.zarr"
    ingest_synthetic(ws, client, shortcut={"probability": 1.0})
    model_id = train_tiny(ws, epochs=2)
    run_attribution(ws, AttributionConfig(dataset="syn", model=model_id, device="cpu",
                                          methods=["saliency", "grad_cam", "input_x_gradient"]), client=client)
    return ws, open_saliency(ws, "syn", model_id)


def test_group_maps_lazy_and_equal_to_numpy(explained):
    ws, ds = explained
    out = group_maps(ds, by="label")
    assert out.chunks is not None  # lazy until computed
    values = out.compute()
    assert values.dims == ("label", METHOD, "y", "x") and set(values.label.values) == {"particles", "lamellae", "network"}
    raw = np.abs(ds.saliency.values)
    norm = raw / raw.sum(axis=(2, 3), keepdims=True)
    sel = ds.label.values == "network"
    np.testing.assert_allclose(values.sel(label="network").values, norm[sel].mean(0), rtol=1e-5)
    assert int(values.n_samples.sel(label="network")) == sel.sum()
    np.testing.assert_allclose(values.sum(("y", "x")).values, 1, rtol=1e-5)  # mass-normalized
    med = group_maps(ds, by="predicted", stat="median").compute()
    assert set(med.predicted.values) <= {"particles", "lamellae", "network"}


def test_binned_metadata_and_errors(explained):
    _, ds = explained
    binned = group_maps(ds, by="um_per_px", bins=[0, 1, 10]).compute()
    assert binned.dims[0] == "um_per_px_bin" and int(binned.n_samples.sum()) == ds.sizes["sample"]
    with pytest.raises(QueryError, match="no coordinate 'magnification'"):
        group_maps(ds, by="magnification")
    values = ds.label_index.values.astype(float)  # 0, 1, 2: the last class lies outside [-0.5, 1.5]
    edge = 1.5
    part = group_maps(ds, by="label_index", bins=[-0.5, edge]).compute()
    outside = int((values > edge).sum())
    assert outside > 0 and part.attrs["samples_outside_bins"] == outside
    assert int(part.n_samples.sum()) + outside == ds.sizes["sample"]
    assert part.attrs["outside_range"] == [float(values[values > edge].min()), float(values.max())]
    with pytest.raises(QueryError, match="no non-empty group"):
        group_maps(ds, by="um_per_px", bins=[100, 200])
    with pytest.raises(QueryError, match="unknown normalization"):
        normalized(ds.saliency, "max")


def test_mask_mass_against_area(explained):
    ws, ds = explained
    masks = store.open_group(ws, "masks/syn")
    res = mask_mass(ds, masks).compute()
    np.testing.assert_allclose(res.mass.sum("mask_class").values, 1, rtol=1e-5)
    np.testing.assert_allclose(res.area.sum("mask_class").values, 1, rtol=1e-6)
    m = masks.mask.values[0]
    raw = np.abs(ds.saliency.isel(sample=0, **{METHOD: 0}).values)
    np.testing.assert_allclose(float(res.mass.isel(sample=0, **{METHOD: 0}).sel(mask_class="shortcut")),
                               raw[m == 2].sum() / raw.sum(), rtol=1e-5)


def test_method_agreement_matches_scipy(explained):
    _, ds = explained
    agree = method_agreement(ds, top_fraction=0.2)
    assert agree.spearman.chunks is not None
    agree = agree.compute()
    np.testing.assert_allclose(np.diag(agree.spearman.values), 1, rtol=1e-5)
    np.testing.assert_allclose(np.diag(agree.top_overlap.values), 1)
    a = np.abs(ds.saliency.values[:, 0].reshape(ds.sizes["sample"], -1))
    b = np.abs(ds.saliency.values[:, 1].reshape(ds.sizes["sample"], -1))
    expected = np.mean([spearmanr(x, y).statistic for x, y in zip(a, b)])
    assert agree.spearman.values[0, 1] == pytest.approx(expected, rel=1e-4)


def test_group_sums_one_pass_both_paths_skip_bad_maps(explained):
    """The block reduction behind group means: the matrix-product path (few groups) and the sorted-runs
    path (many groups) agree with numpy, and a zero or non-finite map is left out of its group's count."""
    from xaiflow.aggregate import _MATMUL_GROUPS, _group_sums

    _, ds = explained
    maps = ds.saliency.values.copy()
    maps[0, 0] = 0.0
    maps[1, 1, 0, 0] = np.nan
    codes = np.arange(len(maps)) % 3
    codes[2] = -1  # left out
    a = np.abs(maps.reshape(len(maps), maps.shape[1], -1))
    for n_groups in (3, _MATMUL_GROUPS + 5):
        out = _group_sums(maps, codes, n_groups)[0]
        for g in range(3):
            for m in range(maps.shape[1]):
                rows = [i for i in np.flatnonzero(codes == g) if np.isfinite(a[i, m]).all() and a[i, m].sum() > 0]
                assert out[g, m, -1] == len(rows)
                np.testing.assert_allclose(out[g, m, :-1], sum(a[i, m] / a[i, m].sum() for i in rows), rtol=1e-4,
                                           atol=1e-7)
        assert not out[3:].any()


def test_group_means_respect_split(explained):
    _, ds = explained
    test = group_maps(ds, by="label", split="test").compute()
    sel = ds.split.values == "test"
    assert int(test.n_samples.sum()) == sel.sum()
    raw = np.abs(ds.saliency.values[sel])
    norm = raw / raw.sum(axis=(2, 3), keepdims=True)
    g = str(test.label.values[0])
    np.testing.assert_allclose(test.sel(label=g).values, norm[ds.label.values[sel] == g].mean(0), rtol=1e-5)


def test_queries_read_a_workspace_on_object_storage(explained):
    """A finished workspace copied to an fsspec file system (the in-memory one stands in for s3:// or
    gs://) answers the same queries through its URL, and takes writes through it."""
    import uuid

    import fsspec

    ws, ds = explained
    model = ds.attrs["model_id"]
    top = f"xaiflow-{uuid.uuid4().hex}"
    url = f"memory://{top}/ws.zarr"
    fs, root = fsspec.core.url_to_fs(url)
    fs.put(str(ws), root, recursive=True)
    try:
        assert store.is_workspace(url) and "saliency/syn/" + model in store.list_groups(url)
        remote = open_saliency(url, "syn", model)
        # threads of this process: the in-memory file system is per process, unlike s3:// seen by every worker
        np.testing.assert_allclose(group_maps(remote, by="label").compute(scheduler="threads").values,
                                   group_maps(ds, by="label").compute().values, rtol=1e-6)
        store.set_attrs(url, f"saliency/syn/{model}", note="written through the URL")
        assert store.group_attrs(url, f"saliency/syn/{model}")["note"] == "written through the URL"
        store.delete_group(url, f"saliency/syn/{model}")
        assert not store.group_exists(url, f"saliency/syn/{model}") and store.group_exists(url, "images/syn")
    finally:
        fs.rm(f"/{top}", recursive=True)


def test_a_grouping_with_too_many_groups_is_refused_before_any_read(explained, monkeypatch):
    """Every block holds the sums of every group: a near-unique grouping (sample ids) would multiply
    the result's size by the blocks in flight, so it is refused, naming the count and the limit."""
    from xaiflow import aggregate

    _, ds = explained
    n, (m, h, w) = ds.sizes["sample"], ds.saliency.shape[1:]
    monkeypatch.setattr(aggregate, "MAX_RESULT_BYTES", (n - 1) * m * h * w * 8)
    with pytest.raises(QueryError, match=f"grouping by 'sample' gives {n:,} groups: .* MiB, more than"):
        group_maps(ds, by="sample")
    assert group_maps(ds, by="label").sizes["label"] <= 4  # a coarse grouping is still answered
